//! ElectLeaders (KIP-460): preferred leader election on request, as Kafka's
//! `kafka-leader-election.sh --election-type preferred` asks for it.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};

use super::{str, Apis};
use crate::controller::ControllerOp;

const PREFERRED: i8 = 0;

pub async fn handle(apis: &Apis, request: ElectLeadersRequest) -> ElectLeadersResponse {
    let image = apis.controller.image();
    let wanted: Vec<(String, i32)> = match &request.topic_partitions {
        Some(topics) => topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.as_str().to_string(), *p)))
            .collect(),
        // Null: every partition of the cluster.
        None => image
            .topics
            .values()
            .flat_map(|t| (0..t.partitions).map(|p| (t.name.clone(), p)))
            .collect(),
    };
    // Each partition's answer; those that can move are elected together.
    let mut results: BTreeMap<(String, i32), (i16, Option<String>)> = BTreeMap::new();
    let mut eligible = Vec::new();
    for (topic, p) in wanted {
        let outcome = match (image.topics.get(&topic), request.election_type) {
            (None, _) => Some(ResponseError::UnknownTopicOrPartition),
            (Some(t), _) if !(0..t.partitions).contains(&p) => Some(ResponseError::UnknownTopicOrPartition),
            (Some(t), PREFERRED) => {
                let preferred = t.replicas(p).first().copied();
                let state = t.state(p);
                match (preferred, state) {
                    (Some(r), Some(s)) if s.leader == r => Some(ResponseError::ElectionNotNeeded),
                    (Some(r), Some(s)) if image.is_live(r) && s.isr.contains(&r) => None,
                    _ => Some(ResponseError::PreferredLeaderNotAvailable),
                }
            }
            // Unclean election on request: only offline partitions would need
            // it, and the controller keeps them for their last in-sync replica.
            (Some(t), _) => Some(match t.state(p).and_then(|s| s.leader()) {
                Some(_) => ResponseError::ElectionNotNeeded,
                None => ResponseError::EligibleLeadersNotAvailable,
            }),
        };
        match outcome {
            Some(e) => {
                results.insert((topic, p), (e.code(), Some(format!("{e:?}"))));
            }
            None => eligible.push((topic, p)),
        }
    }
    if !eligible.is_empty() {
        let op = ControllerOp::ElectPreferredLeaders {
            partitions: Some(eligible.clone()),
        };
        let failed = apis.controller.execute(op).await.err();
        for tp in eligible {
            let answer = failed.as_ref().map_or((0, None), |e| (e.code(), Some(e.to_string())));
            results.insert(tp, answer);
        }
    }
    let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
    for ((topic, partition), (code, message)) in results {
        by_topic.entry(topic).or_default().push(
            PartitionResult::default()
                .with_partition_id(partition)
                .with_error_code(code)
                .with_error_message(message.map(str)),
        );
    }
    ElectLeadersResponse::default().with_replica_election_results(
        by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                ReplicaElectionResult::default()
                    .with_topic(TopicName(str(topic)))
                    .with_partition_result(partitions)
            })
            .collect(),
    )
}
