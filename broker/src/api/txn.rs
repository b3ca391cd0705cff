//! The transactional APIs a producer and the admin tools use:
//! AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and TxnOffsetCommit (to the
//! transaction's or the group's coordinator), DescribeTransactions,
//! ListTransactions, and DescribeProducers (to a partition's leader).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    describe_producers_response, describe_transactions_response, list_transactions_response, AddOffsetsToTxnRequest,
    AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, DescribeProducersRequest,
    DescribeProducersResponse, DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest,
    EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId, TopicName, TransactionalId,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};

use super::{str, Apis};
use crate::error::fenced_for_version;
use crate::group::coordinator::CommitRequest;

/// AddPartitionsToTxn, AddOffsetsToTxn and EndTxn answer PRODUCER_FENCED
/// from v2, TxnOffsetCommit from v3 (KIP-588).
const FENCED_FROM: i16 = 2;
const TXN_OFFSET_COMMIT_FENCED_FROM: i16 = 3;

/// AddPartitionsToTxn: up to v3 one producer's partitions (clients); from
/// v4 batched by transactional id, with `verify_only` for a partition
/// leader's KIP-890 verification (broker to broker).
pub async fn add_partitions(apis: &Apis, r: AddPartitionsToTxnRequest, version: i16) -> AddPartitionsToTxnResponse {
    let partitions_of = |topics: &[AddPartitionsToTxnTopic]| -> Vec<(String, i32)> {
        topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.name.as_str().to_string(), *p)))
            .collect()
    };
    if version >= 4 {
        let mut results = Vec::new();
        for txn in r.transactions {
            let (id, producer_id, epoch) = (txn.transactional_id.as_str(), txn.producer_id.0, txn.producer_epoch);
            let partitions = partitions_of(&txn.topics);
            let codes: Vec<((String, i32), i16)> = if txn.verify_only {
                apis.txns
                    .verify_here(id, producer_id, epoch, partitions)
                    .into_iter()
                    .map(|(tp, e)| (tp, e.map_or(0, |e| e.code())))
                    .collect()
            } else {
                apis.txns.add_partitions(id, producer_id, epoch, partitions).await
            };
            results.push(
                AddPartitionsToTxnResult::default()
                    .with_transactional_id(txn.transactional_id)
                    .with_topic_results(topic_results(codes)),
            );
        }
        return AddPartitionsToTxnResponse::default().with_results_by_transaction(results);
    }
    let results = apis
        .txns
        .add_partitions(
            r.v3_and_below_transactional_id.as_str(),
            r.v3_and_below_producer_id.0,
            r.v3_and_below_producer_epoch,
            partitions_of(&r.v3_and_below_topics),
        )
        .await
        .into_iter()
        .map(|(tp, code)| match ResponseError::try_from_code(code) {
            Some(e) => (tp, fenced_for_version(e, version, FENCED_FROM).code()),
            None => (tp, code),
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topic_results(results))
}

