//! Ending a transaction in its partitions: once its PrepareCommit or
//! PrepareAbort state is replicated, the coordinator writes the commit or
//! abort marker to every partition of the transaction (the partitions this
//! broker leads directly, the others with WriteTxnMarkers to their leaders,
//! Kafka's TransactionMarkerChannelManager), retrying until each is written
//! or the coordinator is deposed, and then writes the Complete state.
//!
//! A marker in a partition of `__consumer_offsets` also ends the producer's
//! transactional offset commits there (the group coordinator's part).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::{ApiKey, ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use tokio::task::JoinHandle;

use super::coordinator::TransactionCoordinator;
use super::metadata::{TxnMetadata, TxnState};
use crate::error::Error;
use crate::group::{GroupCoordinator, OFFSETS_TOPIC};
use crate::log::marker::Marker;
use crate::log::segment::now_ms;
use crate::replica::ReplicaManager;

/// WriteTxnMarkers v1 (flexible), as Kafka's coordinator sends it.
const WRITE_TXN_MARKERS_VERSION: i16 = 1;
/// How long a marker waits for its partition's ISR (Kafka's request.timeout.ms default).
pub const MARKER_REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds one exchange with another broker, so a hung peer is retried.
pub(super) const PEER_TIMEOUT: Duration = Duration::from_secs(40);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Writes a marker to a partition this broker leads, as acks=all: answers
/// its offset once the partition's ISR has it. In `__consumer_offsets` it
/// also ends the producer's transactional offsets in the group coordinator.
#[allow(clippy::too_many_arguments)]
pub async fn write_local(
    replicas: &ReplicaManager,
    groups: &GroupCoordinator,
    topic: &str,
    partition: i32,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    marker: Marker,
) -> Result<i64, Error> {
    let part = replicas.get(topic, partition)?;
    let (info, leader_epoch) = part.append_marker(producer_id, producer_epoch, coordinator_epoch, marker)?;
    match tokio::time::timeout(
        MARKER_REPLICATION_TIMEOUT,
        part.wait_for_high_watermark(info.last_offset, leader_epoch),
    )
    .await
    {
        Ok(Ok(())) => {
            if topic == OFFSETS_TOPIC {
                groups.complete_txn(partition, producer_id, marker == Marker::Commit);
            }
            Ok(info.last_offset)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::RequestTimedOut),
    }
}

impl TransactionCoordinator {
    /// Ends the transaction of `transactional_id` (in a Prepare state) in
    /// the background, unless that is already under way; the task, to wait
    /// for (dropping it does not stop it).
    pub(super) fn spawn_completion(self: &Arc<Self>, transactional_id: &str) -> Option<JoinHandle<()>> {
        let p = self.partition_for(transactional_id) as usize;
        if !self.shards[p].lock().completing.insert(transactional_id.to_string()) {
            return None;
        }
        let (this, id) = (self.clone(), transactional_id.to_string());
        Some(tokio::spawn(async move {
            this.complete(&id).await;
            this.shards[p].lock().completing.remove(&id);
        }))
    }

    /// Resumes the ending of every transaction loaded in a Prepare state
    /// (after a coordinator failover, or a Complete write that failed).
    pub fn resume_completions(self: &Arc<Self>) {
        let preparing = self.ids_where(|shard, id, m| {
            shard.loaded && m.state.is_preparing() && !shard.completing.contains(id) && !shard.writing.contains(id)
        });
        for id in preparing {
            self.spawn_completion(&id);
        }
    }

