//! Cluster -> ConfigMap, Services, PodDisruptionBudget, StatefulSet (server-side
//! apply, owned by the Cluster), operator-driven pod restarts on config
//! change, and status from the StatefulSet and the brokers' admin API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fjord_crds::{BrokerEndpoint, Cluster, ClusterStatus, VolumeStatus};
use fjord_proto::admin::v1 as pb;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{key, now, paused, write_status, Timer, MANAGER};
use crate::dynamic_config::{config_changes, describe_changes, desired_dynamic};
use crate::placement::{rebalance_moves, Candidate};
use crate::plan::{
    claims_left_behind, cluster_conditions, condition, rack_condition, volume_condition, volumes_to_expand, PodState,
    RegisteredBroker, VolumeState,
};
use crate::reassignment::{progress, Moving};
use crate::roll::{metadata_caught_up, next_restart, Blocked, RollBroker, RollPartition, RollStep};
use crate::scale::{drain_moves, scale_plan, HostedReplicas, ScalePlan};
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
    if cluster.spec.rack.is_some() {
        // Refreshed each reconcile (at least once a minute): a broker waits
        // at start-up for its node to appear in the map. Not fatal when nodes
        // cannot be read (rbac.nodes off in a namespaced install): the
        // brokers wait for the map, and the warning event says why.
        match Api::<Node>::all(client.clone())
            .list_metadata(&ListParams::default())
            .await
        {
            Ok(nodes) => {
                let nodes: Vec<_> = nodes
                    .items
                    .into_iter()
                    .map(|n| {
                        (
                            n.metadata.name.unwrap_or_default(),
                            n.metadata.labels.unwrap_or_default(),
                        )
                    })
                    .collect();
                if let Some(map) = desired::rack_map(&cluster, &nodes) {
                    apply(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &map).await?;
                }
            }
            Err(e) => {
                ctx.event(
                    cluster.as_ref(),
                    true,
                    "RackMapUnavailable",
                    "ListNodes",
                    format!(
                        "cannot read the nodes' topology labels for broker.rack (the operator needs get/list \
                         on nodes: the chart's rbac.nodes): {e}"
                    ),
                )
                .await
            }
        }
    }
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
    let mut admin_client = admin::connect(&ctx, &cluster).await;
    let described = match admin_client.as_mut() {
        Ok(client) => client
            .describe_cluster(pb::DescribeClusterRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    // The cluster-wide dynamic configs change at run time, not by a roll.
    if let (Ok(client), Ok(d)) = (admin_client.as_mut(), &described) {
        apply_dynamic_configs(&ctx, &cluster, client, d).await;
    }
    // Fetched once, when a scale-down, a roll or the reassignment progress needs them.
    let mut topics: Option<Result<Vec<pb::TopicDescription>, String>> = None;
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let mut set = desired::stateful_set(&cluster, &ctx.config.broker_image);
    let mut created_class = None;
    let mut running = cluster.spec.replicas;
    if let Some(existing) = sts_api.get_opt(&name).await? {
        created_class = Some(desired::claim_storage_class(&existing));
        desired::keep_claim_templates(&mut set, &existing);
        running = existing.spec.as_ref().and_then(|s| s.replicas).unwrap_or(running);
    }
    let broker_racks: Vec<(i32, String)> = described
        .as_ref()
        .map(|d| d.brokers.iter().map(|b| (b.id, b.rack.clone())).collect())
        .unwrap_or_default();
    let scale = if cluster.spec.replicas < running {
        let listed = list_topics(&mut admin_client, &described, &mut topics).await.clone();
        let plan = scale_down(&cluster, running, &described, &listed);
        if let (ScalePlan::Drain { brokers, .. }, Ok(client), Ok(listed)) = (&plan, admin_client.as_mut(), &listed) {
            let racks = broker_racks.iter().cloned().collect();
            drain(&ctx, &cluster, client, brokers, &racks, listed).await?;
        }
        plan
    } else {
        ScalePlan::Size(cluster.spec.replicas)
    };
    if let Some(spec) = set.spec.as_mut() {
        spec.replicas = Some(match &scale {
            ScalePlan::Size(n) => *n,
            ScalePlan::Drain { keep, .. } | ScalePlan::Refused { keep, .. } => *keep,
        });
    }
    let asked_class = cluster.spec.storage.storage_class.clone().unwrap_or_default();
    let class_change = created_class.filter(|c| *c != asked_class);
    apply(&sts_api, &set).await?;
    let (mut volumes, refused) = expand_volumes(&ctx, &cluster).await?;
    if cluster.spec.storage.delete_claim {
        let replicas = set
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(cluster.spec.replicas);
        let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
        for claim in claims_left_behind(&name, replicas, &volumes) {
            match claims.delete(&claim, &DeleteParams::default()).await {
                Ok(_) => {
                    ctx.event(
                        cluster.as_ref(),
                        false,
                        "DeleteClaim",
                        "ScaleDown",
                        format!("deleting {claim} of a removed broker (storage.deleteClaim)"),
                    )
                    .await;
                    volumes.retain(|v| v.name != claim);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => volumes.retain(|v| v.name != claim),
                Err(e) => tracing::warn!(claim, error = %e, "deleting a removed broker's claim failed; retrying"),
            }
        }
    }

    // Restarts are ours (OnDelete): the roll gate (roll.rs) picks the broker.
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
    // A roll lasts from the first stale pod until the cluster is whole again
    // after the last restart (the RollingRestart condition is set meanwhile).
    let was_rolling = cluster
        .status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "RollingRestart"));
    let roll = if was_rolling || observed.iter().any(|p| p.template_hash != desired_hash) {
        let topics = list_topics(&mut admin_client, &described, &mut topics).await;
        Some(roll_step(
            &observed,
            &desired_hash,
            cluster.spec.replicas,
            desired::controller_voters(&cluster),
            &described,
            topics,
        ))
    } else {
        None
    };
    // Between restarts and after the last one, leadership goes back to the
    // preferred replicas; once it has, the roll is over (no condition).
    if matches!(roll, Some(RollStep::Wait(Blocked::LeadersNotPreferred { .. }))) {
        if let Ok(client) = admin_client.as_mut() {
            elect_preferred_leaders(client, "during a roll").await;
        }
    }
    let roll = roll.filter(|step| *step != RollStep::Done);
    if let Some(RollStep::Restart(id)) = roll {
        let pod = format!("{name}-{id}");
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

    // After a scale-up the new brokers hold nothing: a minimal-movement
    // rebalance (placement.rs) fills them, once every broker is up and
    // nothing is rolling or moving.
    let mut rebalanced = 0;
    if roll.is_none() && matches!(scale, ScalePlan::Size(n) if n == running) {
        if let Ok(d) = &described {
            let members: Vec<Candidate> = d
                .brokers
                .iter()
                .filter(|b| b.id < cluster.spec.replicas && !b.fenced)
                .map(|b| Candidate {
                    id: b.id,
                    rack: b.rack.clone(),
                    load: b.replica_count.max(0) as usize,
                })
                .collect();
            if members.len() as i32 == cluster.spec.replicas && members.iter().any(|b| b.load == 0) {
                let listed = list_topics(&mut admin_client, &described, &mut topics).await.clone();
                if let (Ok(client), Ok(listed)) = (admin_client.as_mut(), &listed) {
                    rebalanced = rebalance(&ctx, &cluster, client, &members, listed).await?;
                }
            }
        }
    }

    // Progress of the reassignments running now (ours or anyone's).
    let reassignment = match list_topics(&mut admin_client, &described, &mut topics).await {
        Ok(listed) => progress(
            cluster.status.as_ref().and_then(|s| s.reassignment.as_ref()),
            &moving_partitions(listed),
            cluster.spec.replication_throttle,
            k8s_openapi::jiff::Timestamp::now(),
        ),
        // Unknown while the admin API does not answer: keep what was seen.
        Err(_) => cluster.status.as_ref().and_then(|s| s.reassignment.clone()),
    };
    // Moves just ended: their new preferred replicas take leadership, so the
    // brokers a rebalance filled lead their share now rather than at the
    // brokers' next automatic leader rebalance.
    let moves_ended = reassignment.is_none() && cluster.status.as_ref().is_some_and(|s| s.reassignment.is_some());
    if moves_ended {
        if let Ok(client) = admin_client.as_mut() {
            elect_preferred_leaders(client, "after reassignments").await;
        }
    }

    let ready = sts_api
        .get_opt(&name)
        .await?
        .and_then(|s| s.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
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
    conditions.extend(volume_condition(
        &previous,
        &cluster.spec.storage.size,
        &volumes,
        refused.as_deref(),
        class_change.as_deref().map(|c| (c, asked_class.as_str())),
        cluster.metadata.generation,
        now(),
    ));
    // A rebalance stays the Scaling condition until its moves are done.
    let was_rebalancing = previous
        .iter()
        .any(|c| c.type_ == "Scaling" && c.reason == "Rebalancing");
    let scaling = scale_condition(&cluster, &scale, running).or_else(|| match &reassignment {
        _ if rebalanced > 0 => Some((
            true,
            "Rebalancing",
            format!("moving {rebalanced} partitions to spread replicas over the brokers"),
        )),
        Some(r) if was_rebalancing => Some((
            true,
            "Rebalancing",
            format!(
                "spreading replicas over the brokers: {} partitions moving, {} done",
                r.partitions_moving, r.partitions_done
            ),
        )),
        _ => None,
    });
    conditions.extend(scaling.map(|(ok, reason, message)| {
        condition(
            &previous,
            "Scaling",
            ok,
            reason,
            &message,
            cluster.metadata.generation,
            now(),
        )
    }));
    conditions.extend(roll.as_ref().map(|step| {
        let (ok, reason, message) = roll_condition(step);
        condition(
            &previous,
            "RollingRestart",
            ok,
            reason,
            &message,
            cluster.metadata.generation,
            now(),
        )
    }));
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
        reassignment: reassignment.clone(),
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
    // A roll in progress waits on ISRs no watch sees: look again soon, not hot.
    let busy = roll.is_some() || rebalanced > 0 || reassignment.is_some() || matches!(scale, ScalePlan::Drain { .. });
    Ok(Action::requeue(Duration::from_secs(if busy { 5 } else { 60 })))
}

async fn list_topics<'a>(
    admin_client: &mut Result<admin::Admin, Error>,
    described: &Result<pb::DescribeClusterResponse, String>,
    topics: &'a mut Option<Result<Vec<pb::TopicDescription>, String>>,
) -> &'a Result<Vec<pb::TopicDescription>, String> {
    if topics.is_none() {
        *topics = Some(match (admin_client.as_mut(), described) {
            (Ok(client), Ok(_)) => client
                .list_topics(pb::ListTopicsRequest {})
                .await
                .map(|r| r.into_inner().topics)
                .map_err(|e| e.to_string()),
            (Err(e), _) => Err(e.to_string()),
            (_, Err(e)) => Err(e.clone()),
        });
    }
    topics.as_ref().expect("just set")
}

