//! Cluster -> ConfigMap, Services, PodDisruptionBudget, StatefulSet (server-side
//! apply, owned by the Cluster), operator-driven pod restarts on config
//! change, and status from the StatefulSet and the brokers' admin API.

use std::sync::Arc;
use std::time::Duration;

use fjord_crds::{BrokerEndpoint, Cluster, ClusterStatus, VolumeStatus};
use fjord_proto::admin::v1 as pb;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{key, now, paused, write_status, Timer, MANAGER};
use crate::plan::{
    cluster_conditions, next_pod_to_restart, rack_condition, volume_condition, volumes_to_expand, PodState,
    RegisteredBroker, VolumeState,
};
use crate::{admin, desired, Context, Error};

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await?;
    Ok(())
}

pub async fn reconcile(cluster: Arc<Cluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = Timer::start("cluster", &ctx);
    if paused(cluster.as_ref()) {
        return Ok(Action::await_change());
    }
    let ns = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let client = ctx.client.clone();
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        &desired::config_map(&cluster),
    )
    .await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), &ns),
        &desired::headless_service(&cluster),
    )
    .await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), &ns),
        &desired::bootstrap_service(&cluster),
    )
    .await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), &ns),
        &desired::admin_service(&cluster),
    )
    .await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
        &desired::pod_disruption_budget(&cluster),
    )
    .await?;
    if ctx.config.network_policy {
        apply(
            &Api::<NetworkPolicy>::namespaced(client.clone(), &ns),
            &desired::network_policy(&cluster, &ctx.config.namespace, &ctx.config.operator_labels),
        )
        .await?;
    }
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let mut set = desired::stateful_set(&cluster, &ctx.config.broker_image);
    let mut created_class = None;
    if let Some(existing) = sts_api.get_opt(&name).await? {
        created_class = Some(desired::claim_storage_class(&existing));
        desired::keep_claim_templates(&mut set, &existing);
    }
    let asked_class = cluster.spec.storage.storage_class.clone().unwrap_or_default();
    let class_change = created_class.filter(|c| *c != asked_class);
    apply(&sts_api, &set).await?;
    let (volumes, refused) = expand_volumes(&ctx, &cluster).await?;

    // Restarts are ours (OnDelete): one broker at a time, only while all are ready.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=broker");
    let observed: Vec<PodState> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .map(|p| PodState {
            name: p.name_any(),
            template_hash: p
                .annotations()
                .get(desired::TEMPLATE_HASH_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            ready: p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        })
        .collect();
    let desired_hash = desired::desired_template_hash(&cluster, &ctx.config.broker_image);
    if let Some(pod) = next_pod_to_restart(&observed, &desired_hash, cluster.spec.replicas) {
        // Through the Eviction API, so the PodDisruptionBudget is honoured.
        match pods.evict(&pod, &EvictParams::default()).await {
            Ok(_) => {
                ctx.event(
                    cluster.as_ref(),
                    false,
                    "RollingRestart",
                    "RestartBroker",
                    format!("evicting {pod} to roll out a changed pod template or config"),
                )
                .await
            }
            // 429: the budget allows no disruption now; the next pass tries again.
            Err(kube::Error::Api(e)) if e.code == 429 => {
                tracing::info!(%pod, "eviction refused by the PodDisruptionBudget; retrying later")
            }
            Err(e) => return Err(e.into()),
        }
    }

    let ready = sts_api
        .get_opt(&name)
        .await?
        .and_then(|s| s.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let described = match admin::connect(&ctx, &cluster).await {
        Ok(mut client) => client
            .describe_cluster(pb::DescribeClusterRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let previous = cluster
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let registered: Result<Vec<RegisteredBroker>, String> = described.as_ref().map_err(Clone::clone).map(|d| {
        d.brokers
            .iter()
            .map(|b| RegisteredBroker {
                id: b.id,
                fenced: b.fenced,
            })
            .collect()
    });
    let mut conditions = cluster_conditions(
        &previous,
        cluster.spec.replicas,
        ready,
        registered.as_deref().map_err(Clone::clone),
        cluster.metadata.generation,
        now(),
    );
    let broker_racks: Vec<(i32, String)> = described
        .as_ref()
        .map(|d| d.brokers.iter().map(|b| (b.id, b.rack.clone())).collect())
        .unwrap_or_default();
    conditions.extend(volume_condition(
        &previous,
        &cluster.spec.storage.size,
        &volumes,
        refused.as_deref(),
        class_change.as_deref().map(|c| (c, asked_class.as_str())),
        cluster.metadata.generation,
        now(),
    ));
    conditions.extend(rack_condition(
        &previous,
        cluster.spec.rack.as_ref().map(|r| r.topology_key.as_str()),
        &broker_racks,
        cluster.metadata.generation,
        now(),
    ));
    let status = ClusterStatus {
        observed_generation: cluster.metadata.generation,
        conditions,
        ready_brokers: ready,
        controller_voters: Some(desired::controller_voters(&cluster)),
        brokers: described
            .as_ref()
            .map(|d| {
                d.brokers
                    .iter()
                    .map(|b| BrokerEndpoint {
                        id: b.id,
                        endpoint: format!("{}:{}", b.host, b.port),
                        rack: b.rack.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        bootstrap: Some(format!(
            "{}.{ns}.svc:{}",
            desired::bootstrap_service_name(&name),
            cluster.spec.listeners.kafka
        )),
        cluster_id: described.ok().map(|d| d.cluster_id),
        volumes: volumes
            .into_iter()
            .map(|v| VolumeStatus {
                name: v.name,
                requested: v.requested,
                capacity: v.capacity.unwrap_or_default(),
            })
            .collect(),
    };
    write_status(
        &ctx,
        cluster.as_ref(),
        cluster.status.as_ref(),
        &status,
        &[],
        Duration::ZERO,
    )
    .await?;
    ctx.reset_backoff(&key(cluster.as_ref()));
    // Pods becoming ready change the owned StatefulSet's status, which starts
    // the next reconcile; the periodic one only catches what no watch sees.
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Grows the brokers' claims to `storage.size`. Returns the claims as they are
/// then, and the apiserver's reason when it refused a resize (the
/// StorageClass does not allow expansion, or the claim is not yet bound).
async fn expand_volumes(ctx: &Context, cluster: &Cluster) -> Result<(Vec<VolumeState>, Option<String>), Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns);
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component=broker",
        cluster.name_any()
    );
    let observe = |items: Vec<PersistentVolumeClaim>| -> Vec<VolumeState> {
        let mut v: Vec<VolumeState> = items
            .into_iter()
            .map(|c| VolumeState {
                name: c.name_any(),
                requested: c
                    .spec
                    .and_then(|s| s.resources)
                    .and_then(|r| r.requests)
                    .and_then(|r| r.get("storage").map(|q| q.0.clone()))
                    .unwrap_or_default(),
                capacity: c
                    .status
                    .and_then(|s| s.capacity)
                    .and_then(|c| c.get("storage").map(|q| q.0.clone())),
            })
            .collect();
        v.sort_by(|a, b| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
        v
    };
    let mut volumes = observe(claims.list(&ListParams::default().labels(&selector)).await?.items);
    let size = &cluster.spec.storage.size;
    let mut refused = None;
    for claim in volumes_to_expand(size, &volumes) {
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}});
        match claims
            .patch(&claim, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                ctx.event(
                    cluster,
                    false,
                    "VolumeExpansion",
                    "ExpandVolume",
                    format!("requested {size} for {claim}"),
                )
                .await
            }
            // Forbidden or Invalid: reported in status; the next pass tries again.
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
                tracing::info!(%claim, reason = %e.message, "volume expansion refused");
                refused = Some(format!("{claim}: {}", e.message));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if refused.is_none() && !volumes_to_expand(size, &volumes).is_empty() {
        volumes = observe(claims.list(&ListParams::default().labels(&selector)).await?.items);
    }
    Ok((volumes, refused))
}
