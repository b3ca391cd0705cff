//! The operator's Prometheus metrics and its /metrics, /healthz, /readyz endpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `controller` label values (see `controllers::Timer`).
pub const CONTROLLERS: [&str; 3] = ["cluster", "topic", "consumergroup"];
/// The `kind` label values of `fjord_operator_managed_objects`.
pub const KINDS: [&str; 3] = ["Cluster", "Topic", "ConsumerGroup"];

pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
    pub managed: IntGaugeVec,
    pub leader: IntGauge,
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new("fjord_operator_reconciliations_total", "Reconciles by controller"),
            &["controller"],
        )
        .expect("metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "fjord_operator_reconcile_errors_total",
                "Failed reconciles by controller",
            ),
            &["controller"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "fjord_operator_reconcile_duration_seconds",
                "Reconcile duration by controller",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["controller"],
        )
        .expect("metric");
        let managed = IntGaugeVec::new(
            Opts::new("fjord_operator_managed_objects", "Resources seen by kind"),
            &["kind"],
        )
        .expect("metric");
        let leader = IntGauge::new("fjord_operator_leader", "1 on the replica holding the lease").expect("metric");
        // Every controller's and kind's series exists from the start, so an error
        // rate is 0 rather than "no data" before the first failure.
        for controller in CONTROLLERS {
            reconciliations.with_label_values(&[controller]);
            errors.with_label_values(&[controller]);
        }
        for kind in KINDS {
            managed.with_label_values(&[kind]);
        }
        for c in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(managed.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Arc::new(Metrics {
            registry,
            reconciliations,
            errors,
            duration,
            managed,
            leader,
            ready: AtomicBool::new(false),
        })
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves metrics and health. `/readyz` is OK once the process runs its
/// watchers or waits as a standby for the lease (standbys are healthy).
pub async fn serve(addr: String, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let m = metrics.clone();
    let r = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { m.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    if r.ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_controller_and_kind_has_series_before_any_reconcile() {
        let text = Metrics::new().render();
        for controller in CONTROLLERS {
            for metric in [
                "fjord_operator_reconciliations_total",
                "fjord_operator_reconcile_errors_total",
            ] {
                let line = format!("{metric}{{controller=\"{controller}\"}} 0");
                assert!(text.contains(&line), "missing {line} in\n{text}");
            }
        }
        for kind in KINDS {
            let line = format!("fjord_operator_managed_objects{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(text.contains("fjord_operator_leader 0"));
    }
}