/// Brings the brokers' cluster-wide dynamic configs to what the Cluster asks
/// (dynamic_config.rs), through AlterBrokerConfigs: no restart. One event
/// per change; a refusal (an invalid value) is a warning event, retried on
/// the next pass.
async fn apply_dynamic_configs(
    ctx: &Context,
    cluster: &Cluster,
    client: &mut admin::Admin,
    described: &pb::DescribeClusterResponse,
) {
    let current: BTreeMap<String, String> = described.broker_configs.clone().into_iter().collect();
    let desired = desired_dynamic(&cluster.spec.config, cluster.spec.replication_throttle);
    let changes = config_changes(&desired, &current);
    if changes.is_empty() {
        return;
    }
    let ops = changes
        .iter()
        .map(|(name, value)| pb::ConfigOp {
            name: name.clone(),
            op: if value.is_some() {
                pb::config_op::Op::Set
            } else {
                pb::config_op::Op::Delete
            } as i32,
            value: value.clone(),
        })
        .collect();
    let what = describe_changes(&changes);
    match client
        .alter_broker_configs(pb::AlterBrokerConfigsRequest {
            ops,
            validate_only: false,
        })
        .await
    {
        Ok(_) => {
            ctx.event(
                cluster,
                false,
                "DynamicConfig",
                "AlterBrokerConfigs",
                format!("{what} on every broker, without a restart"),
            )
            .await
        }
        Err(e) => {
            ctx.event(
                cluster,
                true,
                "DynamicConfigRefused",
                "AlterBrokerConfigs",
                format!("the brokers refused to {what}: {}", e.message()),
            )
            .await
        }
    }
}

