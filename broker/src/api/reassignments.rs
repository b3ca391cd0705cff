//! AlterPartitionReassignments and ListPartitionReassignments (KIP-455), as
//! Kafka's `kafka-reassign-partitions.sh` and Admin client use them.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};

use super::{str, Apis};

fn brokers(ids: Vec<i32>) -> Vec<BrokerId> {
    ids.into_iter().map(BrokerId).collect()
}

pub async fn alter(
    apis: &Apis,
    request: AlterPartitionReassignmentsRequest,
    version: i16,
) -> AlterPartitionReassignmentsResponse {
    let changes: Vec<(String, i32, Option<Vec<i32>>)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                let target = p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect());
                (t.name.as_str().to_string(), p.partition_index, target)
            })
        })
        .collect();
    // KIP-860: from v1 a client may forbid changing the replication factor.
    let allow_rf_change = version < 1 || request.allow_replication_factor_change;
    let outcome = apis.controller.alter_reassignments(changes, allow_rf_change).await;
    let mut results = match outcome {
        Ok(results) => results.into_iter(),
        Err(e) => {
            return AlterPartitionReassignmentsResponse::default()
                .with_error_code(e.code())
                .with_error_message(Some(str(e.to_string())));
        }
    };
    let responses = request
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let answer = ReassignablePartitionResponse::default().with_partition_index(p.partition_index);
                    match results.next() {
                        Some(Ok(())) => answer,
                        Some(Err(e)) => answer
                            .with_error_code(e.code())
                            .with_error_message(Some(str(e.to_string()))),
                        None => answer.with_error_code(ResponseError::UnknownServerError.code()),
                    }
                })
                .collect();
            ReassignableTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(allow_rf_change)
        .with_responses(responses)
}

/// The reassignments in progress: all, or those of the named partitions.
pub fn list(apis: &Apis, request: ListPartitionReassignmentsRequest) -> ListPartitionReassignmentsResponse {
    let image = apis.controller.image();
    let wanted = |topic: &str, partition: i32| match &request.topics {
        None => true,
        Some(topics) => topics
            .iter()
            .any(|t| t.name.as_str() == topic && t.partition_indexes.contains(&partition)),
    };
    let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
    for (topic, partition, r) in image.reassignments() {
        if !wanted(topic, partition) {
            continue;
        }
        let ongoing = OngoingPartitionReassignment::default()
            .with_partition_index(partition)
            .with_replicas(brokers(r.replicas()))
            .with_adding_replicas(brokers(r.adding()))
            .with_removing_replicas(brokers(r.removing()));
        match topics.last_mut().filter(|t| t.name.as_str() == topic) {
            Some(t) => t.partitions.push(ongoing),
            None => topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(str(topic)))
                    .with_partitions(vec![ongoing]),
            ),
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
