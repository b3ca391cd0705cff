//! Prometheus metrics and the HTTP endpoint serving them with health checks.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::controller::Controller;
use crate::group::GroupCoordinator;
use crate::replica::ReplicaManager;

pub struct Metrics {
    pub registry: Registry,
    pub bytes_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub messages_in: IntCounterVec,
    pub produce_errors: IntCounterVec,
    pub requests: IntCounterVec,
    pub request_latency: HistogramVec,
    pub active_connections: IntGauge,
    pub log_size: IntGaugeVec,
    pub log_end_offset: IntGaugeVec,
    pub log_start_offset: IntGaugeVec,
    pub high_watermark: IntGaugeVec,
    pub last_stable_offset: IntGaugeVec,
    pub open_transactions: IntGaugeVec,
    pub segments: IntGaugeVec,
    pub under_replicated: IntGaugeVec,
    pub under_min_isr: IntGaugeVec,
    pub offline: IntGaugeVec,
    pub isr_size: IntGaugeVec,
    /// ISR changes; they stay at zero until replication moves followers in and out.
    pub isr_shrinks: IntCounter,
    pub isr_expands: IntCounter,
    pub partitions: IntGauge,
    pub group_committed: IntGaugeVec,
    pub group_lag: IntGaugeVec,
    pub group_lag_sum: IntGaugeVec,
    pub group_members: IntGaugeVec,
    pub controller: ControllerMetrics,
}

/// The metadata quorum and partition leadership as this broker sees them.
pub struct ControllerMetrics {
    active: IntGauge,
    epoch: IntGauge,
    elections: IntCounter,
    log_end_offset: IntGauge,
    applied_offset: IntGauge,
    fenced_brokers: IntGauge,
    active_brokers: IntGauge,
    leader_count: IntGauge,
    replica_count: IntGauge,
    offline_partitions: IntGauge,
    /// The Raft term last seen, to count elections between scrapes.
    last_epoch: parking_lot::Mutex<Option<u64>>,
}

impl ControllerMetrics {
    fn new(registry: &Registry) -> ControllerMetrics {
        let g = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        ControllerMetrics {
            active: g(
                "fjord_controller_active",
                "1 on the active controller (Kafka's ActiveControllerCount)",
            ),
            epoch: g("fjord_controller_epoch", "The metadata quorum's Raft term"),
            elections: plain_counter(
                registry,
                "fjord_controller_elections_total",
                "Metadata quorum elections (new Raft terms) seen by this broker since it started",
            ),
            log_end_offset: g(
                "fjord_metadata_log_end_offset",
                "Index of the last metadata log entry here",
            ),
            applied_offset: g(
                "fjord_metadata_applied_offset",
                "Index of the last metadata log entry applied to this broker's image",
            ),
            fenced_brokers: g("fjord_controller_fenced_brokers", "Registered brokers that are fenced"),
            active_brokers: g(
                "fjord_controller_active_brokers",
                "Registered brokers that are unfenced",
            ),
            leader_count: g("fjord_broker_leader_count", "Partitions this broker leads"),
            replica_count: g(
                "fjord_broker_partition_count",
                "Partitions this broker holds a replica of",
            ),
            offline_partitions: g(
                "fjord_controller_offline_partitions",
                "Partitions in the cluster without a leader",
            ),
            last_epoch: parking_lot::Mutex::new(None),
        }
    }

