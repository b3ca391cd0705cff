//! The transaction coordinator: each transactional id's state, kept in the
//! compacted `__transaction_state` topic (partition
//! `abs(hash(transactional.id)) % transaction.state.log.num.partitions`,
//! Kafka's mapping) and served by the leader of that partition.
//!
//! Every state change is appended to the id's partition and replicated to
//! its ISR before it is answered or acted on (Kafka's TransactionStateManager
//! appends with acks=all), so a coordinator failover loses nothing a producer
//! was told. While a write is in flight the id takes no other request
//! (CONCURRENT_TRANSACTIONS: the client retries). The decisions are the pure
//! transitions of [`super::metadata`]; this file routes requests to the
//! shard of their partition and writes the states; [`super::loading`] loads
//! shards as leadership moves and [`super::markers`] ends transactions in
//! their partitions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::records::{Compression, Record};
use parking_lot::Mutex;

use super::markers::PEER_TIMEOUT;
use super::metadata::{EndOutcome, InitOutcome, TxnMetadata, TxnState};
use super::records;
use crate::broker_client::BrokerChannels;
use crate::config::BrokerConfig;
use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::group::records::partition_for;
use crate::group::{GroupCoordinator, OFFSETS_TOPIC};
use crate::log::segment::now_ms;
use crate::log::{batch, AppendOrigin};
use crate::replica::{Partition, ReplicaManager};

pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// How long a state write waits for the ISR before the client is told to
/// retry (COORDINATOR_NOT_AVAILABLE), as a group commit does.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long EndTxn waits for the markers before answering (see `end_txn`).
const END_TXN_COMPLETION_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct TxnConfig {
    pub state_partitions: i32,
    pub state_replication_factor: i16,
    pub state_min_isr: i32,
    pub state_segment_bytes: i32,
    /// transaction.max.timeout.ms
    pub max_timeout_ms: i32,
    /// How often transactions open past their timeout are looked for.
    pub abort_check_interval: Duration,
    /// transactional.id.expiration.ms
    pub id_expiration_ms: i64,
    /// How often expired transactional ids are looked for.
    pub id_expiration_check_interval: Duration,
}

impl TxnConfig {
    pub fn from_broker(c: &BrokerConfig) -> TxnConfig {
        TxnConfig {
            state_partitions: c.transaction_state_log_num_partitions.max(1),
            state_replication_factor: c.transaction_state_log_replication_factor.clamp(1, i16::MAX.into()) as i16,
            state_min_isr: c.transaction_state_log_min_isr.max(1),
            state_segment_bytes: c.transaction_state_log_segment_bytes,
            max_timeout_ms: c.transaction_max_timeout_ms,
            abort_check_interval: Duration::from_millis(
                c.transaction_abort_timed_out_transaction_cleanup_interval_ms.max(1) as u64,
            ),
            id_expiration_ms: c.transactional_id_expiration_ms.max(1),
            id_expiration_check_interval: Duration::from_millis(
                c.transaction_remove_expired_transaction_cleanup_interval_ms.max(1) as u64,
            ),
        }
    }
}

/// The transactional ids of one `__transaction_state` partition.
#[derive(Default)]
pub(super) struct Shard {
    /// This broker leads the partition and its records were read.
    pub(super) loaded: bool,
    /// The partition's leader epoch when it was loaded: the coordinator
    /// epoch the markers carry, so partitions refuse a deposed coordinator's.
    pub(super) epoch: i32,
    pub(super) txns: HashMap<String, TxnMetadata>,
    /// Ids with a state write in flight (Kafka's pending state).
    pub(super) writing: HashSet<String>,
    /// Ids whose markers are being written.
    pub(super) completing: HashSet<String>,
}

pub struct TransactionCoordinator {
    pub(super) config: TxnConfig,
    pub(super) node_id: i32,
    pub(super) controller: Arc<Controller>,
    pub(super) replicas: Arc<ReplicaManager>,
    pub(super) groups: Arc<GroupCoordinator>,
    pub(super) shards: Vec<Mutex<Shard>>,
    /// Connections to other brokers, for markers and verifications.
    pub(super) channels: BrokerChannels,
}

/// What a state write puts in `__transaction_state`.
enum StateWrite {
    Put(TxnMetadata),
    /// The id is forgotten.
    Tombstone,
}

