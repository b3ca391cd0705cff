//! Fjord's Kubernetes operator: reconciles `Cluster`, `Topic` and
//! `ConsumerGroup` resources. Decisions are pure functions (`desired`,
//! `plan`); the controllers observe, decide, apply and report.

pub mod admin;
pub mod controllers;
pub mod desired;
pub mod dynamic_config;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod plan;
pub mod reassignment;
pub mod roll;
pub mod scale;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backoff::Backoffs;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

/// Operator configuration (environment, set by the chart).
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Image for brokers when a Cluster names none.
    pub broker_image: String,
    /// Talk to this admin endpoint instead of the cluster's bootstrap Service
    /// (for an operator running outside the cluster).
    pub admin_endpoint_override: Option<String>,
    pub watch_namespaces: Vec<String>,
    pub leader_election: bool,
    pub lease_name: String,
    pub namespace: String,
    pub pod_name: String,
    pub metrics_addr: String,
    /// Make a NetworkPolicy per Cluster that opens the admin port only to the
    /// operator's pods (in `namespace`, with `operator_labels`) and the brokers.
    pub network_policy: bool,
    pub operator_labels: std::collections::BTreeMap<String, String>,
}

impl OperatorConfig {
    pub fn from_env() -> OperatorConfig {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        OperatorConfig {
            broker_image: var("FJORD_BROKER_IMAGE", "ghcr.io/fjord-dev/fjord:0.1.0"),
            admin_endpoint_override: std::env::var("FJORD_ADMIN_ENDPOINT").ok().filter(|s| !s.is_empty()),
            watch_namespaces: var("FJORD_WATCH_NAMESPACES", "")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            leader_election: var("FJORD_LEADER_ELECTION", "true") == "true",
            lease_name: var("FJORD_LEASE_NAME", "fjord-operator"),
            namespace: var("POD_NAMESPACE", "default"),
            pod_name: var("POD_NAME", "fjord-operator-local"),
            metrics_addr: var("FJORD_OPERATOR_METRICS_ADDR", "0.0.0.0:8080"),
            network_policy: var("FJORD_NETWORK_POLICY", "false") == "true",
            // `k=v,k=v`: the chart passes the operator pods' selector labels.
            operator_labels: var("FJORD_OPERATOR_LABELS", "app.kubernetes.io/component=operator")
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("broker admin API: {0}")]
    Admin(#[from] tonic::Status),
    #[error("cannot reach the broker admin API at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// Adding or removing the finalizer failed (errors of the reconcile
    /// itself keep their own kind).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Arc<metrics::Metrics>,
    reporter: Reporter,
    /// Per object, reason and action: the last note published and the
    /// recorder that published it. kube's Recorder folds events with the same
    /// object, reason and action into one series keeping the first note; a
    /// different note (another config change, another set of moves) is a
    /// new event, so it gets a fresh recorder, and a repeated one counts up.
    recorders: tokio::sync::Mutex<HashMap<String, (String, Recorder)>>,
    backoffs: Backoffs,
    /// When each object's status was last written (counters are refreshed at most once a period).
    status_writes: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig, metrics: Arc<metrics::Metrics>) -> Context {
        let reporter = Reporter {
            controller: "fjord-operator".into(),
            instance: Some(config.pod_name.clone()),
        };
        Context {
            client,
            config,
            metrics,
            reporter,
            recorders: Default::default(),
            backoffs: Backoffs::default(),
            status_writes: Default::default(),
        }
    }

    /// Publishes an event; failures to record are logged, never fatal.
    pub async fn event<K: kube::Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let reference = obj.object_ref(&());
        let key = format!(
            "{}/{}/{}/{}/{reason}/{action}",
            reference.kind.as_deref().unwrap_or_default(),
            reference.namespace.as_deref().unwrap_or_default(),
            reference.name.as_deref().unwrap_or_default(),
            reference.uid.as_deref().unwrap_or_default(),
        );
        let recorder = {
            let mut recorders = self.recorders.lock().await;
            match recorders.get(&key) {
                Some((last, recorder)) if *last == note => recorder.clone(),
                _ => {
                    let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
                    recorders.insert(key, (note.clone(), recorder.clone()));
                    recorder
                }
            }
        };
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason, "recording an event failed");
        }
    }

    /// Exponential backoff per object: 1s, 2s, 4s ... up to 5 minutes.
    pub fn backoff(&self, key: &str) -> Duration {
        self.backoffs.next(key)
    }

    pub fn reset_backoff(&self, key: &str) {
        self.backoffs.reset(key)
    }

    pub fn since_status_write(&self, key: &str) -> Option<Duration> {
        let writes = self.status_writes.lock().unwrap_or_else(|e| e.into_inner());
        writes.get(key).map(|t| t.elapsed())
    }

    pub fn status_written(&self, key: &str) {
        let mut writes = self.status_writes.lock().unwrap_or_else(|e| e.into_inner());
        writes.insert(key.to_string(), std::time::Instant::now());
    }
}

