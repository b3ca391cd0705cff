//! Every Grafana panel of the broker dashboards returns data from a real
//! Prometheus (Debian's `prometheus`) scraping a broker under load.
//! Skips with the reason when the prometheus binary is absent.

use std::path::Path;
use std::time::{Duration, Instant};

use fjord_e2e::prometheus::{Prometheus, Target};
use fjord_e2e::BrokerProcess;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_dashboard_panel_returns_data() {
    if !Prometheus::available() {
        fjord_e2e::skip(
            "every_broker_dashboard_panel_returns_data",
            "the prometheus binary is needed (apt-get install prometheus)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(&tmp.path().join("data"), &[("group.initial.rebalance.delay.ms", "0")]);
    let prom = Prometheus::start(
        tmp.path(),
        &[Target {
            job: "fjord-broker",
            addr: b.metrics,
            labels: &[("namespace", "e2e"), ("fjord_cluster", "e2e")],
        }],
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
            let samples = prom.scalar("min(count_over_time(fjord_consumer_group_lag_sum{job=\"fjord-broker\"}[1m]) and on() count_over_time(fjord_produce_errors_total{job=\"fjord-broker\"}[1m]))");
            if samples.is_some_and(|n| n >= 5.0) {
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
    let (mut checked, mut empty) = (0, Vec::new());
    for name in ["cluster-overview.json", "topics.json", "consumer-groups.json"] {
        let (n, without) = prom.panels_without_data(&dashboards.join(name));
        checked += n;
        empty.extend(without);
    }
    assert!(checked > 40, "checked {checked} panel queries");
    assert!(empty.is_empty(), "panels without data:\n{}", empty.join("\n"));
}