/// What DescribeTransactions and ListTransactions show of one id.
pub struct TxnDescription {
    pub transactional_id: String,
    pub metadata: TxnMetadata,
}

impl TxnState {
    /// Kafka's name of the state (ListTransactions, DescribeTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }
}

impl TransactionCoordinator {
    pub fn new(
        config: TxnConfig,
        node_id: i32,
        controller: Arc<Controller>,
        replicas: Arc<ReplicaManager>,
        groups: Arc<GroupCoordinator>,
    ) -> TransactionCoordinator {
        let shards = (0..config.state_partitions)
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        TransactionCoordinator {
            config,
            node_id,
            controller,
            replicas,
            groups,
            shards,
            channels: BrokerChannels::new("fjord-txn-coordinator", PEER_TIMEOUT),
        }
    }

    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    pub fn partition_for(&self, transactional_id: &str) -> i32 {
        partition_for(transactional_id, self.config.state_partitions)
    }

    /// Why this broker cannot coordinate `transactional_id` now: the topic
    /// does not exist yet (COORDINATOR_NOT_AVAILABLE), its partition is
    /// still loading here (COORDINATOR_LOAD_IN_PROGRESS), or another broker
    /// leads it (NOT_COORDINATOR: the client looks the coordinator up again).
    pub fn unavailable(&self, transactional_id: &str) -> Option<ResponseError> {
        let image = self.controller.image();
        let Some(topic) = image.topics.get(TRANSACTION_STATE_TOPIC) else {
            return Some(ResponseError::CoordinatorNotAvailable);
        };
        let p = self.partition_for(transactional_id);
        match self.replicas.get(TRANSACTION_STATE_TOPIC, p) {
            Ok(_) if self.shards[p as usize].lock().loaded => None,
            Ok(_) => Some(ResponseError::CoordinatorLoadInProgress),
            Err(_) if image.leader(topic, p) == Some(self.node_id) => Some(ResponseError::CoordinatorLoadInProgress),
            Err(_) => Some(ResponseError::NotCoordinator),
        }
    }