/// Per-partition codes grouped by topic, in their order.
fn topic_results(results: Vec<((String, i32), i16)>) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut topics: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for ((topic, partition), code) in results {
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(partition)
            .with_partition_error_code(code);
        match topics.last_mut() {
            Some(t) if t.name.as_str() == topic => t.results_by_partition.push(result),
            _ => topics.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(TopicName(str(topic)))
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    topics
}

pub async fn add_offsets(apis: &Apis, r: AddOffsetsToTxnRequest, version: i16) -> AddOffsetsToTxnResponse {
    let result = apis
        .txns
        .add_offsets(
            r.transactional_id.as_str(),
            r.producer_id.0,
            r.producer_epoch,
            r.group_id.as_str(),
        )
        .await;
    let code = result
        .err()
        .map_or(0, |e| fenced_for_version(e, version, FENCED_FROM).code());
    tracing::debug!(
        transactional_id = r.transactional_id.as_str(),
        group = r.group_id.as_str(),
        code,
        "AddOffsetsToTxn"
    );
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

pub async fn end(apis: &Apis, r: EndTxnRequest, version: i16) -> EndTxnResponse {
    let result = apis
        .txns
        .end_txn(
            r.transactional_id.as_str(),
            r.producer_id.0,
            r.producer_epoch,
            r.committed,
        )
        .await;
    let code = result
        .err()
        .map_or(0, |e| fenced_for_version(e, version, FENCED_FROM).code());
    EndTxnResponse::default().with_error_code(code)
}

/// TxnOffsetCommit goes to the group's coordinator, like OffsetCommit.
pub async fn offset_commit(apis: &Apis, r: TxnOffsetCommitRequest, version: i16) -> TxnOffsetCommitResponse {
    let offsets: Vec<CommitRequest> = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| CommitRequest {
                topic: t.name.as_str().to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.as_str().to_string()),
            })
        })
        .collect();
    let results = apis
        .groups
        .txn_commit(
            r.group_id.as_str(),
            r.producer_id.0,
            r.producer_epoch,
            r.member_id.as_str(),
            r.group_instance_id.as_ref().map(|i| i.as_str()),
            r.generation_id,
            offsets,
        )
        .await;
    tracing::debug!(group = r.group_id.as_str(), producer_id = r.producer_id.0, codes = ?results.iter().map(|r| r.2).collect::<Vec<_>>(), "TxnOffsetCommit");
    let mut topics: Vec<TxnOffsetCommitResponseTopic> = Vec::new();
    for (topic, partition, code) in results {
        let code = match ResponseError::try_from_code(code) {
            Some(e) => fenced_for_version(e, version, TXN_OFFSET_COMMIT_FENCED_FROM).code(),
            None => code,
        };
        let result = TxnOffsetCommitResponsePartition::default()
            .with_partition_index(partition)
            .with_error_code(code);
        match topics.last_mut() {
            Some(t) if t.name.as_str() == topic => t.partitions.push(result),
            _ => topics.push(
                TxnOffsetCommitResponseTopic::default()
                    .with_name(TopicName(str(topic)))
                    .with_partitions(vec![result]),
            ),
        }
    }
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub fn describe(apis: &Apis, r: DescribeTransactionsRequest) -> DescribeTransactionsResponse {
    let states = r
        .transactional_ids
        .into_iter()
        .map(|id| {
            let state = describe_transactions_response::TransactionState::default();
            match apis.txns.describe(id.as_str()) {
                Ok(m) => {
                    let mut topics: Vec<describe_transactions_response::TopicData> = Vec::new();
                    for (topic, partition) in &m.partitions {
                        match topics.last_mut() {
                            Some(t) if t.topic.as_str() == topic => t.partitions.push(*partition),
                            _ => topics.push(
                                describe_transactions_response::TopicData::default()
                                    .with_topic(TopicName(str(topic.clone())))
                                    .with_partitions(vec![*partition]),
                            ),
                        }
                    }
                    state
                        .with_transactional_id(id)
                        .with_transaction_state(str(m.state.name()))
                        .with_transaction_timeout_ms(m.timeout_ms)
                        .with_transaction_start_time_ms(m.started_ms)
                        .with_producer_id(ProducerId(m.producer_id))
                        .with_producer_epoch(m.producer_epoch)
                        .with_topics(topics)
                }
                Err(e) => state
                    .with_transactional_id(id)
                    .with_error_code(e.code())
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

pub fn list(apis: &Apis, r: ListTransactionsRequest) -> ListTransactionsResponse {
    let states: Vec<String> = r.state_filters.iter().map(|s| s.as_str().to_string()).collect();
    let producer_ids: Vec<i64> = r.producer_id_filters.iter().map(|p| p.0).collect();
    let (found, unknown) = apis.txns.list(&states, &producer_ids);
    let now = crate::log::segment::now_ms();
    let listed = found
        .into_iter()
        // v1: only transactions running longer than the duration filter (-1: all).
        .filter(|t| {
            r.duration_filter < 0 || (t.metadata.started_ms >= 0 && now - t.metadata.started_ms > r.duration_filter)
        })
        .map(|t| {
            list_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(str(t.transactional_id)))
                .with_producer_id(ProducerId(t.metadata.producer_id))
                .with_transaction_state(str(t.metadata.state.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_transaction_states(listed)
        .with_unknown_state_filters(unknown.into_iter().map(str).collect())
}

pub fn describe_producers(apis: &Apis, r: DescribeProducersRequest) -> DescribeProducersResponse {
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&p| {
                    let answer = describe_producers_response::PartitionResponse::default().with_partition_index(p);
                    match apis.replicas.get(t.name.as_str(), p) {
                        Ok(part) => answer.with_active_producers(
                            part.producers()
                                .into_iter()
                                .map(|a| {
                                    describe_producers_response::ProducerState::default()
                                        .with_producer_id(ProducerId(a.producer_id))
                                        .with_producer_epoch(a.epoch.into())
                                        .with_last_sequence(a.last_sequence)
                                        .with_last_timestamp(a.last_timestamp)
                                        .with_coordinator_epoch(a.coordinator_epoch)
                                        .with_current_txn_start_offset(a.txn_first_offset.unwrap_or(-1))
                                })
                                .collect(),
                        ),
                        Err(e) => answer
                            .with_error_code(e.code())
                            .with_error_message(Some(str(e.to_string()))),
                    }
                })
                .collect();
            describe_producers_response::TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