    /// Writes the markers of the prepared transaction, then its Complete
    /// state. Returns when done, or when this broker no longer coordinates it.
    async fn complete(&self, transactional_id: &str) {
        let p = self.partition_for(transactional_id) as usize;
        let mut backoff = Duration::from_millis(20);
        loop {
            let (m, coordinator_epoch) = {
                let shard = self.shards[p].lock();
                match shard.txns.get(transactional_id) {
                    Some(m) if shard.loaded && m.state.is_preparing() => (m.clone(), shard.epoch),
                    _ => return,
                }
            };
            if !self.write_markers(&m, coordinator_epoch, p).await {
                return;
            }
            let now = now_ms();
            let completed = self
                .transition(transactional_id, |current| match current {
                    Some(c) if c == &m => Ok((c.complete(now), ())),
                    _ => Ok((None, ())),
                })
                .await;
            match completed {
                Ok(()) => {
                    tracing::debug!(transactional_id, state = ?m.state, "transaction complete");
                    return;
                }
                Err(e) => {
                    tracing::info!(transactional_id, error = ?e, "completing the transaction failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }

    /// Whether this broker still coordinates partition `p` at `epoch`.
    fn still_coordinator(&self, p: usize, epoch: i32) -> bool {
        let shard = self.shards[p].lock();
        shard.loaded && shard.epoch == epoch
    }

    /// Writes the marker of `m` to each of its partitions, each at its
    /// current leader, until all have it (a deleted topic has nothing to
    /// end). False when this broker stopped coordinating the id (its
    /// `state_partition`) meanwhile.
    async fn write_markers(&self, m: &TxnMetadata, coordinator_epoch: i32, state_partition: usize) -> bool {
        let marker = if m.state == TxnState::PrepareCommit {
            Marker::Commit
        } else {
            Marker::Abort
        };
        let mut left: BTreeSet<(String, i32)> = m.partitions.clone();
        let mut backoff = Duration::from_millis(20);
        loop {
            let image = self.controller.image();
            left.retain(|(t, p)| image.topics.get(t).is_some_and(|ti| (0..ti.partitions).contains(p)));
            if left.is_empty() {
                return true;
            }
            let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
            for (t, p) in &left {
                if let Some(leader) = image.topics.get(t).and_then(|ti| image.leader(ti, *p)) {
                    by_leader.entry(leader).or_default().push((t.clone(), *p));
                }
            }
            let sends = by_leader.into_iter().map(|(leader, partitions)| async move {
                if leader == self.node_id {
                    self.write_here(m, marker, coordinator_epoch, partitions).await
                } else {
                    self.send_to(leader, m, marker, coordinator_epoch, partitions).await
                }
            });
            for written in join_all(sends).await {
                for tp in written {
                    left.remove(&tp);
                }
            }
            if left.is_empty() {
                return true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            if !self.still_coordinator(state_partition, coordinator_epoch) {
                return false;
            }
        }
    }

    /// Markers for partitions this broker leads: the ones written.
    async fn write_here(
        &self,
        m: &TxnMetadata,
        marker: Marker,
        coordinator_epoch: i32,
        partitions: Vec<(String, i32)>,
    ) -> Vec<(String, i32)> {
        let writes = partitions.into_iter().map(|(topic, partition)| async move {
            let written = write_local(
                &self.replicas,
                &self.groups,
                &topic,
                partition,
                m.producer_id,
                m.producer_epoch,
                coordinator_epoch,
                marker,
            )
            .await;
            match written {
                Ok(_) => Some((topic, partition)),
                Err(e) => {
                    tracing::debug!(%topic, partition, error = %e, "marker not written yet");
                    None
                }
            }
        });
        join_all(writes).await.into_iter().flatten().collect()
    }

    /// WriteTxnMarkers to broker `leader` for `partitions`: the ones written.
    async fn send_to(
        &self,
        leader: i32,
        m: &TxnMetadata,
        marker: Marker,
        coordinator_epoch: i32,
        partitions: Vec<(String, i32)>,
    ) -> Vec<(String, i32)> {
        let Some(addr) = self
            .controller
            .image()
            .brokers
            .get(&leader)
            .map(|b| format!("{}:{}", b.host, b.port))
        else {
            return Vec::new();
        };
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in &partitions {
            topics.entry(t.as_str()).or_default().push(*p);
        }
        let request = WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
            .with_producer_id(ProducerId(m.producer_id))
            .with_producer_epoch(m.producer_epoch)
            .with_transaction_result(marker == Marker::Commit)
            .with_coordinator_epoch(coordinator_epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        WritableTxnMarkerTopic::default()
                            .with_name(TopicName(crate::api::str(t)))
                            .with_partition_indexes(ps)
                    })
                    .collect(),
            )]);
        let sent = self
            .channels
            .send(
                leader,
                &addr,
                ApiKey::WriteTxnMarkers,
                WRITE_TXN_MARKERS_VERSION,
                &request,
            )
            .await;
        let response: WriteTxnMarkersResponse = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(leader, error = %e, "WriteTxnMarkers failed; retrying");
                return Vec::new();
            }
        };
        let mut written = Vec::new();
        for result in response.markers {
            for t in result.topics {
                for p in t.partitions {
                    if p.error_code == 0 {
                        written.push((t.name.as_str().to_string(), p.partition_index));
                    } else {
                        tracing::debug!(leader, topic = %t.name.as_str(), partition = p.partition_index, code = p.error_code, "marker refused; retrying");
                    }
                }
            }
        }
        written
    }
}
