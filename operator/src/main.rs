//! `fjord-operator`: runs the Cluster, Topic and ConsumerGroup controllers.

use std::sync::atomic::Ordering;

use fjord_operator::{leader, metrics, OperatorConfig};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the broker: colours only on a terminal, JSON lines with FJORD_LOG_FORMAT=json.
    let filter = tracing_subscriber::EnvFilter::try_from_env("FJORD_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match std::env::var("FJORD_LOG_FORMAT") {
        Ok(f) if f.eq_ignore_ascii_case("json") => logs.json().init(),
        _ => logs.init(),
    }
    let config = OperatorConfig::from_env();
    let metrics = metrics::Metrics::new();
    tokio::spawn(metrics::serve(config.metrics_addr.clone(), metrics.clone()));
    let client = Client::try_default().await?;

    let mut lease_keeper = None;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let (lease_name, holder) = (config.lease_name.clone(), config.pod_name.clone());
    let leader_election = config.leader_election;
    if config.leader_election {
        // A standby is healthy and ready; it only waits for the lease.
        metrics.ready.store(true, Ordering::Relaxed);
        leader::acquire(&leases, &config.lease_name, &config.pod_name).await;
        lease_keeper = Some(tokio::spawn(leader::keep(
            leases.clone(),
            config.lease_name.clone(),
            config.pod_name.clone(),
        )));
    }
    metrics.leader.set(1);
    metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(namespaces = ?config.watch_namespaces, "starting controllers");

    let controllers = fjord_operator::run(client.clone(), config, metrics);
    match lease_keeper {
        Some(keeper) => {
            tokio::select! {
                _ = controllers => {}
                _ = keeper => anyhow::bail!("lost the leader lease; exiting so a standby can take over"),
            }
        }
        None => {
            controllers.await;
        }
    }
    // The controllers stopped on a signal: hand the lease over at once.
    if leader_election {
        if let Err(e) = leader::release(&leases, &lease_name, &holder).await {
            tracing::warn!(error = %e, "releasing the leader lease failed; it expires by itself");
        }
    }
    Ok(())
}