    pub fn update(&self, controller: &Controller, node_id: i32) {
        let quorum = controller.quorum_state();
        self.active.set(i64::from(quorum.active));
        self.epoch.set(quorum.term as i64);
        {
            let mut last = self.last_epoch.lock();
            if let Some(prev) = *last {
                self.elections.inc_by(quorum.term.saturating_sub(prev));
            }
            *last = Some(quorum.term);
        }
        self.log_end_offset.set(quorum.log_end as i64);
        self.applied_offset.set(quorum.applied as i64);
        let image = controller.image();
        let fenced = image.brokers.values().filter(|b| b.fenced).count();
        self.fenced_brokers.set(fenced as i64);
        self.active_brokers.set((image.brokers.len() - fenced) as i64);
        self.leader_count.set(image.leader_count(node_id) as i64);
        self.replica_count.set(image.replica_count(node_id) as i64);
        let offline = image
            .topics
            .values()
            .flat_map(|t| &t.states)
            .filter(|s| s.leader().is_none())
            .count();
        self.offline_partitions.set(offline as i64);
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let tp = &["topic", "partition"];
        let request_latency = HistogramVec::new(
            HistogramOpts::new("fjord_request_latency_seconds", "Request handling latency by API").buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["api"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(request_latency.clone()))
            .expect("unique metric");
        let active_connections =
            IntGauge::new("fjord_active_connections", "Open client connections").expect("valid metric");
        registry
            .register(Box::new(active_connections.clone()))
            .expect("unique metric");
        let partitions = IntGauge::new("fjord_partitions", "Partitions hosted by this broker").expect("valid metric");
        registry.register(Box::new(partitions.clone())).expect("unique metric");
        Arc::new(Metrics {
            bytes_in: counter(
                &registry,
                "fjord_bytes_in_total",
                "Record batch bytes appended",
                &["topic"],
            ),
            bytes_out: counter(
                &registry,
                "fjord_bytes_out_total",
                "Record batch bytes served by fetch",
                &["topic"],
            ),
            messages_in: counter(&registry, "fjord_messages_in_total", "Records appended", &["topic"]),
            produce_errors: counter(
                &registry,
                "fjord_produce_errors_total",
                "Rejected partition appends",
                &["topic", "error"],
            ),
            requests: counter(&registry, "fjord_requests_total", "Requests handled by API", &["api"]),
            request_latency,
            active_connections,
            log_size: gauge(&registry, "fjord_log_size_bytes", "Bytes on disk per partition", tp),
            log_end_offset: gauge(&registry, "fjord_log_end_offset", "Log end offset per partition", tp),
            log_start_offset: gauge(
                &registry,
                "fjord_log_start_offset",
                "Log start offset per partition",
                tp,
            ),
            high_watermark: gauge(&registry, "fjord_high_watermark", "High watermark per partition", tp),
            last_stable_offset: gauge(
                &registry,
                "fjord_last_stable_offset",
                "Last stable offset per partition: read_committed consumers read below it",
                tp,
            ),
            open_transactions: gauge(
                &registry,
                "fjord_partition_open_transactions",
                "Producers with a transaction open in the partition",
                tp,
            ),
            segments: gauge(&registry, "fjord_log_segments", "Segments per partition", tp),
            under_replicated: gauge(
                &registry,
                "fjord_partition_under_replicated",
                "1 when the ISR is smaller than the replica set",
                tp,
            ),
            under_min_isr: gauge(
                &registry,
                "fjord_partition_under_min_isr",
                "1 when the ISR is smaller than min.insync.replicas (acks=all produces are refused)",
                tp,
            ),
            offline: gauge(
                &registry,
                "fjord_partition_offline",
                "1 when the partition has no leader",
                tp,
            ),
            isr_size: gauge(
                &registry,
                "fjord_partition_isr_size",
                "In-sync replicas per partition",
                tp,
            ),
            isr_shrinks: plain_counter(&registry, "fjord_isr_shrinks_total", "Replicas removed from an ISR"),
            isr_expands: plain_counter(&registry, "fjord_isr_expands_total", "Replicas added to an ISR"),
            partitions,
            group_committed: gauge(
                &registry,
                "fjord_consumer_group_committed_offset",
                "Committed offset per group and partition",
                &["group", "topic", "partition"],
            ),
            group_lag: gauge(
                &registry,
                "fjord_consumer_group_lag",
                "Log end offset minus committed offset per group and partition",
                &["group", "topic", "partition"],
            ),
            group_lag_sum: gauge(
                &registry,
                "fjord_consumer_group_lag_sum",
                "Total lag of a group",
                &["group"],
            ),
            group_members: gauge(
                &registry,
                "fjord_consumer_group_members",
                "Members per group and state",
                &["group", "state"],
            ),
            controller: ControllerMetrics::new(&registry),
            registry,
        })
    }

    /// Refreshes lag gauges from the committed offsets and log end offsets.
    pub fn update_groups(&self, groups: &GroupCoordinator, replicas: &ReplicaManager) {
        for g in [
            &self.group_committed,
            &self.group_lag,
            &self.group_lag_sum,
            &self.group_members,
        ] {
            g.reset();
        }
        let mut sums: std::collections::HashMap<String, i64> = Default::default();
        for (group, topic, partition, committed) in groups.committed_snapshot() {
            let Ok(part) = replicas.get(&topic, partition) else {
                continue;
            };
            let lag = (part.high_watermark() - committed).max(0);
            let p = partition.to_string();
            let labels = [group.as_str(), topic.as_str(), p.as_str()];
            self.group_committed.with_label_values(&labels).set(committed);
            self.group_lag.with_label_values(&labels).set(lag);
            *sums.entry(group).or_default() += lag;
        }
        for (group, lag) in sums {
            self.group_lag_sum.with_label_values(&[&group]).set(lag);
        }
        for (group, members, state) in groups.member_counts() {
            self.group_members
                .with_label_values(&[&group, state])
                .set(members as i64);
        }
    }

    /// Refreshes per-partition gauges from the logs, then renders the text format.
    pub fn render(&self, replicas: &ReplicaManager) -> String {
        for gauge in [
            &self.log_size,
            &self.log_end_offset,
            &self.log_start_offset,
            &self.high_watermark,
            &self.last_stable_offset,
            &self.open_transactions,
            &self.segments,
            &self.under_replicated,
            &self.under_min_isr,
            &self.offline,
            &self.isr_size,
        ] {
            gauge.reset();
        }
        let all = replicas.all();
        self.partitions.set(all.len() as i64);
        for p in all {
            let part = p.tp.partition.to_string();
            let labels = [p.tp.topic.as_str(), part.as_str()];
            self.log_size.with_label_values(&labels).set(p.size_bytes() as i64);
            self.log_end_offset.with_label_values(&labels).set(p.log_end_offset());
            self.log_start_offset
                .with_label_values(&labels)
                .set(p.log_start_offset());
            self.high_watermark.with_label_values(&labels).set(p.high_watermark());
            self.last_stable_offset
                .with_label_values(&labels)
                .set(p.last_stable_offset());
            self.open_transactions
                .with_label_values(&labels)
                .set(p.open_transactions() as i64);
            self.segments.with_label_values(&labels).set(p.segment_count() as i64);
            self.under_replicated
                .with_label_values(&labels)
                .set(i64::from(p.is_under_replicated()));
            self.under_min_isr
                .with_label_values(&labels)
                .set(i64::from(p.is_under_min_isr()));
            self.offline.with_label_values(&labels).set(i64::from(p.is_offline()));
            self.isr_size.with_label_values(&labels).set(p.isr().len() as i64);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `/metrics`, `/healthz` (process up) and `/readyz`: ready once the
/// partition logs are recovered and the listeners bound (both before this
/// server starts) and the group coordinator has loaded `__consumer_offsets`;
/// 503 with the reason before that, so a pod is not sent clients it would
/// answer COORDINATOR_LOAD_IN_PROGRESS.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    replicas: Arc<ReplicaManager>,
    groups: Arc<GroupCoordinator>,
    controller: Arc<Controller>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use axum::routing::get;
    let ready_groups = groups.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (m, r, g, c) = (metrics.clone(), replicas.clone(), groups.clone(), controller.clone());
                async move {
                    m.update_groups(&g, &r);
                    m.controller.update(&c, c.broker_config().node_id);
                    m.render(&r)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let loaded = ready_groups.is_loaded();
                async move {
                    if loaded {
                        (axum::http::StatusCode::OK, "ok")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "loading __consumer_offsets",
                        )
                    }
                }
            }),
        );
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            crate::shutdown::stopped(&mut shutdown).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(?addr, error = %e, "metrics endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use crate::controller::Controller;
    use crate::group::{GroupConfig, GroupCoordinator};
    use crate::log::manager::LogManager;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// `/readyz` says 503 until `__consumer_offsets` is loaded, then 200.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_waits_for_the_group_coordinator() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig::default();
        let config = BrokerConfig {
            admin_listener: "127.0.0.1:0".into(),
            ..config
        };
        let controller = Controller::start(dir.path(), config.clone()).await.unwrap();
        controller.wait_for_cluster_id().await.unwrap();
        let replicas = Arc::new(ReplicaManager::new(LogManager::open(dir.path()).unwrap()));
        let groups = Arc::new(GroupCoordinator::new(
            GroupConfig::from_broker(&config),
            controller.clone(),
            replicas.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            Metrics::new(),
            replicas,
            groups.clone(),
            controller,
            rx,
        ));
        let loading = get(addr, "/readyz").await;
        assert!(loading.starts_with("HTTP/1.1 503"), "{loading}");
        assert!(loading.ends_with("loading __consumer_offsets"), "{loading}");
        assert!(
            get(addr, "/healthz").await.starts_with("HTTP/1.1 200"),
            "alive while loading"
        );
        groups.load().unwrap();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        // A quorum of one: this node is the active controller.
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("fjord_controller_active 1"), "{metrics}");
        assert!(metrics.contains("fjord_controller_epoch 1"), "{metrics}");
        let _ = stop.send(true);
        server.await.unwrap();
    }
}
