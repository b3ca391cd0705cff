//! KIP-890 part 1: before a partition's leader takes the first
//! transactional batch of a producer's transaction, it asks the
//! transaction's coordinator whether the partition is in that transaction
//! (AddPartitionsToTxn v4 with `verify_only`, Kafka's
//! AddPartitionsToTxnManager). A late batch of a transaction that already
//! ended (aborted by its timeout while the batch was delayed, say) is
//! refused, instead of opening a transaction no coordinator will ever end:
//! a hanging transaction that holds the last stable offset.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::{AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, ProducerId, TopicName, TransactionalId,
};

use super::coordinator::{TransactionCoordinator, TRANSACTION_STATE_TOPIC};

/// AddPartitionsToTxn v4: batched, with `verify_only` (broker to broker).
pub const VERIFY_VERSION: i16 = 4;

/// One partition's answer: None when it is in the transaction.
pub type Verified = ((String, i32), Option<ResponseError>);

impl TransactionCoordinator {
    /// The coordinator's side: whether each partition is in the ongoing
    /// transaction of `transactional_id` with this producer id and epoch.
    pub fn verify_here(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Vec<Verified> {
        let answer = |e: Option<ResponseError>| partitions.iter().cloned().map(|tp| (tp, e)).collect::<Vec<_>>();
        if let Some(e) = self.unavailable(transactional_id) {
            return answer(Some(e));
        }
        let p = self.partition_for(transactional_id) as usize;
        let shard = self.shards[p].lock();
        if !shard.loaded {
            return answer(Some(ResponseError::NotCoordinator));
        }
        let Some(m) = shard.txns.get(transactional_id) else {
            return answer(Some(ResponseError::InvalidProducerIdMapping));
        };
        partitions
            .into_iter()
            .map(|tp| {
                let e = m.verify(producer_id, epoch, &tp).err().map(|e| e.response_error());
                (tp, e)
            })
            .collect()
    }

    /// The partition's side: asks the coordinator of `transactional_id`
    /// (this broker or another) about `partitions`, and answers each as
    /// the producer's Produce response should carry it.
    pub async fn verify(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Vec<Verified> {
        let image = self.controller.image();
        let leader = image
            .topics
            .get(TRANSACTION_STATE_TOPIC)
            .and_then(|t| image.leader(t, self.partition_for(transactional_id)));
        let verified = match leader {
            Some(id) if id == self.node_id => self.verify_here(transactional_id, producer_id, epoch, partitions),
            Some(id) => match image.brokers.get(&id).map(|b| format!("{}:{}", b.host, b.port)) {
                Some(addr) => {
                    self.verify_at(id, &addr, transactional_id, producer_id, epoch, partitions)
                        .await
                }
                None => unverified(partitions, ResponseError::CoordinatorNotAvailable),
            },
            None => unverified(partitions, ResponseError::CoordinatorNotAvailable),
        };
        verified.into_iter().map(|(tp, e)| (tp, e.map(for_produce))).collect()
    }

    /// AddPartitionsToTxn v4 `verify_only` to the coordinator on broker `id`.
    async fn verify_at(
        &self,
        id: i32,
        addr: &str,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Vec<Verified> {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in &partitions {
            topics.entry(t.as_str()).or_default().push(*p);
        }
        let request =
            AddPartitionsToTxnRequest::default().with_transactions(vec![AddPartitionsToTxnTransaction::default()
                .with_transactional_id(TransactionalId(crate::api::str(transactional_id)))
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch)
                .with_verify_only(true)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            AddPartitionsToTxnTopic::default()
                                .with_name(TopicName(crate::api::str(t)))
                                .with_partitions(ps)
                        })
                        .collect(),
                )]);
        let sent = self
            .channels
            .send(id, addr, ApiKey::AddPartitionsToTxn, VERIFY_VERSION, &request)
            .await;
        let response: AddPartitionsToTxnResponse = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(coordinator = id, error = %e, "verifying a transaction failed");
                return unverified(partitions, ResponseError::CoordinatorNotAvailable);
            }
        };
        if let Some(e) = ResponseError::try_from_code(response.error_code) {
            return unverified(partitions, e);
        }
        let mut answers: BTreeMap<(String, i32), i16> = BTreeMap::new();
        for txn in response.results_by_transaction {
            for t in txn.topic_results {
                for p in t.results_by_partition {
                    answers.insert((t.name.as_str().to_string(), p.partition_index), p.partition_error_code);
                }
            }
        }
        partitions
            .into_iter()
            .map(|tp| {
                let e = match answers.get(&tp) {
                    Some(&code) => ResponseError::try_from_code(code),
                    None => Some(ResponseError::CoordinatorNotAvailable),
                };
                (tp, e)
            })
            .collect()
    }
}

fn unverified(partitions: Vec<(String, i32)>, e: ResponseError) -> Vec<Verified> {
    partitions.into_iter().map(|tp| (tp, Some(e))).collect()
}

/// A coordinator's answer as the producer sees it on its Produce request,
/// as Kafka maps it: a coordinator that cannot answer now is a retriable
/// NOT_ENOUGH_REPLICAS (Produce has no coordinator errors), fencing is
/// INVALID_PRODUCER_EPOCH.
fn for_produce(e: ResponseError) -> ResponseError {
    match e {
        ResponseError::CoordinatorNotAvailable
        | ResponseError::NotCoordinator
        | ResponseError::CoordinatorLoadInProgress
        | ResponseError::ConcurrentTransactions => ResponseError::NotEnoughReplicas,
        ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
        other => other,
    }
}