/// Runs the three controllers until they stop (shutdown signal).
pub async fn run(client: Client, config: OperatorConfig, metrics: Arc<metrics::Metrics>) {
    use controllers::{cluster, consumer_group, error_policy, topic};
    use fjord_crds::{Cluster, ConsumerGroup, Topic};
    use futures::{FutureExt, StreamExt};
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use kube::runtime::{watcher, Controller};

    fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<kube::Api<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        if namespaces.is_empty() {
            vec![kube::Api::all(client.clone())]
        } else {
            namespaces
                .iter()
                .map(|ns| kube::Api::namespaced(client.clone(), ns))
                .collect()
        }
    }

    let namespaces = config.watch_namespaces.clone();
    let ctx = Arc::new(Context::new(client.clone(), config, metrics.clone()));
    let mut runs = Vec::new();
    // The controllers' caches, for the managed-objects gauge.
    type CacheSize = (&'static str, Box<dyn Fn() -> usize + Send>);
    let mut counted: Vec<CacheSize> = Vec::new();
    fn count<K>(kind: &'static str, store: kube::runtime::reflector::Store<K>) -> CacheSize
    where
        K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        (kind, Box::new(move || store.len()))
    }
    // One Cluster controller per watched namespace, owning objects in that namespace.
    for (((clusters, sts), cm), svc) in apis::<Cluster>(&client, &namespaces)
        .into_iter()
        .zip(apis::<StatefulSet>(&client, &namespaces))
        .zip(apis::<ConfigMap>(&client, &namespaces))
        .zip(apis::<Service>(&client, &namespaces))
    {
        let controller = Controller::new(clusters, watcher::Config::default());
        counted.push(count("Cluster", controller.store()));
        // Only Fjord's own objects are watched and cached, not every StatefulSet,
        // ConfigMap and Service of a big cluster.
        let ours = || watcher::Config::default().labels(desired::OWNED_SELECTOR);
        runs.push(
            controller
                .owns(sts, ours())
                .owns(cm, ours())
                .owns(svc, ours())
                .shutdown_on_signal()
                .run(cluster::reconcile, error_policy::<Cluster>("cluster"), ctx.clone())
                .for_each(|_| async {})
                .boxed(),
        );
    }
    for topics in apis::<Topic>(&client, &namespaces) {
        let controller = Controller::new(topics, watcher::Config::default());
        counted.push(count("Topic", controller.store()));
        runs.push(
            controller
                .shutdown_on_signal()
                .run(topic::reconcile, error_policy::<Topic>("topic"), ctx.clone())
                .for_each(|_| async {})
                .boxed(),
        );
    }
    for groups in apis::<ConsumerGroup>(&client, &namespaces) {
        let controller = Controller::new(groups, watcher::Config::default());
        counted.push(count("ConsumerGroup", controller.store()));
        runs.push(
            controller
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
    let gauges = tokio::spawn(async move {
        loop {
            for kind in metrics::KINDS {
                let n: usize = counted.iter().filter(|(k, _)| *k == kind).map(|(_, len)| len()).sum();
                metrics.managed.with_label_values(&[kind]).set(n as i64);
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    futures::future::join_all(runs).await;
    gauges.abort();
}

mod backoff {
    use super::*;

    #[derive(Default)]
    pub struct Backoffs(std::sync::Mutex<HashMap<String, u32>>);

    impl Backoffs {
        pub fn next(&self, key: &str) -> Duration {
            let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(key.to_string()).or_insert(0);
            *n = (*n + 1).min(20);
            Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
        }

        pub fn reset(&self, key: &str) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let b = backoff::Backoffs::default();
        let seq: Vec<u64> = (0..10).map(|_| b.next("x").as_secs()).collect();
        assert_eq!(seq, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 256]);
        b.reset("x");
        assert_eq!(b.next("x").as_secs(), 1);
        assert_eq!(b.next("y").as_secs(), 1);
    }
}
