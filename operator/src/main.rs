//! `fjord-operator`: runs the Cluster, Topic and ConsumerGroup controllers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fjord_crds::{Cluster, ConsumerGroup, Topic};
use fjord_operator::controllers::{cluster, consumer_group, error_policy, topic};
use fjord_operator::{leader, metrics, Context, OperatorConfig};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FJORD_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let config = OperatorConfig::from_env();
    let metrics = metrics::Metrics::new();
    tokio::spawn(metrics::serve(config.metrics_addr.clone(), metrics.clone()));
    let client = Client::try_default().await?;

    let mut lease_keeper = None;
    if config.leader_election {
        // A standby is healthy and ready; it only waits for the lease.
        metrics.ready.store(true, Ordering::Relaxed);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
        leader::acquire(&leases, &config.lease_name, &config.pod_name).await;
        lease_keeper = Some(tokio::spawn(leader::keep(
            leases,
            config.lease_name.clone(),
            config.pod_name.clone(),
        )));
    }
    metrics.leader.set(1);
    metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(namespaces = ?config.watch_namespaces, "starting controllers");

    let namespaces = config.watch_namespaces.clone();
    let ctx = Arc::new(Context::new(client.clone(), config, metrics));
    let mut runs = Vec::new();
    for (clusters, sts) in apis::<Cluster>(&client, &namespaces)
        .into_iter()
        .zip(apis::<StatefulSet>(&client, &namespaces))
    {
        let cm = apis::<ConfigMap>(&client, &namespaces).remove(0);
        let svc = apis::<Service>(&client, &namespaces).remove(0);
        runs.push(
            Controller::new(clusters, watcher::Config::default())
                .owns(sts, watcher::Config::default())
                .owns(cm, watcher::Config::default())
                .owns(svc, watcher::Config::default())
                .shutdown_on_signal()
                .run(cluster::reconcile, error_policy::<Cluster>("cluster"), ctx.clone())
                .for_each(|_| async {})
                .boxed(),
        );
    }
    for topics in apis::<Topic>(&client, &namespaces) {
        runs.push(
            Controller::new(topics, watcher::Config::default())
                .shutdown_on_signal()
                .run(topic::reconcile, error_policy::<Topic>("topic"), ctx.clone())
                .for_each(|_| async {})
                .boxed(),
        );
    }
    for groups in apis::<ConsumerGroup>(&client, &namespaces) {
        runs.push(
            Controller::new(groups, watcher::Config::default())
                .shutdown_on_signal()
                .run(
                    consumer_group::reconcile,
                    error_policy::<ConsumerGroup>("consumergroup"),
                    ctx.clone(),
                )
                .for_each(|_| async {})
                .boxed(),
        );
    }
    let controllers = futures::future::join_all(runs);
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
    Ok(())
}
