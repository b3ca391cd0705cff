//! ConsumerGroup -> status (state, members, per-partition lag) refreshed on an
//! interval, and offset resets run once per requestId while the group is empty.

use std::sync::Arc;
use std::time::Duration;

use fjord_crds::{Cluster, ConsumerGroup, ConsumerGroupStatus, GroupPartitionStatus, ResetTo};
use fjord_proto::admin::v1 as pb;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{key, now, paused, write_status, Timer};
use crate::plan::{condition, group_ready, reset_decision, ResetDecision, ResetOutcome};
use crate::{admin, Context, Error};

/// How often lag is refreshed.
pub const REFRESH: Duration = Duration::from_secs(15);
/// Status fields that move with every produce and commit: written at most once a REFRESH.
const COUNTERS: &[&str] = &["lastUpdate", "totalLag", "lag", "committedOffset", "logEndOffset"];

pub async fn reconcile(group: Arc<ConsumerGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = Timer::start("consumergroup", &ctx);
    if paused(group.as_ref()) {
        return Ok(Action::await_change());
    }
    let ns = group.namespace().unwrap_or_default();
    let previous = group.status.clone().unwrap_or_default();
    let Some(cluster) = Api::<Cluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&group.spec.cluster_ref)
        .await?
    else {
        let status = ConsumerGroupStatus {
            observed_generation: group.metadata.generation,
            conditions: vec![condition(
                &previous.conditions,
                "Ready",
                false,
                "ClusterNotFound",
                &format!("Cluster '{}' does not exist", group.spec.cluster_ref),
                group.metadata.generation,
                now(),
            )],
            ..previous
        };
        write_status(&ctx, group.as_ref(), group.status.as_ref(), &status, COUNTERS, REFRESH).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    let mut client = admin::connect(&ctx, &cluster).await?;
    let mut described = client
        .describe_group(pb::DescribeGroupRequest {
            group_id: group.spec.group_id.clone(),
        })
        .await?
        .into_inner();
    let mut status = previous.clone();
    let mut conditions = Vec::new();
    let mut reset_condition = None;
    let mut requeue = REFRESH;
    match reset_decision(&group.spec, group.status.as_ref(), described.members.len() as i32) {
        // Done, or nothing asked: the last reset's condition stays while its request does.
        ResetDecision::None => {
            if group.spec.offset_reset.is_some() {
                reset_condition = previous.conditions.iter().find(|c| c.type_ == "OffsetReset").cloned();
            }
        }
        ResetDecision::WaitForEmptyGroup { members } => conditions.push(condition(
            &previous.conditions,
            "OffsetResetPending",
            false,
            "GroupNotEmpty",
            &format!("the group has {members} members; the reset runs once it is empty"),
            group.metadata.generation,
            now(),
        )),
        ResetDecision::Run => {
            let reset = group.spec.offset_reset.clone().expect("decided to run a reset");
            let (to, value) = match reset.to {
                ResetTo::Earliest => (pb::reset_group_offsets_request::To::Earliest, 0),
                ResetTo::Latest => (pb::reset_group_offsets_request::To::Latest, 0),
                ResetTo::Timestamp => (
                    pb::reset_group_offsets_request::To::Timestamp,
                    reset.timestamp.unwrap_or(0),
                ),
                ResetTo::Offset => (pb::reset_group_offsets_request::To::Offset, reset.offset.unwrap_or(0)),
            };
            let request = pb::ResetGroupOffsetsRequest {
                group_id: group.spec.group_id.clone(),
                to: to as i32,
                topics: reset.topics.clone(),
                value,
            };
            let outcome = match client.reset_group_offsets(request).await {
                Ok(d) => {
                    described = d.into_inner();
                    ResetOutcome::Done(format!("reset {:?} to {:?}", reset.topics, reset.to))
                }
                // The group gained members meanwhile: the next pass reports it waiting.
                Err(s)
                    if s.code() == tonic::Code::FailedPrecondition
                        && s.details() == fjord_proto::reason::GROUP_NOT_EMPTY =>
                {
                    return Ok(Action::requeue(Duration::from_secs(5)));
                }
                Err(s) if s.code() == tonic::Code::Unavailable => ResetOutcome::Retrying(s.message().to_string()),
                Err(s) => ResetOutcome::Failed(s.message().to_string()),
            };
            let (ok, reason, message) = outcome.condition();
            let was = previous.conditions.iter().find(|c| c.type_ == "OffsetReset");
            // One event per outcome, not one per retry.
            if was.is_none_or(|c| c.reason != reason || c.message != message) {
                ctx.event(
                    group.as_ref(),
                    !ok,
                    if ok { "OffsetReset" } else { "OffsetResetFailed" },
                    "ResetOffsets",
                    message.to_string(),
                )
                .await;
            }
            match &outcome {
                ResetOutcome::Retrying(_) => requeue = Duration::from_secs(5),
                ResetOutcome::Done(m) | ResetOutcome::Failed(m) => {
                    status.last_reset_request_id = Some(reset.request_id.clone());
                    status.last_reset_outcome = Some(if ok { m.clone() } else { format!("failed: {m}") });
                }
            }
            reset_condition = Some(condition(
                &previous.conditions,
                "OffsetReset",
                ok,
                reason,
                message,
                group.metadata.generation,
                now(),
            ));
        }
    }
    status.observed_generation = group.metadata.generation;
    status.state = Some(described.state.clone());
    status.members = described.members.len() as i32;
    status.total_lag = described.total_lag;
    status.partitions = described
        .offsets
        .iter()
        .map(|o| GroupPartitionStatus {
            topic: o.topic.clone(),
            partition: o.partition,
            committed_offset: o.committed_offset,
            log_end_offset: o.log_end_offset,
            lag: o.lag,
        })
        .collect();
    status.last_update = Some(now().0.to_string());
    let (ready, reason, message) = group_ready(reset_condition.as_ref());
    conditions.insert(
        0,
        condition(
            &previous.conditions,
            "Ready",
            ready,
            &reason,
            &message,
            group.metadata.generation,
            now(),
        ),
    );
    conditions.extend(reset_condition);
    status.conditions = conditions;
    write_status(&ctx, group.as_ref(), group.status.as_ref(), &status, COUNTERS, REFRESH).await?;
    ctx.reset_backoff(&key(group.as_ref()));
    Ok(Action::requeue(requeue))
}
