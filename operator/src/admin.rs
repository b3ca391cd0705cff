//! The operator's client of the brokers' admin gRPC API.

use std::time::Duration;

use fjord_crds::Cluster;
use fjord_proto::admin::v1 as pb;
use fjord_proto::admin::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

use crate::{desired, Context, Error};

pub type Admin = AdminClient<Channel>;

/// Connects to a cluster's admin API (or the configured override).
pub async fn connect(ctx: &Context, cluster: &Cluster) -> Result<Admin, Error> {
    let endpoint = ctx
        .config
        .admin_endpoint_override
        .clone()
        .unwrap_or_else(|| desired::admin_endpoint(cluster));
    let unreachable = |reason: String| Error::Unreachable {
        endpoint: endpoint.clone(),
        reason,
    };
    let channel = Endpoint::from_shared(endpoint.clone())
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(AdminClient::new(channel))
}

/// Starts reassignments (topic, partition, target replicas) and reports them
/// on `obj` as one event: "moving N partitions {purpose}", a warning naming
/// the refused ones if any. Returns how many it asked for.
pub async fn reassign<K: kube::Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    client: &mut Admin,
    moves: Vec<(String, i32, Vec<i32>)>,
    reason: &str,
    purpose: &str,
) -> Result<usize, Error> {
    let count = moves.len();
    if count == 0 {
        return Ok(0);
    }
    let reassignments = moves
        .into_iter()
        .map(|(topic, partition, target_replicas)| pb::PartitionReassignment {
            topic,
            partition,
            target_replicas,
            cancel: false,
        })
        .collect();
    let answer = client
        .alter_partition_reassignments(pb::AlterPartitionReassignmentsRequest { reassignments })
        .await?
        .into_inner();
    let refused: Vec<String> = answer
        .results
        .into_iter()
        .filter(|r| !r.error.is_empty())
        .map(|r| format!("{}-{}: {}", r.topic, r.partition, r.error))
        .collect();
    let mut note = format!("moving {count} partitions {purpose}");
    if !refused.is_empty() {
        note.push_str(&format!("; refused: {}", refused.join("; ")));
    }
    ctx.event(obj, !refused.is_empty(), reason, "Reassign", note).await;
    Ok(count)
}

/// Every partition's replicas, as the pure plans (scale, placement) take them.
pub fn partition_replicas(topics: &[pb::TopicDescription]) -> Vec<crate::scale::PartitionReplicas> {
    topics
        .iter()
        .flat_map(|t| {
            t.partition_states.iter().map(|p| crate::scale::PartitionReplicas {
                topic: t.name.clone(),
                partition: p.partition,
                replicas: p.replicas.clone(),
                moving: !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty(),
            })
        })
        .collect()
}