    /// Creates `__transaction_state` (compacted) on first use, as Kafka
    /// does on a transactional FindCoordinator.
    pub async fn ensure_state_topic(&self) -> Result<()> {
        if self.controller.image().topics.contains_key(TRANSACTION_STATE_TOPIC) {
            return Ok(());
        }
        let live = self.controller.image().live_broker_count();
        let rf = self.config.state_replication_factor.min(live as i16);
        let configs = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("segment.bytes".to_string(), self.config.state_segment_bytes.to_string()),
            (
                "min.insync.replicas".to_string(),
                self.config.state_min_isr.min(i32::from(rf)).to_string(),
            ),
        ]);
        match self
            .controller
            .create_topic(
                TRANSACTION_STATE_TOPIC,
                self.config.state_partitions,
                rf,
                configs,
                None,
                false,
            )
            .await
        {
            Ok(_) => {
                tracing::info!(
                    partitions = self.config.state_partitions,
                    "created {TRANSACTION_STATE_TOPIC}"
                );
                Ok(())
            }
            Err(Error::TopicAlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One state change of `transactional_id`: `decide` sees the current
    /// state (None for an id not seen before) and answers the next state to
    /// write (None: nothing to write) and the answer. The next state is
    /// appended to the id's partition and installed once its ISR has it.
    pub(super) async fn transition<T>(
        &self,
        transactional_id: &str,
        decide: impl FnOnce(Option<&TxnMetadata>) -> Result<(Option<TxnMetadata>, T), ResponseError>,
    ) -> Result<T, ResponseError> {
        self.write_state(transactional_id, |current| {
            decide(current).map(|(next, answer)| (next.map(StateWrite::Put), answer))
        })
        .await
    }

    /// Forgets a transactional id with a tombstone, if `still` holds of its
    /// state when the write starts.
    async fn remove(
        &self,
        transactional_id: &str,
        still: impl FnOnce(&TxnMetadata) -> bool,
    ) -> Result<bool, ResponseError> {
        self.write_state(transactional_id, |current| match current {
            Some(m) if still(m) => Ok((Some(StateWrite::Tombstone), true)),
            _ => Ok((None, false)),
        })
        .await
    }

    /// [`Self::transition`], for a state or a tombstone.
    async fn write_state<T>(
        &self,
        transactional_id: &str,
        decide: impl FnOnce(Option<&TxnMetadata>) -> Result<(Option<StateWrite>, T), ResponseError>,
    ) -> Result<T, ResponseError> {
        if let Some(e) = self.unavailable(transactional_id) {
            return Err(e);
        }
        let p = self.partition_for(transactional_id);
        let (part, next, answer, record_offset, leader_epoch, coordinator_epoch) = {
            let mut shard = self.shards[p as usize].lock();
            if !shard.loaded {
                return Err(ResponseError::NotCoordinator);
            }
            if shard.writing.contains(transactional_id) {
                return Err(ResponseError::ConcurrentTransactions);
            }
            let (next, answer) = decide(shard.txns.get(transactional_id))?;
            let Some(next) = next else {
                return Ok(answer);
            };
            let part = self
                .replicas
                .get(TRANSACTION_STATE_TOPIC, p)
                .map_err(|_| ResponseError::NotCoordinator)?;
            let value = match &next {
                StateWrite::Put(m) => Some(m),
                StateWrite::Tombstone => None,
            };
            let (record_offset, leader_epoch) = self.append(&part, transactional_id, value).map_err(|e| {
                tracing::warn!(transactional_id, error = %e, "writing transaction state failed");
                e.coordinator_write_error()
            })?;
            shard.writing.insert(transactional_id.to_string());
            (part, next, answer, record_offset, leader_epoch, shard.epoch)
        };
        let replicated =
            tokio::time::timeout(WRITE_TIMEOUT, part.wait_for_high_watermark(record_offset, leader_epoch)).await;
        let mut shard = self.shards[p as usize].lock();
        shard.writing.remove(transactional_id);
        match replicated {
            Ok(Ok(())) if shard.loaded && shard.epoch == coordinator_epoch => {
                match next {
                    StateWrite::Put(m) => shard.txns.insert(transactional_id.to_string(), m),
                    StateWrite::Tombstone => shard.txns.remove(transactional_id),
                };
                Ok(answer)
            }
            // Not replicated in time: the client retries; if the record makes it
            // after all, the next load of the partition finds it.
            Err(_) => Err(ResponseError::CoordinatorNotAvailable),
            _ => Err(ResponseError::NotCoordinator),
        }
    }

    /// Appends one state record (None: a tombstone); answers its offset and
    /// the leader epoch.
    fn append(&self, part: &Partition, transactional_id: &str, m: Option<&TxnMetadata>) -> Result<(i64, i32)> {
        let key = records::encode_key(transactional_id)?;
        let value = m.map(records::encode_value).transpose()?;
        let mut recs: Vec<Record> = vec![batch::plain_record(0, now_ms(), Some(key), value)];
        let batch = batch::encode_records(&mut recs, Compression::None, -1, -1, -1).map_err(Error::CorruptMessage)?;
        crate::blocking::blocking(|| {
            let (info, epoch) = part.append_from(&batch, -1, AppendOrigin::Coordinator)?;
            if info.flush_due {
                part.flush()?;
            }
            Ok((info.last_offset, epoch))
        })
    }

    /// A producer id from the controller, for a new transactional id or one
    /// whose epochs ran out.
    async fn new_producer_id(&self) -> Result<i64, ResponseError> {
        self.controller.allocate_producer_id().await.map_err(|e| {
            tracing::warn!(error = %e, "allocating a producer id failed");
            ResponseError::CoordinatorNotAvailable
        })
    }

    /// Whether `transactional_id` needs a new producer id on its next bump.
    fn needs_new_producer_id(&self, transactional_id: &str) -> bool {
        let p = self.partition_for(transactional_id);
        self.shards[p as usize]
            .lock()
            .txns
            .get(transactional_id)
            .is_none_or(|m| m.producer_epoch >= i16::MAX - 1)
    }

    /// InitProducerId with a transactional id: the producer's id and a
    /// bumped epoch, which fences every older incarnation. A transaction
    /// the previous incarnation left open is aborted first, and the client
    /// told CONCURRENT_TRANSACTIONS until that is done (it retries). With
    /// KIP-360's `expected` (id, epoch), a producer resumes after an error.
    pub async fn init_producer_id(
        self: &Arc<Self>,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        if transactional_id.is_empty() {
            return Err(ResponseError::InvalidRequest);
        }
        if let Some(e) = self.unavailable(transactional_id) {
            return Err(e);
        }
        let new_producer_id = if self.needs_new_producer_id(transactional_id) {
            self.new_producer_id().await?
        } else {
            -1
        };
        let max_timeout_ms = self.config.max_timeout_ms;
        let now = now_ms();
        let (m, abort_first) = self
            .transition(transactional_id, |current| {
                let exhausted = current.is_none_or(|m| m.producer_epoch >= i16::MAX - 1);
                if exhausted && new_producer_id < 0 {
                    // Raced with another init of the id: the client retries.
                    return Err(ResponseError::ConcurrentTransactions);
                }
                match TxnMetadata::init(current, timeout_ms, max_timeout_ms, new_producer_id, expected, now) {
                    Ok(InitOutcome::Ready(m)) => Ok((Some(m.clone()), (m, false))),
                    Ok(InitOutcome::AbortFirst(m)) => Ok((Some(m.clone()), (m, true))),
                    Err(e) => Err(e.response_error()),
                }
            })
            .await?;
        if abort_first {
            tracing::info!(
                transactional_id,
                producer_id = m.producer_id,
                epoch = m.producer_epoch,
                "a new incarnation aborts the open transaction of the previous one"
            );
            self.spawn_completion(transactional_id);
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok((m.producer_id, m.producer_epoch))
    }

    /// AddPartitionsToTxn: the partitions join the producer's transaction;
    /// each partition's error code. A partition the cluster does not have
    /// fails the request (UNKNOWN_TOPIC_OR_PARTITION for it,
    /// OPERATION_NOT_ATTEMPTED for the others, as Kafka answers).
    pub async fn add_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Vec<((String, i32), i16)> {
        let image = self.controller.image();
        let known = |(t, p): &(String, i32)| image.topics.get(t).is_some_and(|ti| (0..ti.partitions).contains(p));
        if !partitions.iter().all(known) {
            return partitions
                .into_iter()
                .map(|tp| {
                    let e = if known(&tp) {
                        ResponseError::OperationNotAttempted
                    } else {
                        ResponseError::UnknownTopicOrPartition
                    };
                    (tp, e.code())
                })
                .collect();
        }
        let code = match self.add(transactional_id, producer_id, epoch, &partitions).await {
            Ok(()) => 0,
            Err(e) => e.code(),
        };
        partitions.into_iter().map(|tp| (tp, code)).collect()
    }

    async fn add(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<(), ResponseError> {
        let now = now_ms();
        self.transition(transactional_id, |current| {
            let Some(m) = current else {
                return Err(ResponseError::InvalidProducerIdMapping);
            };
            let next = m
                .add_partitions(producer_id, epoch, partitions, now)
                .map_err(|e| e.response_error())?;
            // Already in the transaction: nothing to write (Kafka answers at once too).
            if m.state == TxnState::Ongoing && next.partitions == m.partitions {
                return Ok((None, ()));
            }
            Ok((Some(next), ()))
        })
        .await
    }

    /// AddOffsetsToTxn: the group's partition of `__consumer_offsets` joins
    /// the transaction, so its TxnOffsetCommit ends with the transaction.
    pub async fn add_offsets(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group_id: &str,
    ) -> Result<(), ResponseError> {
        if let Err(e) = self.groups.ensure_offsets_topic().await {
            tracing::warn!(error = %e, "creating {OFFSETS_TOPIC} failed");
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let tp = (OFFSETS_TOPIC.to_string(), self.groups.partition_for(group_id));
        self.add(transactional_id, producer_id, epoch, &[tp]).await
    }

    /// EndTxn: the transaction moves to PrepareCommit or PrepareAbort (once
    /// replicated, the outcome is decided), then its markers are written to
    /// every partition and it completes. The answer waits for that, up to
    /// END_TXN_COMPLETION_WAIT: the client's next AddPartitionsToTxn would
    /// otherwise meet CONCURRENT_TRANSACTIONS and back off (librdkafka's
    /// `retry.backoff.ms`, 100 ms per transaction), and a read_committed
    /// reader sees the transaction once its commit returns.
    pub async fn end_txn(
        self: &Arc<Self>,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), ResponseError> {
        let now = now_ms();
        let prepared = self
            .transition(transactional_id, |current| {
                let Some(m) = current else {
                    return Err(ResponseError::InvalidProducerIdMapping);
                };
                match m.end(producer_id, epoch, commit, now).map_err(|e| e.response_error())? {
                    EndOutcome::Prepare(next) => Ok((Some(next), true)),
                    EndOutcome::AlreadyDone => Ok((None, false)),
                }
            })
            .await?;
        if prepared {
            if let Some(completion) = self.spawn_completion(transactional_id) {
                // Past the bound (a partition without a leader) the outcome
                // stands all the same: the completion goes on in the background.
                let _ = tokio::time::timeout(END_TXN_COMPLETION_WAIT, completion).await;
            }
        }
        Ok(())
    }

    /// Aborts the transactions open past their timeout, under a bumped
    /// epoch so their producer is fenced (Kafka's abortTimedOutTransactions).
    pub async fn abort_timed_out(self: &Arc<Self>) {
        let now = now_ms();
        let expired = self.ids_where(|shard, id, m| !shard.writing.contains(id) && m.expire(0, now).is_some());
        for id in expired {
            let new_producer_id = if self.needs_new_producer_id(&id) {
                match self.new_producer_id().await {
                    Ok(pid) => pid,
                    Err(_) => continue,
                }
            } else {
                -1
            };
            let now = now_ms();
            let aborted = self
                .transition(&id, |current| {
                    Ok((current.and_then(|m| m.expire(new_producer_id, now)), ()))
                })
                .await;
            match aborted {
                Ok(()) => {
                    tracing::info!(transactional_id = %id, "transaction open past its timeout: aborting it");
                    self.spawn_completion(&id);
                }
                Err(e) => tracing::debug!(transactional_id = %id, error = ?e, "timed-out transaction not aborted yet"),
            }
        }
    }

    /// Forgets the transactional ids idle past `transactional.id.expiration.ms`
    /// with no transaction open (Kafka's removeExpiredTransactionalIds): a
    /// tombstone each, so the compacted log drops them too. Answers how many.
    pub async fn remove_expired_ids(&self) -> usize {
        let expiration_ms = self.config.id_expiration_ms;
        let now = now_ms();
        let expired = self.ids_where(|shard, id, m| {
            !shard.writing.contains(id) && !shard.completing.contains(id) && m.id_expired(expiration_ms, now)
        });
        let mut removed = 0;
        for id in expired {
            match self.remove(&id, |m| m.id_expired(expiration_ms, now_ms())).await {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(transactional_id = %id, error = ?e, "expired transactional id not removed yet")
                }
            }
        }
        removed
    }

    /// The transactional ids of every shard whose state `pick` chooses.
    pub(super) fn ids_where(&self, pick: impl Fn(&Shard, &str, &TxnMetadata) -> bool) -> Vec<String> {
        self.shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock();
                shard
                    .txns
                    .iter()
                    .filter(|(id, m)| pick(&shard, id, m))
                    .map(|(id, _)| id.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// ListTransactions: the ids this broker coordinates, filtered by state
    /// names and producer ids (empty filters match all); the unknown state
    /// names in the filter.
    pub fn list(&self, states: &[String], producer_ids: &[i64]) -> (Vec<TxnDescription>, Vec<String>) {
        const STATES: [TxnState; 6] = [
            TxnState::Empty,
            TxnState::Ongoing,
            TxnState::PrepareCommit,
            TxnState::PrepareAbort,
            TxnState::CompleteCommit,
            TxnState::CompleteAbort,
        ];
        let unknown = states
            .iter()
            .filter(|s| !STATES.iter().any(|k| k.name() == s.as_str()))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            if !shard.loaded {
                continue;
            }
            out.extend(
                shard
                    .txns
                    .iter()
                    .filter(|(_, m)| states.is_empty() || states.iter().any(|s| s == m.state.name()))
                    .filter(|(_, m)| producer_ids.is_empty() || producer_ids.contains(&m.producer_id))
                    .map(|(id, m)| TxnDescription {
                        transactional_id: id.clone(),
                        metadata: m.clone(),
                    }),
            );
        }
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        (out, unknown)
    }

    /// DescribeTransactions for one id.
    pub fn describe(&self, transactional_id: &str) -> Result<TxnMetadata, ResponseError> {
        if let Some(e) = self.unavailable(transactional_id) {
            return Err(e);
        }
        let p = self.partition_for(transactional_id);
        self.shards[p as usize]
            .lock()
            .txns
            .get(transactional_id)
            .cloned()
            .ok_or(ResponseError::TransactionalIdNotFound)
    }
}