/// The partitions a reassignment is moving, for the progress in status.
fn moving_partitions(topics: &[pb::TopicDescription]) -> Vec<Moving> {
    topics
        .iter()
        .flat_map(|t| &t.partition_states)
        .filter(|p| !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty())
        .map(|p| Moving {
            size_bytes: p.size_bytes,
            adding: p.adding_replicas.len(),
        })
        .collect()
}

/// The scale plan from what the admin API reports (scale.rs decides).
fn scale_down(
    cluster: &Cluster,
    running: i32,
    described: &Result<pb::DescribeClusterResponse, String>,
    topics: &Result<Vec<pb::TopicDescription>, String>,
) -> ScalePlan {
    let rfs: Vec<(String, i32)> = topics
        .as_ref()
        .map(|ts| ts.iter().map(|t| (t.name.clone(), t.replication_factor)).collect())
        .unwrap_or_default();
    let hosted: Result<Vec<HostedReplicas>, String> = match (described, topics) {
        (Ok(d), Ok(_)) => Ok(d
            .brokers
            .iter()
            .map(|b| HostedReplicas {
                id: b.id,
                replicas: b.replica_count,
            })
            .collect()),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    };
    scale_plan(
        running,
        cluster.spec.replicas,
        desired::controller_voters(cluster),
        &rfs,
        hosted.as_deref().map_err(Clone::clone),
    )
}

