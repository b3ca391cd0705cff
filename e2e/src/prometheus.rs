//! A real Prometheus (Debian's `prometheus` binary) scraping test targets,
//! and the check that a Grafana dashboard's panels return data from it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, http_get};

/// One scrape job: its name, target and the labels Kubernetes service
/// discovery would attach (namespace, pod, fjord_cluster).
pub struct Target<'a> {
    pub job: &'a str,
    pub addr: SocketAddr,
    pub labels: &'a [(&'a str, &'a str)],
}

/// A Prometheus process scraping every second, killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Whether the prometheus binary is on PATH.
    pub fn available() -> bool {
        Command::new("prometheus")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Starts Prometheus on a free loopback port with its data under `dir`.
    pub fn start(dir: &Path, targets: &[Target<'_>]) -> Prometheus {
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for t in targets {
            let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            config.push_str(&format!(
                "  - job_name: {}\n    static_configs:\n      - targets: ['{}']\n        labels: {{{}}}\n",
                t.job,
                t.addr,
                labels.join(", ")
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, addr }
    }

    /// An instant query; None when Prometheus is not answering (yet).
    pub fn query(&self, expr: &str) -> Option<serde_json::Value> {
        let (code, body) = http_get(self.addr, &format!("/api/v1/query?query={}", urlencode(expr)))?;
        if code != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The first sample of an instant query as a number.
    pub fn scalar(&self, expr: &str) -> Option<f64> {
        self.query(expr)?["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// Polls until `expr` is at least `min` (bounded by `timeout`).
    pub fn wait_for(&self, expr: &str, min: f64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.scalar(expr).is_some_and(|v| v >= min) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }

    /// Runs every panel query of the dashboard file (Grafana variables
    /// replaced by match-all) and returns (queries run, the ones without data).
    pub fn panels_without_data(&self, dashboard: &Path) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(dashboard).expect("read dashboard");
        let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        let name = dashboard.file_name().unwrap_or_default().to_string_lossy().to_string();
        let mut checked = 0;
        let mut empty = Vec::new();
        for (title, expr) in panel_exprs(&d) {
            let expr = expr
                .replace("$__rate_interval", "30s")
                .replace("$namespace", ".*")
                .replace("$cluster", ".*")
                .replace("$group", ".*")
                .replace("$topic", ".*");
            checked += 1;
            match self.query(&expr) {
                Some(v) if v["data"]["result"].as_array().is_some_and(|r| !r.is_empty()) => {}
                other => empty.push(format!("{name} / {title}: {expr} -> {other:?}")),
            }
        }
        (checked, empty)
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

/// (panel title, expression) of every target, nested rows included.
fn panel_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
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
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}
