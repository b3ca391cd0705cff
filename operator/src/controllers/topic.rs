//! Topic -> a Kafka topic created, grown and reconfigured through the admin
//! API; a finalizer deletes it with the resource (unless
//! `fjord.dev/deletion-policy: retain`), and lets go with a warning when the
//! Cluster is gone, so nothing stays stuck Terminating.

use std::sync::Arc;
use std::time::Duration;

use fjord_crds::{Cluster, PartitionSummary, Topic, TopicStatus, DELETION_POLICY_ANNOTATION};
use fjord_proto::admin::v1 as pb;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Error as FinalizerError, Event as Finalizer};
use kube::{Api, ResourceExt};

use super::{key, now, paused, write_status, Timer};
use crate::placement::{replication_targets, Candidate};
use crate::plan::{condition, plan_topic, topic_owner, ObservedTopic, Refusal, TopicAction};
use crate::{admin, Context, Error};

pub const FINALIZER: &str = "fjord.dev/topic";

pub fn topic_name(topic: &Topic) -> String {
    topic.spec.topic_name.clone().unwrap_or_else(|| topic.name_any())
}

pub async fn reconcile(topic: Arc<Topic>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = Timer::start("topic", &ctx);
    let ns = topic.namespace().unwrap_or_default();
    let api = Api::<Topic>::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, topic, |event| async {
        match event {
            Finalizer::Apply(t) => apply(t, ctx.clone()).await,
            Finalizer::Cleanup(t) => cleanup(t, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    })
}

/// Offsets move with every produce: written at most once a minute (the periodic re-check).
const COUNTERS: &[&str] = &["logStartOffset", "logEndOffset"];

async fn set_status(ctx: &Context, topic: &Topic, status: TopicStatus) -> Result<(), Error> {
    write_status(
        ctx,
        topic,
        topic.status.as_ref(),
        &status,
        COUNTERS,
        Duration::from_secs(60),
    )
    .await?;
    Ok(())
}

async fn not_ready(ctx: &Context, topic: &Topic, reason: &str, message: String) -> Result<Action, Error> {
    let previous = topic.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let mut status = topic.status.clone().unwrap_or_default();
    status.observed_generation = topic.metadata.generation;
    status.conditions = vec![condition(
        &previous,
        "Ready",
        false,
        reason,
        &message,
        topic.metadata.generation,
        now(),
    )];
    set_status(ctx, topic, status).await?;
    ctx.event(topic, true, reason, "Reconcile", message).await;
    Ok(Action::requeue(Duration::from_secs(60)))
}

async fn apply(topic: Arc<Topic>, ctx: Arc<Context>) -> Result<Action, Error> {
    if paused(topic.as_ref()) {
        return Ok(Action::await_change());
    }
    let ns = topic.namespace().unwrap_or_default();
    let name = topic_name(&topic);
    let Some(cluster) = Api::<Cluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&topic.spec.cluster_ref)
        .await?
    else {
        return not_ready(
            &ctx,
            &topic,
            "ClusterNotFound",
            format!("Cluster '{}' does not exist in {ns}", topic.spec.cluster_ref),
        )
        .await;
    };
    // Two resources naming one topic: the older one manages it.
    let claims: Vec<(String, String)> = Api::<Topic>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|t| {
            t.spec.cluster_ref == topic.spec.cluster_ref
                && topic_name(t) == name
                && t.metadata.deletion_timestamp.is_none()
        })
        .map(|t| {
            (
                t.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|c| c.0.to_string())
                    .unwrap_or_default(),
                key(t),
            )
        })
        .collect();
    if let Some(owner) = topic_owner(&claims) {
        if owner.1 != key(topic.as_ref()) {
            return not_ready(
                &ctx,
                &topic,
                "ResourceConflict",
                format!("topic '{name}' is managed by {}", owner.1),
            )
            .await;
        }
    }
    let mut client = admin::connect(&ctx, &cluster).await?;
    let cluster_view = client
        .describe_cluster(pb::DescribeClusterRequest {})
        .await?
        .into_inner();
    // Registered brokers that are not fenced: a removed broker stays registered, fenced.
    let live: Vec<&pb::Broker> = cluster_view.brokers.iter().filter(|b| !b.fenced).collect();
    let brokers = live.len() as i32;
    let observed = match client
        .describe_topic(pb::DescribeTopicRequest { name: name.clone() })
        .await
    {
        Ok(t) => Some(t.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(s.into()),
    };
    let observed_plain = observed.as_ref().map(|t| ObservedTopic {
        partitions: t.partitions,
        replication_factor: uniform_replication_factor(t),
        configs: t.configs.clone().into_iter().collect(),
    });
    let actions = match plan_topic(&topic.spec, observed_plain.as_ref(), brokers) {
        Ok(a) => a,
        Err(refusal) => return not_ready(&ctx, &topic, refusal.reason(), refused_message(&refusal)).await,
    };
    for action in actions {
        match action {
            TopicAction::Create {
                partitions,
                replicas,
                configs,
            } => {
                client
                    .create_topic(pb::CreateTopicRequest {
                        name: name.clone(),
                        partitions,
                        replication_factor: replicas,
                        configs: configs.into_iter().collect(),
                        validate_only: false,
                    })
                    .await?;
                ctx.event(
                    topic.as_ref(),
                    false,
                    "Created",
                    "CreateTopic",
                    format!("created topic {name} with {partitions} partitions"),
                )
                .await;
            }
            TopicAction::GrowPartitions { to } => {
                client
                    .create_partitions(pb::CreatePartitionsRequest {
                        name: name.clone(),
                        count: to,
                        validate_only: false,
                    })
                    .await?;
                ctx.event(
                    topic.as_ref(),
                    false,
                    "PartitionsAdded",
                    "CreatePartitions",
                    format!("grew {name} to {to} partitions"),
                )
                .await;
            }
            TopicAction::ChangeReplicationFactor { to } => {
                let Some(described) = observed.as_ref() else { continue };
                let candidates: Vec<Candidate> = live
                    .iter()
                    .map(|b| Candidate {
                        id: b.id,
                        rack: b.rack.clone(),
                        load: b.replica_count.max(0) as usize,
                    })
                    .collect();
                let targets = replication_targets(
                    &admin::partition_replicas(std::slice::from_ref(described)),
                    to.max(1) as usize,
                    &candidates,
                );
                let purpose = format!("of {name} to {to} replicas");
                admin::reassign(
                    &ctx,
                    topic.as_ref(),
                    &mut client,
                    targets,
                    "ReplicationFactorChanging",
                    &purpose,
                )
                .await?;
            }
            TopicAction::AlterConfigs {
                changes,
                reverted_drift,
            } => {
                let ops = changes
                    .iter()
                    .map(|(k, v)| pb::ConfigOp {
                        name: k.clone(),
                        op: if v.is_some() {
                            pb::config_op::Op::Set as i32
                        } else {
                            pb::config_op::Op::Delete as i32
                        },
                        value: v.clone(),
                    })
                    .collect();
                client
                    .alter_topic_configs(pb::AlterTopicConfigsRequest {
                        name: name.clone(),
                        ops,
                        validate_only: false,
                    })
                    .await?;
                let (reason, warning) = if reverted_drift {
                    ("ConfigDriftReverted", true)
                } else {
                    ("ConfigUpdated", false)
                };
                let keys: Vec<&String> = changes.keys().collect();
                ctx.event(
                    topic.as_ref(),
                    warning,
                    reason,
                    "AlterConfigs",
                    format!("set topic configs {keys:?}"),
                )
                .await;
            }
        }
    }
    let now_topic = client
        .describe_topic(pb::DescribeTopicRequest { name: name.clone() })
        .await?
        .into_inner();
    let previous = topic.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    // A replication-factor change in flight: progress, and a quick look again.
    let wanted = topic.spec.replicas.max(1) as usize;
    let moving = now_topic
        .partition_states
        .iter()
        .filter(|p| p.replicas.len() != wanted || !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty())
        .count();
    let (ready, reason, message) = if moving == 0 {
        (true, "TopicReady".to_string(), "topic matches its spec".to_string())
    } else {
        (
            false,
            "Reassigning".to_string(),
            format!(
                "moving replicas to a replication factor of {wanted}: {moving} of {} partitions still moving",
                now_topic.partition_states.len()
            ),
        )
    };
    let status = TopicStatus {
        observed_generation: topic.metadata.generation,
        conditions: vec![condition(
            &previous,
            "Ready",
            ready,
            &reason,
            &message,
            topic.metadata.generation,
            now(),
        )],
        topic_id: Some(now_topic.topic_id.clone()),
        topic_name: Some(name),
        partitions: now_topic
            .partition_states
            .iter()
            .map(|p| PartitionSummary {
                partition: p.partition,
                leader: p.leader,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
                log_start_offset: p.log_start_offset,
                log_end_offset: p.log_end_offset,
                high_watermark: p.high_watermark,
            })
            .collect(),
    };
    set_status(&ctx, &topic, status).await?;
    ctx.reset_backoff(&key(topic.as_ref()));
    // Periodic re-checks catch out-of-band changes and keep the status's
    // leaders, ISRs and offsets recent; a reassignment is watched closely.
    Ok(Action::requeue(Duration::from_secs(if moving > 0 { 5 } else { 30 })))
}