/// Starts the reassignments that empty the leaving brokers (those already
/// moving are left to finish).
async fn drain(
    ctx: &Context,
    cluster: &Cluster,
    client: &mut admin::Admin,
    leaving: &[i32],
    racks: &std::collections::BTreeMap<i32, String>,
    topics: &[pb::TopicDescription],
) -> Result<(), Error> {
    let partitions = admin::partition_replicas(topics);
    let staying: Vec<i32> = (0..cluster.spec.replicas).collect();
    let moves = drain_moves(leaving, &staying, racks, &partitions);
    let purpose = format!("off brokers {leaving:?} before the StatefulSet shrinks");
    admin::reassign(ctx, cluster, client, moves, "DrainBrokers", &purpose).await?;
    Ok(())
}

/// Starts the rebalance moves onto empty brokers, unless partitions are
/// already moving (one plan at a time). Returns the partitions it moved.
async fn rebalance(
    ctx: &Context,
    cluster: &Cluster,
    client: &mut admin::Admin,
    members: &[Candidate],
    topics: &[pb::TopicDescription],
) -> Result<usize, Error> {
    let partitions = admin::partition_replicas(topics);
    if partitions.iter().any(|p| p.moving) {
        return Ok(0);
    }
    let moves = rebalance_moves(&partitions, members);
    let empty: Vec<i32> = members.iter().filter(|b| b.load == 0).map(|b| b.id).collect();
    let purpose = format!("to balance replicas onto brokers {empty:?}");
    admin::reassign(ctx, cluster, client, moves, "Rebalance", &purpose).await
}

