//! Wiring: open the data directory, recover logs, bind the listeners and run
//! the background work (retention, flush, checkpoints) until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::Apis;
use crate::config::{BrokerConfig, Endpoint};
use crate::context::BrokerContext;
use crate::controller::image::BrokerRegistration;
use crate::controller::Controller;
use crate::group::{GroupConfig, GroupCoordinator};
use crate::log::manager::LogManager;
use crate::metrics::Metrics;
use crate::replica::ReplicaManager;
use crate::shutdown::stopped;
use crate::txn::{TransactionCoordinator, TxnConfig};

pub struct Broker {
    pub ctx: Arc<BrokerContext>,
    pub kafka_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Heartbeats stop first on shutdown, so that the controlled shutdown's
    /// fencing is not undone by one more heartbeat.
    lifecycle_stop: watch::Sender<bool>,
    lifecycle: JoinHandle<()>,
    _lock: std::fs::File,
}

async fn bind(what: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

impl Broker {
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Broker> {
        let data = config.data_dir();
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        // One broker per data directory, as Kafka's .lock file ensures.
        let lock = std::fs::File::create(data.join(".lock"))?;
        lock.try_lock()
            .map_err(|_| anyhow::anyhow!("{} is in use by another broker", data.display()))?;

        let logs = LogManager::open(&data)?;
        logs.clean_deleted_dirs()?;
        let controller = Controller::start(&data, config.clone()).await?;
        let replicas = Arc::new(ReplicaManager::new(logs));
        {
            let replicas = replicas.clone();
            let config = config.clone();
            // Publishing the image opens (and if needed recovers) the partition logs it touches.
            controller.subscribe(Box::new(move |image, changes| {
                // Failures are logged per partition; the rest of the change is applied.
                replicas.apply_changes(image, changes, &config);
                Ok(())
            }))?;
        }

        let listener = config.listener();
        let kafka = bind("Kafka", &listener.addr()).await?;
        let admin = bind("admin", &config.admin_listener).await?;
        let metrics_listener = bind("metrics", &config.metrics_listener).await?;
        let kafka_addr = kafka.local_addr()?;
        let advertised = if config.advertised_listeners.is_empty() {
            Endpoint {
                host: listener.host.clone(),
                port: kafka_addr.port(),
            }
        } else {
            config.advertised()
        };
        let metrics = Metrics::new();
        let groups = Arc::new(GroupCoordinator::new(
            GroupConfig::from_broker(&config),
            controller.clone(),
            replicas.clone(),
        ));
        let txns = Arc::new(TransactionCoordinator::new(
            TxnConfig::from_broker(&config),
            config.node_id,
            controller.clone(),
            replicas.clone(),
            groups.clone(),
        ));
        let admin_addr = admin.local_addr()?;
        let registration = BrokerRegistration {
            id: config.node_id,
            incarnation_id: uuid::Uuid::new_v4(),
            host: advertised.host.clone(),
            port: advertised.port as i32,
            // As the other voters know it; otherwise the advertised host with
            // the admin port (a learner is reached there), or the bound address.
            admin: config
                .quorum_voters()?
                .into_iter()
                .find(|(id, _)| *id == config.node_id && !config.controller_quorum_voters.is_empty())
                .map_or_else(
                    || {
                        if admin_addr.ip().is_unspecified() {
                            format!("{}:{}", advertised.host, admin_addr.port())
                        } else {
                            admin_addr.to_string()
                        }
                    },
                    |(_, addr)| addr,
                ),
            rack: config.broker_rack.clone(),
            fenced: false,
        };
        let ctx = Arc::new(BrokerContext {
            config: config.clone(),
            controller,
            replicas: replicas.clone(),
            metrics: metrics.clone(),
            groups: groups.clone(),
            txns,
            advertised,
            registration,
        });
        let (shutdown, rx) = watch::channel(false);
        let metrics_addr = metrics_listener.local_addr()?;
        let mut tasks = vec![
            tokio::spawn(crate::admin::serve(admin, ctx.clone(), rx.clone())),
            tokio::spawn(crate::metrics::serve(
                metrics_listener,
                metrics,
                replicas.clone(),
                groups.clone(),
                ctx.controller.clone(),
                rx.clone(),
            )),
            tokio::spawn(background(ctx.clone(), rx.clone())),
            tokio::spawn(group_timers(ctx.clone(), rx.clone())),
            tokio::spawn(txn_timers(ctx.clone(), rx.clone())),
        ];
        // The admin listener serves the quorum's RPCs now, so the voters can
        // elect a controller; the first one chooses the cluster id.
        ctx.controller.wait_for_cluster_id().await?;
        ctx.controller.register(&ctx.registration).await?;
        // Caught up with the metadata log: what it assigns elsewhere is stray.
        let strays = {
            let (replicas, node_id) = (replicas.clone(), config.node_id);
            tokio::task::spawn_blocking(move || replicas.delete_stray_logs(node_id)).await?
        };
        if let Err(e) = strays {
            tracing::warn!(error = %e, "deleting stray partition directories failed");
        }
        // Clients are served once this broker is unfenced with a current image
        // (as a Kafka broker enters RUNNING); until then connections wait in
        // the bound listener's backlog.
        // Followers fetch from their leaders; leaders keep their ISRs.
        tasks.push(tokio::spawn(crate::replica::fetcher::run(
            config.node_id,
            replicas.clone(),
            ctx.controller.clone(),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::replica::isr::run(
            replicas.clone(),
            ctx.controller.clone(),
            config.replica_lag_time_max_ms,
            (ctx.metrics.isr_shrinks.clone(), ctx.metrics.isr_expands.clone()),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::network::serve(
            kafka,
            Arc::new(Apis::new(ctx.clone())),
            rx.clone(),
        )));
        let (lifecycle_stop, lifecycle_rx) = watch::channel(false);
        let lifecycle = tokio::spawn(
            ctx.controller
                .clone()
                .run_lifecycle(ctx.registration.clone(), lifecycle_rx),
        );
        // Serve at once; group requests answer COORDINATOR_LOAD_IN_PROGRESS until the load is done.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = groups.load() {
                tracing::error!(error = %e, "loading __consumer_offsets failed");
            }
        });
        tracing::info!(
            node_id = config.node_id,
            cluster_id = %ctx.controller.image().cluster_id,
            kafka = %kafka_addr,
            admin = %admin_addr,
            metrics = %metrics_addr,
            data = %data.display(),
            "broker started"
        );
        Ok(Broker {
            ctx,
            kafka_addr,
            admin_addr,
            metrics_addr,
            shutdown,
            tasks,
            lifecycle_stop,
            lifecycle,
            _lock: lock,
        })
    }

    /// Controlled shutdown first (leadership moves away while the listeners
    /// still answer), then stops the listeners, closes every log cleanly and
    /// writes the marker.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.lifecycle_stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.lifecycle).await;
        match self.ctx.controller.controlled_shutdown(&self.ctx.registration).await {
            Ok(()) => tracing::info!("controlled shutdown: leadership moved off this broker"),
            Err(e) => tracing::warn!(error = %e, "controlled shutdown failed; stopping anyway"),
        }
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.ctx.controller.shutdown().await;
        self.ctx.replicas.checkpoint_high_watermarks()?;
        self.ctx.replicas.logs().shutdown()?;
        tracing::info!("broker stopped cleanly");
        Ok(())
    }
}