/// The replication factor when every partition has it and none is moving,
/// else -1 (a change in flight, or partitions that disagree).
fn uniform_replication_factor(t: &pb::TopicDescription) -> i32 {
    let mut lens = t.partition_states.iter().map(|p| p.replicas.len());
    let first = lens.next().unwrap_or(t.replication_factor.max(0) as usize);
    let moving = t
        .partition_states
        .iter()
        .any(|p| !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty());
    if moving || lens.any(|n| n != first) {
        -1
    } else {
        first as i32
    }
}

fn refused_message(r: &Refusal) -> String {
    format!("{r}; nothing was changed")
}

async fn cleanup(topic: Arc<Topic>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = topic_name(&topic);
    if topic
        .annotations()
        .get(DELETION_POLICY_ANNOTATION)
        .is_some_and(|p| p == "retain")
    {
        ctx.event(
            topic.as_ref(),
            false,
            "Retained",
            "DeleteTopic",
            format!("kept topic {name} (deletion-policy: retain)"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let ns = topic.namespace().unwrap_or_default();
    let Some(cluster) = Api::<Cluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&topic.spec.cluster_ref)
        .await?
    else {
        ctx.event(
            topic.as_ref(),
            true,
            "ClusterGone",
            "DeleteTopic",
            format!("Cluster '{}' is gone; releasing topic {name}", topic.spec.cluster_ref),
        )
        .await;
        return Ok(Action::await_change());
    };
    // Another resource still manages this topic of this cluster: leave it. A
    // Topic of the same name in another Cluster is another topic.
    let others = Api::<Topic>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    if others.items.iter().any(|t| {
        key(t) != key(topic.as_ref())
            && t.spec.cluster_ref == topic.spec.cluster_ref
            && topic_name(t) == name
            && t.metadata.deletion_timestamp.is_none()
    }) {
        return Ok(Action::await_change());
    }
    let mut client = admin::connect(&ctx, &cluster).await?;
    match client.delete_topic(pb::DeleteTopicRequest { name: name.clone() }).await {
        Ok(_) => {
            ctx.event(
                topic.as_ref(),
                false,
                "Deleted",
                "DeleteTopic",
                format!("deleted topic {name}"),
            )
            .await
        }
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(s.into()),
    }
    Ok(Action::await_change())
}
