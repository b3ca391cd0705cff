//! Every Grafana panel of the broker dashboards returns data from a real
//! Prometheus (Debian's `prometheus`) scraping a broker under load.
//! Skips with the reason when the prometheus binary is absent.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fjord_e2e::{free_port, http_get, BrokerProcess};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

struct Prometheus(Child);
impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(prom: std::net::SocketAddr, expr: &str) -> Option<serde_json::Value> {
    let (code, body) = http_get(prom, &format!("/api/v1/query?query={}", urlencode(expr)))?;
    if code != 200 {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&body).ok()
}

fn has_data(v: &serde_json::Value) -> bool {
    v["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
}

fn panel_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            walk(&p["panels"], out);
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((p["title"].as_str().unwrap_or_default().to_string(), e.to_string()));
                }
            }
        }
    }
    walk(&dashboard["panels"], &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_dashboard_panel_returns_data() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        fjord_e2e::skip(
            "every_broker_dashboard_panel_returns_data",
            "the prometheus binary is needed (apt-get install prometheus)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(&tmp.path().join("data"), &[("group.initial.rebalance.delay.ms", "0")]);

    let prom_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fjord-broker\n    static_configs:\n      - targets: ['{}']\n        labels: {{namespace: e2e, fjord_cluster: e2e}}\n",
        b.metrics
    );
    std::fs::write(tmp.path().join("prometheus.yml"), config).unwrap();
    let _prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", tmp.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Load: produce to two topics and consume one through a group that commits.
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", b.bootstrap())
        .set("broker.address.family", "v4");
    let producer: FutureProducer = c.clone().set("linger.ms", "5").create().unwrap();
    let consumer: BaseConsumer = c
        .clone()
        .set("group.id", "dash-app")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["dash-orders"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = false;
    let mut i = 0u64;
    while Instant::now() < deadline {
        for topic in ["dash-orders", "dash-events"] {
            let v = format!("payload-{i}");
            producer
                .send(
                    FutureRecord::<str, _>::to(topic).key("k").payload(&v),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        if i.is_multiple_of(20) {
            // Rejected appends feed the produce-error panels: clients may not write internal topics.
            let rejected = producer
                .send(
                    FutureRecord::<str, str>::to("__consumer_offsets").key("k").payload("x"),
                    Duration::from_secs(5),
                )
                .await;
            assert!(rejected.is_err());
        }
        i += 1;
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(20)) {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
        }
        // rate() needs a few scrapes of the same series.
        if i.is_multiple_of(25) {
            let up = query(prom_addr, "min(count_over_time(fjord_consumer_group_lag_sum{job=\"fjord-broker\"}[1m]) and on() count_over_time(fjord_produce_errors_total{job=\"fjord-broker\"}[1m]))");
            if up
                .as_ref()
                .and_then(|v| v["data"]["result"][0]["value"][1].as_str().map(String::from))
                .is_some_and(|n| n.parse::<f64>().unwrap_or(0.0) >= 5.0)
            {
                ready = true;
                break;
            }
        }
    }
    assert!(
        ready,
        "Prometheus never scraped enough samples; broker log:\n{}",
        b.log_text()
    );

    let dashboards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/fjord/dashboards");
    let mut checked = 0;
    let mut empty = Vec::new();
    for name in ["cluster-overview.json", "topics.json", "consumer-groups.json"] {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dashboards.join(name)).unwrap()).unwrap();
        for (title, expr) in panel_exprs(&d) {
            let expr = expr
                .replace("$__rate_interval", "30s")
                .replace("$namespace", ".*")
                .replace("$cluster", ".*")
                .replace("$group", ".*")
                .replace("$topic", ".*");
            checked += 1;
            match query(prom_addr, &expr) {
                Some(v) if has_data(&v) => {}
                other => empty.push(format!("{name} / {title}: {expr} -> {other:?}")),
            }
        }
    }
    assert!(checked > 40, "checked {checked} panel queries");
    assert!(empty.is_empty(), "panels without data:\n{}", empty.join("\n"));
}