/// Group session and rebalance timers, and offset expiry.
async fn group_timers(ctx: Arc<BrokerContext>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expiry = tokio::time::interval(
        ctx.groups
            .config()
            .offsets_retention_check
            .max(Duration::from_millis(10)),
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let groups = ctx.groups.clone();
                // Loading a newly led partition reads its log: off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    groups.follow_leadership();
                    groups.tick();
                })
                .await;
            }
            _ = expiry.tick() => {
                let n = ctx.groups.expire_offsets();
                if n > 0 {
                    tracing::info!(offsets = n, "expired committed offsets");
                }
            }
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// The transaction coordinator following leadership of `__transaction_state`
/// (and resuming the transactions it finds ending), the timeout aborts and
/// the expiry of idle transactional ids.
async fn txn_timers(ctx: Arc<BrokerContext>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut timeouts = tokio::time::interval(ctx.txns.config().abort_check_interval.max(Duration::from_millis(10)));
    timeouts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut id_expiry = tokio::time::interval(
        ctx.txns
            .config()
            .id_expiration_check_interval
            .max(Duration::from_millis(10)),
    );
    id_expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let txns = ctx.txns.clone();
                // Loading a newly led partition reads its log: off the async workers.
                let _ = tokio::task::spawn_blocking(move || txns.follow_leadership()).await;
                ctx.txns.resume_completions();
            }
            _ = timeouts.tick() => ctx.txns.abort_timed_out().await,
            _ = id_expiry.tick() => {
                let n = ctx.txns.remove_expired_ids().await;
                if n > 0 {
                    tracing::info!(transactional_ids = n, "expired transactional ids");
                }
            }
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// Retention, time-based flushes, recovery-point checkpoints, the cleaner
/// and producer id expiry.
async fn background(ctx: Arc<BrokerContext>, mut shutdown: watch::Receiver<bool>) {
    let ms = |v: i64| Duration::from_millis(v.clamp(10, 86_400_000) as u64);
    let mut retention = tokio::time::interval(ms(ctx.config.log_retention_check_interval_ms));
    let mut flush = tokio::time::interval(ms(ctx.config.log_flush_scheduler_interval_ms));
    let mut checkpoint = tokio::time::interval(ms(ctx.config.log_flush_offset_checkpoint_interval_ms));
    let mut cleaner = tokio::time::interval(ms(ctx.config.log_cleaner_backoff_ms));
    let mut producer_expiry = tokio::time::interval(ms(ctx.config.producer_id_expiration_check_interval_ms));
    for t in [
        &mut retention,
        &mut flush,
        &mut checkpoint,
        &mut cleaner,
        &mut producer_expiry,
    ] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        let replicas = ctx.replicas.clone();
        tokio::select! {
            _ = retention.tick() => {
                let _ = tokio::task::spawn_blocking(move || replicas.logs().enforce_retention()).await;
            }
            _ = flush.tick() => {
                let _ = tokio::task::spawn_blocking(move || replicas.logs().flush_due()).await;
            }
            _ = producer_expiry.tick() => {
                let expiration = ctx.config.producer_id_expiration_ms;
                let removed = tokio::task::spawn_blocking(move || replicas.logs().remove_expired_producers(expiration)).await;
                if let Ok(n @ 1..) = removed {
                    tracing::debug!(producers = n, "expired idle producer ids");
                }
            }
            _ = cleaner.tick(), if ctx.config.log_cleaner_enable => {
                let dedupe = ctx.config.log_cleaner_dedupe_buffer_size.max(1 << 20) as usize;
                let _ = tokio::task::spawn_blocking(move || replicas.logs().clean_all(dedupe)).await;
            }
            _ = checkpoint.tick() => {
                let result = tokio::task::spawn_blocking(move || {
                    replicas.logs().checkpoint()?;
                    replicas.checkpoint_high_watermarks()
                })
                .await;
                if let Ok(Err(e)) = result {
                    tracing::warn!(error = %e, "writing checkpoints failed");
                }
            }
            () = stopped(&mut shutdown) => return,
        }
    }
}