/// The `Scaling` condition while a scale-down drains or is refused.
fn scale_condition(cluster: &Cluster, plan: &ScalePlan, running: i32) -> Option<(bool, &'static str, String)> {
    match plan {
        ScalePlan::Size(_) => None,
        ScalePlan::Drain { brokers, .. } => Some((
            true,
            "Draining",
            format!(
                "moving every replica off brokers {brokers:?}; the StatefulSet shrinks from {running} to {} once they are empty",
                cluster.spec.replicas
            ),
        )),
        ScalePlan::Refused { refusal, .. } => Some((false, refusal.reason(), refusal.to_string())),
    }
}

/// The roll gate's view of the cluster: pods by ordinal, brokers and the
/// partitions with their topics' `min.insync.replicas` from the admin API.
/// Without the admin API only pods that are not ready may restart.
fn roll_step(
    pods: &[PodState],
    desired_hash: &str,
    replicas: i32,
    voters: i32,
    described: &Result<pb::DescribeClusterResponse, String>,
    topics: &Result<Vec<pb::TopicDescription>, String>,
) -> RollStep {
    let brokers: Vec<RollBroker> = (0..replicas)
        .map(|id| {
            let pod = pods.iter().find(|p| desired::pod_ordinal(&p.name) == Some(id));
            let registered = described
                .as_ref()
                .ok()
                .and_then(|d| d.brokers.iter().find(|b| b.id == id));
            RollBroker {
                id,
                current: pod.is_none_or(|p| p.template_hash == desired_hash),
                ready: pod.is_some_and(|p| p.ready),
                registered: registered.is_some_and(|b| !b.fenced),
                caught_up: registered.is_some_and(|b| metadata_caught_up(b.metadata_lag)),
                // The quorum's voters are fixed (node ids 0..voters), registered or not.
                voter: id < voters,
            }
        })
        .collect();
    let (d, topics) = match (described, topics) {
        (Ok(d), Ok(topics)) => (d, topics),
        (Err(e), _) | (_, Err(e)) => {
            // Blind: restarting a broker that is down costs nothing; nothing else is safe.
            return match brokers.iter().find(|b| !b.current && !b.ready) {
                Some(down) => RollStep::Restart(down.id),
                None => RollStep::Wait(Blocked::AdminUnreachable { error: e.clone() }),
            };
        }
    };
    let partitions: Vec<RollPartition> = topics
        .iter()
        .flat_map(|t| {
            let min_isr = t
                .effective_configs
                .get("min.insync.replicas")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            t.partition_states.iter().map(move |p| RollPartition {
                topic: t.name.clone(),
                partition: p.partition,
                leader: p.leader,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
                min_isr,
            })
        })
        .collect();
    next_restart(&brokers, &partitions, d.controller_id)
}

/// Kafka's preferred leader election over every partition; a failure is
/// retried by a later pass.
async fn elect_preferred_leaders(client: &mut admin::Admin, when: &str) {
    match client
        .elect_preferred_leaders(pb::ElectPreferredLeadersRequest {})
        .await
    {
        Ok(r) => tracing::info!(
            partitions = r.into_inner().partitions_elected,
            "elected preferred leaders {when}"
        ),
        Err(e) => tracing::info!(error = %e, "preferred leader election {when} failed; retrying"),
    }
}

/// The `RollingRestart` condition for a roll in progress.
fn roll_condition(step: &RollStep) -> (bool, &'static str, String) {
    match step {
        RollStep::Done => (true, "Done", "every broker runs the current template".into()),
        RollStep::Restart(id) => (true, "Restarting", format!("restarting broker {id}")),
        RollStep::Wait(blocked) => (false, blocked.reason(), blocked.message()),
    }
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
