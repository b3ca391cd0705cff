//! One partition this broker holds a replica of: its log, and as the
//! controller last set them its replica set, ISR, leader epoch and whether
//! this broker leads it; and the high watermark.
//!
//! As leader it tracks each follower's log end offset (the offset of its
//! last fetch) and when it last caught up; the high watermark is the lowest
//! log end offset in the ISR and never moves back. Consumers never read past
//! it. Delayed operations (acks=all, group records, DeleteRecords,
//! long-poll fetches) wait in the partition's purgatory (`purgatory.rs`) for
//! the events that move them on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use uuid::Uuid;

use super::purgatory::{Event, Purgatory};
use crate::error::{Error, Result};
use crate::log::manager::TopicPartition;
use crate::log::marker::Marker;
use crate::log::producer_state::AbortedTxn;
use crate::log::{AppendInfo, AppendOrigin, Log, ReadInfo, SliceInfo};

/// ListOffsets' special timestamps (Kafka's `ListOffsetsRequest` constants).
pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;
pub const LATEST_TIERED_TIMESTAMP: i64 = -5;

pub struct Partition {
    pub tp: TopicPartition,
    pub topic_id: Uuid,
    /// Reached through the partition from outside `replica/`, so that the
    /// leadership and watermarks that guard it are never bypassed.
    pub(super) log: Arc<Log>,
    leadership: RwLock<Leadership>,
    high_watermark: AtomicI64,
    /// Each follower's fetch progress, while this broker leads.
    followers: Mutex<HashMap<i32, FollowerState>>,
    /// As leader, the lowest log start offset in the ISR (Kafka's low
    /// watermark) as last computed: a DeleteRecords is answered once it
    /// passes the new start.
    low_watermark: AtomicI64,
    /// The delayed operations waiting on this partition.
    purgatory: Purgatory,
    /// One group commit at a time; the ones waiting behind it share the next.
    flush_turn: tokio::sync::Mutex<()>,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerState {
    /// The offset of its last fetch: everything below it is in its log.
    pub log_end_offset: i64,
    /// Its log start offset as its last fetch gave it (-1: none yet).
    pub log_start_offset: i64,
    /// When its fetch last reached the leader's log end offset (ms).
    pub last_caught_up_ms: i64,
    /// Whether its last fetch reached the high watermark of that moment
    /// (Kafka's test for joining the ISR, made at each fetch: under steady
    /// produce the high watermark moves on before a later check).
    pub reached_high_watermark: bool,
}

/// The partition's replicas, ISR and leader epoch as the controller last set
/// them, and whether this broker leads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    pub leading: bool,
    /// -1 when the partition is offline.
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Replicas a reassignment is adding (their fetches are throttled).
    pub adding: Vec<i32>,
    /// Replicas on fenced brokers: they cannot join the ISR (KIP-841), so
    /// their fetches earn nothing and never hold the high watermark back (a
    /// dead broker's last delayed fetch, answered after it was fenced, must
    /// not wedge the partition).
    pub fenced: Vec<i32>,
}

impl Partition {
    /// A partition not led here until [`Partition::set_leadership`] says so.
    /// `checkpointed`: its high watermark as last written (none: the log end,
    /// as a log from before replication had everything committed).
    pub fn new(tp: TopicPartition, topic_id: Uuid, log: Arc<Log>, checkpointed: Option<i64>) -> Partition {
        let leo = log.log_end_offset();
        let hw = checkpointed.map_or(leo, |hw| hw.clamp(log.log_start_offset(), leo));
        Partition {
            tp,
            topic_id,
            log,
            leadership: RwLock::new(Leadership::default()),
            high_watermark: AtomicI64::new(hw),
            followers: Mutex::new(HashMap::new()),
            low_watermark: AtomicI64::new(-1),
            purgatory: Purgatory::default(),
            flush_turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Wakes a delayed fetch at this partition's next `event` (a follower's
    /// fetch: the next append; a consumer's: the high watermark's next move).
    pub fn watch(&self, event: Event, waiter: &Arc<tokio::sync::Notify>) {
        self.purgatory.watch(event, waiter);
    }

    /// (leading, leader epoch): a delayed operation of a term ends with it.
    fn term(&self) -> (bool, i32) {
        let l = self.leadership.read();
        (l.leading, l.leader_epoch)
    }

    pub fn is_leading(&self) -> bool {
        self.leadership.read().leading
    }

    pub fn set_leadership(&self, leadership: Leadership) {
        let mut new_term = None;
        let mut current = self.leadership.write();
        if *current != leadership {
            if leadership.leading && (!current.leading || leadership.leader_epoch != current.leader_epoch) {
                tracing::info!(tp = %self.tp, leader_epoch = leadership.leader_epoch, "leading");
                new_term = Some(leadership.leader_epoch);
                // A new term: followers prove their progress afresh; until
                // then they count as caught up now (as Kafka's leader does).
                let now = crate::log::segment::now_ms();
                let mut followers = self.followers.lock();
                followers.clear();
                for r in leadership.replicas.iter().filter(|r| **r != leadership.leader) {
                    followers.insert(
                        *r,
                        FollowerState {
                            log_end_offset: -1,
                            log_start_offset: -1,
                            last_caught_up_ms: now,
                            reached_high_watermark: false,
                        },
                    );
                }
            } else if current.leading && !leadership.leading {
                tracing::info!(tp = %self.tp, "no longer leading");
            } else if leadership.leading && leadership.replicas != current.replicas {
                // A reassignment added or dropped replicas within the term.
                let now = crate::log::segment::now_ms();
                let mut followers = self.followers.lock();
                followers.retain(|r, _| leadership.replicas.contains(r));
                for r in leadership.replicas.iter().filter(|r| **r != leadership.leader) {
                    followers.entry(*r).or_insert(FollowerState {
                        log_end_offset: -1,
                        log_start_offset: -1,
                        last_caught_up_ms: now,
                        reached_high_watermark: false,
                    });
                }
            }
            if leadership.isr != current.isr || leadership.fenced != current.fenced {
                // A follower that just left must fetch again to return: its
                // old progress does not count (no flapping in and out).
                for f in self.followers.lock().values_mut() {
                    f.reached_high_watermark = false;
                }
            }
            let term_changed = (leadership.leading, leadership.leader_epoch) != (current.leading, current.leader_epoch);
            *current = leadership;
            if term_changed {
                // Delayed operations end now, as Kafka completes them on a
                // leader change: they are answered NOT_LEADER_OR_FOLLOWER
                // (with the new leader) instead of waiting out their timeouts.
                self.purgatory.complete(Event::LeaderChange);
            }
        }
        drop(current);
        self.update_low_watermark();
        if let Some(epoch) = new_term {
            // Out of the leadership lock: the checkpoint write fsyncs. An
            // append in the new term assigns the epoch at this same offset.
            if let Err(e) = self.log.assign_leader_epoch(epoch) {
                tracing::error!(tp = %self.tp, error = %e, "recording the new leader epoch");
            }
        }
        self.maybe_advance_high_watermark();
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log.log_end_offset()
    }

    pub fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    /// ListOffsets by timestamp: the first offset at or after it, and its timestamp.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        self.log.offset_for_timestamp(timestamp)
    }

    /// (offset, timestamp) answering ListOffsets for `timestamp`, which may be
    /// one of Kafka's special values below; (-1, -1) when no record is at or
    /// after a real timestamp.
    pub fn offset_for(&self, timestamp: i64) -> Result<(i64, i64)> {
        Ok(match timestamp {
            LATEST_TIMESTAMP => (self.high_watermark(), -1),
            EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => (self.log_start_offset(), -1),
            // Nothing is tiered: the latest tiered offset is just below the log start.
            LATEST_TIERED_TIMESTAMP => (self.log_start_offset() - 1, -1),
            MAX_TIMESTAMP => self.max_timestamp_offset()?,
            ts => self.offset_for_timestamp(ts)?.unwrap_or((-1, -1)),
        })
    }

    /// ListOffsets MAX_TIMESTAMP: the offset and timestamp of the latest record by time.
    pub fn max_timestamp_offset(&self) -> Result<(i64, i64)> {
        self.log.max_timestamp_offset()
    }

    /// OffsetsForLeaderEpoch: the epoch at or below `epoch` and where it ends.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.log.end_offset_for_epoch(epoch)
    }

    /// Everything below it is on disk.
    pub fn recovery_point(&self) -> i64 {
        self.log.recovery_point()
    }

    /// The topic's log config as last applied.
    pub fn config(&self) -> Arc<crate::config::LogConfig> {
        self.log.config()
    }

    /// Idempotent producers whose state the log keeps.
    pub fn producer_count(&self) -> usize {
        self.log.producer_count()
    }

    /// Writes everything appended so far to disk. Blocking.
    pub fn flush(&self) -> Result<i64> {
        self.log.flush_through_end()
    }

    /// The partition's leader as last set (-1: offline).
    pub fn leader(&self) -> i32 {
        self.leadership.read().leader
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.read().clone()
    }

    /// Whether this broker follows the partition from `leader` in `leader_epoch`.
    pub fn follows(&self, leader: i32, leader_epoch: i32) -> bool {
        let l = self.leadership.read();
        !l.leading && l.leader == leader && l.leader_epoch == leader_epoch
    }

    /// As leader: a follower fetched at `fetch_offset` (its log end offset)
    /// with its log starting at `log_start_offset`. Answers whether the high
    /// watermark moved.
    pub fn record_follower_fetch(&self, replica: i32, fetch_offset: i64, log_start_offset: i64, now_ms: i64) -> bool {
        let start_moved = {
            let leo = self.log.log_end_offset();
            // Read before the followers' lock: leadership is always locked first.
            let (in_sync, eligible) = {
                let l = self.leadership.read();
                (l.isr.contains(&replica), !l.fenced.contains(&replica))
            };
            let mut followers = self.followers.lock();
            let Some(f) = followers.get_mut(&replica) else {
                return false;
            };
            f.log_end_offset = fetch_offset;
            let start_moved = f.log_start_offset != log_start_offset;
            f.log_start_offset = log_start_offset;
            // Only an out-of-sync follower's progress can earn it the ISR.
            // Compared under the followers' lock, which the high watermark
            // also moves under: from here on the watermark waits for it.
            if !in_sync && eligible && fetch_offset >= self.high_watermark() {
                f.reached_high_watermark = true;
            }
            if fetch_offset >= leo {
                f.last_caught_up_ms = now_ms;
            }
            start_moved
        };
        if start_moved {
            self.update_low_watermark();
        }
        self.maybe_advance_high_watermark()
    }

    /// As leader: the lowest log start offset over the ISR and the followers
    /// joining it (-1 until each has fetched in this term, or not leading).
    /// Below it no in-sync replica serves a record: a DeleteRecords that
    /// moved the leader's log start holds once this passes it, whoever leads
    /// next (Kafka's lowWatermarkIfLeader).
    pub fn low_watermark(&self) -> i64 {
        let l = self.leadership.read();
        if !l.leading {
            return -1;
        }
        let followers = self.followers.lock();
        let mut low = self.log.log_start_offset();
        for r in l.isr.iter().filter(|r| **r != l.leader) {
            low = low.min(followers.get(r).map_or(-1, |f| f.log_start_offset));
        }
        for f in followers.values().filter(|f| f.reached_high_watermark) {
            low = low.min(f.log_start_offset);
        }
        low
    }

    fn update_low_watermark(&self) {
        let low = self.low_watermark();
        if self.low_watermark.swap(low, Ordering::AcqRel) != low {
            self.purgatory.complete(Event::LowWatermark);
        }
    }

    /// Resolves with the low watermark once it reaches `offset` (a delayed
    /// DeleteRecords), or NOT_LEADER_OR_FOLLOWER when the term ends.
    pub async fn wait_for_low_watermark(&self, offset: i64, leader_epoch: i32) -> Result<i64> {
        self.purgatory
            .wait_until(&[Event::LowWatermark], || {
                if self.term() != (true, leader_epoch) {
                    return Some(Err(Error::NotLeaderOrFollower));
                }
                let low = self.low_watermark.load(Ordering::Acquire);
                (low >= offset).then_some(Ok(low))
            })
            .await
    }

    pub fn followers(&self) -> HashMap<i32, FollowerState> {
        self.followers.lock().clone()
    }

    /// As leader: the high watermark is the lowest log end offset in the
    /// maximal ISR (KIP-497): the ISR, this broker's included, and the
    /// followers that earned joining it but are not in it yet. Without the
    /// latter, the watermark could pass a joiner's log end while its
    /// AlterPartition is on its way, and a leader elected from the new ISR
    /// (a reassignment moving leadership to it) would lack acknowledged
    /// records. It only moves forward.
    fn maybe_advance_high_watermark(&self) -> bool {
        self.advance_high_watermark(&self.leadership.read())
    }

    /// [`Partition::maybe_advance_high_watermark`] under a leadership lock
    /// the caller holds (parking_lot's read lock is not re-entrant).
    fn advance_high_watermark(&self, l: &Leadership) -> bool {
        if !l.leading {
            return false;
        }
        let hw = self.log.log_end_offset();
        // A single replica (RF 1, the usual single node): no follower to
        // wait for, so the append path takes no further lock.
        if l.replicas.len() <= 1 && l.isr.iter().all(|r| *r == l.leader) {
            return self.set_high_watermark(hw);
        }
        let followers = self.followers.lock();
        let isr = l.isr.iter().filter(|r| **r != l.leader);
        let mut hw = isr.fold(hw, |hw, r| hw.min(followers.get(r).map_or(-1, |f| f.log_end_offset)));
        for f in followers.values().filter(|f| f.reached_high_watermark) {
            hw = hw.min(f.log_end_offset);
        }
        // Moved under the followers' lock, where a joiner compares its fetch
        // with it: no joiner is let in behind a watermark that passed it.
        self.set_high_watermark(hw)
    }

    /// Moves the high watermark forward to `hw` (never back). As follower it
    /// is the leader's, bounded by this log's end.
    pub fn set_high_watermark(&self, hw: i64) -> bool {
        let previous = self.high_watermark.fetch_max(hw, Ordering::AcqRel);
        if hw > previous {
            self.purgatory.complete(Event::HighWatermark);
            true
        } else {
            false
        }
    }

    /// A follower that truncated its log takes its high watermark down with it.
    pub fn reset_high_watermark(&self, hw: i64) {
        self.high_watermark.store(hw, Ordering::Release);
        self.purgatory.complete(Event::HighWatermark);
    }

    /// Resolves once the high watermark passes `offset` (acks=all), or with
    /// NOT_LEADER_OR_FOLLOWER as soon as this broker stops leading in
    /// `leader_epoch` (as Kafka completes a delayed produce on a leader
    /// change): the client retries on the new leader instead of waiting out
    /// its timeout.
    pub async fn wait_for_high_watermark(&self, offset: i64, leader_epoch: i32) -> Result<()> {
        self.purgatory
            .wait_until(&[Event::HighWatermark], || {
                if self.term() != (true, leader_epoch) {
                    return Some(Err(Error::NotLeaderOrFollower));
                }
                (self.high_watermark() > offset).then_some(Ok(()))
            })
            .await
    }

    /// The epoch stamped into batches appended as leader.
    pub fn leader_epoch(&self) -> i32 {
        self.leadership.read().leader_epoch
    }

    /// KIP-320: a client (or follower) naming the leader epoch it believes
    /// current learns when it is behind (FENCED_LEADER_EPOCH: refresh
    /// metadata, the log may have been truncated) or ahead of this broker
    /// (UNKNOWN_LEADER_EPOCH: retry). -1 skips the check.
    pub fn check_leader_epoch(&self, requested: i32) -> Result<()> {
        let current = self.leader_epoch();
        match requested {
            r if r < 0 || r == current => Ok(()),
            r if r < current => Err(Error::FencedLeaderEpoch(format!(
                "{}: epoch {r} is older than the leader's {current}",
                self.tp
            ))),
            r => Err(Error::UnknownLeaderEpoch(r)),
        }
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    pub fn replicas(&self) -> Vec<i32> {
        self.leadership.read().replicas.clone()
    }

    pub fn isr(&self) -> Vec<i32> {
        self.leadership.read().isr.clone()
    }

    /// Whether `replica`'s fetches fall under the replication throttle: a
    /// reassignment is adding it and it is not in sync yet.
    pub fn is_throttled_for(&self, replica: i32) -> bool {
        let l = self.leadership.read();
        l.adding.contains(&replica) && !l.isr.contains(&replica)
    }

    /// No leader anywhere: no in-sync replica is live.
    pub fn is_offline(&self) -> bool {
        self.leadership.read().leader < 0
    }

    pub fn is_under_replicated(&self) -> bool {
        let l = self.leadership.read();
        l.isr.len() < l.replicas.len()
    }

    /// Fewer in-sync replicas than the topic's `min.insync.replicas`: acks=all
    /// produces are refused, as Kafka does, rather than acknowledged with less
    /// durability than the topic promises.
    pub fn is_under_min_isr(&self) -> bool {
        self.min_isr_not_met().is_some()
    }

    /// The topic's min.insync.replicas, when the ISR is smaller than it.
    fn min_isr_not_met(&self) -> Option<i32> {
        below_min_isr(self.leadership.read().isr.len(), &self.log)
    }

    /// Appends as leader (`acks` as in the Produce request) and answers the
    /// leader epoch it appended in. The leadership lock is held from the
    /// check that this broker leads, through the append, to the high
    /// watermark (Kafka's leaderIsrUpdateLock across appendRecordsToLeader):
    /// leadership cannot move away in between, so a batch is never appended
    /// under an epoch this broker no longer leads. Below min.insync.replicas
    /// an acks=all produce is refused before appending. The high watermark
    /// moves at once when the ISR is this broker alone.
    pub fn append(&self, records: &Bytes, acks: i16) -> Result<(AppendInfo, i32)> {
        self.append_from(records, acks, AppendOrigin::Client)
    }

    /// `append` for records from `origin` (a coordinator's own records).
    pub fn append_from(&self, records: &Bytes, acks: i16, origin: AppendOrigin) -> Result<(AppendInfo, i32)> {
        let l = self.leadership.read();
        if !l.leading {
            return Err(Error::NotLeaderOrFollower);
        }
        if acks == -1 {
            if let Some(min) = below_min_isr(l.isr.len(), &self.log) {
                return Err(Error::NotEnoughReplicas { isr: l.isr.len(), min });
            }
        }
        let info = self.log.append_validated(records, l.leader_epoch, origin)?;
        if !info.duplicate {
            self.purgatory.complete(Event::Append);
        }
        self.advance_high_watermark(&l);
        Ok((info, l.leader_epoch))
    }

    /// Resolves once everything below `offset` is on disk (flush.messages):
    /// a group commit. One fsync runs at a time off the async workers, and
    /// it covers every batch appended before it started, so the requests
    /// queued behind one fsync share the next instead of one each.
    /// `truncations` is the log's truncation count at the append.
    pub async fn make_durable(&self, offset: i64, truncations: u64) -> Result<()> {
        loop {
            self.log.check_online()?;
            if self.log.truncations() != truncations {
                // Truncated meanwhile (leadership moved on): these offsets
                // no longer hold the records appended for this request.
                return Err(Error::NotLeaderOrFollower);
            }
            if self.log.recovery_point() >= offset {
                break;
            }
            let _turn = self.flush_turn.lock().await;
            if self.log.recovery_point() >= offset && self.log.truncations() == truncations {
                break;
            }
            let log = self.log.clone();
            tokio::task::spawn_blocking(move || log.flush_through_end())
                .await
                .map_err(|e| Error::Storage(std::io::Error::other(e)))??;
        }
        Ok(())
    }

    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<ReadInfo> {
        self.log.read(offset, max_bytes, self.high_watermark(), min_one)
    }

    /// The file region a fetch serves (zero-copy path).
    pub fn read_slice(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<SliceInfo> {
        self.log.read_slice(offset, max_bytes, self.high_watermark(), min_one)
    }

    /// The last stable offset: the high watermark, or the first offset of
    /// the earliest open transaction where that is lower. read_committed
    /// consumers read below it.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        self.log.first_unstable_offset().map_or(hw, |first| first.min(hw))
    }

    /// The producers with state in this partition (DescribeProducers).
    pub fn producers(&self) -> Vec<crate::log::producer_state::ActiveProducer> {
        self.log.producers()
    }

    /// The producer's state here, if it has any.
    pub fn producer_entry(&self, producer_id: i64) -> Option<crate::log::producer_state::ProducerEntry> {
        self.log.producer_entry(producer_id)
    }

    /// Whether the producer, at `epoch`, has a transaction open here.
    pub fn in_transaction(&self, producer_id: i64, epoch: i16) -> bool {
        self.log.in_transaction(producer_id, epoch)
    }

    /// Producers with a transaction open in this partition.
    pub fn open_transactions(&self) -> usize {
        self.log.open_transactions()
    }

    /// What a read_committed consumer fetches: the region below the last
    /// stable offset and the aborted transactions in it.
    pub fn read_slice_committed(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<(SliceInfo, Vec<AbortedTxn>)> {
        let lso = self.last_stable_offset();
        let info = self.log.read_slice(offset, max_bytes, lso, min_one)?;
        Ok((info, self.log.aborted_transactions(offset, lso)))
    }

    /// As leader, a transaction marker (WriteTxnMarkers), under the
    /// leadership as `append`; the caller waits for the high watermark to
    /// pass it, as the marker is written with acks=all.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
        marker: Marker,
    ) -> Result<(AppendInfo, i32)> {
        let l = self.leadership.read();
        if !l.leading {
            return Err(Error::NotLeaderOrFollower);
        }
        let info = self
            .log
            .append_marker(producer_id, producer_epoch, coordinator_epoch, marker, l.leader_epoch)?;
        self.purgatory.complete(Event::Append);
        self.advance_high_watermark(&l);
        Ok((info, l.leader_epoch))
    }

    /// What a follower fetches: up to the log end offset, not the high
    /// watermark; at least one batch unless `max_bytes` is 0 (throttled).
    pub fn read_slice_for_follower(&self, offset: i64, max_bytes: usize) -> Result<SliceInfo> {
        self.log
            .read_slice(offset, max_bytes, self.log.log_end_offset(), max_bytes > 0)
    }

    /// As leader, DeleteRecords: moves the log start offset to `offset`
    /// (-1: the high watermark), at most to the high watermark. Followers
    /// take it from the next fetch response. Blocking (segment deletion).
    pub fn delete_records_before(&self, offset: i64) -> Result<i64> {
        let start = self.log.delete_records_before(offset, self.high_watermark())?;
        self.update_low_watermark();
        // Followers waiting in a fetch learn the new start now.
        self.purgatory.complete(Event::Append);
        Ok(start)
    }

    /// As follower: takes the leader's log start offset (from a fetch
    /// response) when it is past this log's, deleting the segments below it.
    /// Answers whether the log start moved. Blocking (segment deletion).
    pub fn follow_log_start(&self, leader_log_start: i64) -> Result<bool> {
        let hw = self.high_watermark();
        let target = leader_log_start.min(hw);
        if target <= self.log.log_start_offset() {
            return Ok(false);
        }
        self.log.delete_records_before(target, hw)?;
        Ok(true)
    }
}

/// The topic's min.insync.replicas, when an ISR of `isr` replicas is smaller.
fn below_min_isr(isr: usize, log: &Log) -> Option<i32> {
    let min = log.config().min_insync_replicas;
    ((isr as i64) < i64::from(min)).then_some(min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogConfig;
    use crate::replica::isr::desired_isr;

    fn leading(isr: &[i32]) -> Leadership {
        Leadership {
            leading: true,
            leader: 1,
            leader_epoch: 1,
            partition_epoch: 1,
            replicas: vec![1, 2],
            isr: isr.to_vec(),
            adding: Vec::new(),
            fenced: Vec::new(),
        }
    }

    /// An acks=all waiter is answered when the term ends, not at its timeout.
    #[tokio::test]
    async fn an_acks_all_wait_ends_with_the_leadership() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), Arc::new(LogConfig::default()), None, None).unwrap());
        let part = Arc::new(Partition::new(TopicPartition::new("t", 0), Uuid::new_v4(), log, None));
        part.set_leadership(leading(&[1, 2]));
        let waiter = {
            let part = part.clone();
            tokio::spawn(async move { part.wait_for_high_watermark(10, 1).await })
        };
        tokio::task::yield_now().await;
        part.set_leadership(Leadership {
            leading: false,
            leader: 2,
            leader_epoch: 2,
            ..leading(&[2])
        });
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
        assert!(matches!(answer, Ok(Ok(Err(Error::NotLeaderOrFollower)))));
    }

    /// Delayed fetches waiting on a partition are woken when its leadership
    /// moves (they then answer NOT_LEADER_OR_FOLLOWER), not at max.wait.ms.
    #[tokio::test]
    async fn a_leader_change_wakes_delayed_fetches() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), Arc::new(LogConfig::default()), None, None).unwrap());
        let part = Partition::new(TopicPartition::new("t", 0), Uuid::new_v4(), log, None);
        part.set_leadership(leading(&[1, 2]));
        let (consumer, follower) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        part.watch(Event::HighWatermark, &consumer);
        part.watch(Event::Append, &follower);
        // Same term, new ISR: nothing to end.
        part.set_leadership(leading(&[1]));
        let quick = std::time::Duration::from_millis(50);
        assert!(tokio::time::timeout(quick, consumer.notified()).await.is_err());
        part.set_leadership(Leadership {
            leading: false,
            leader: 2,
            leader_epoch: 2,
            ..leading(&[2])
        });
        let bound = std::time::Duration::from_secs(5);
        assert!(tokio::time::timeout(bound, consumer.notified()).await.is_ok());
        assert!(tokio::time::timeout(bound, follower.notified()).await.is_ok());
    }

    /// KIP-497: from the fetch that earns a follower the ISR, the high
    /// watermark waits for it, before the controller has added it. A leader
    /// elected from the new ISR then holds every acknowledged record.
    #[test]
    fn a_joining_follower_holds_the_high_watermark_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), Arc::new(LogConfig::default()), None, None).unwrap());
        let part = Partition::new(TopicPartition::new("t", 0), Uuid::new_v4(), log, None);
        let three = |isr: &[i32]| Leadership {
            replicas: vec![1, 2, 3],
            ..leading(isr)
        };
        part.set_leadership(three(&[1, 2]));
        let now = crate::log::segment::now_ms();
        let batch = crate::log::batch::tests::encode_batch(0, &[b"v"], 1000);
        for _ in 0..5 {
            part.log.append_as_leader(&batch, 1).unwrap();
        }
        part.record_follower_fetch(2, 5, 0, now);
        assert_eq!(part.high_watermark(), 5);
        // Broker 3 catches up to the high watermark: it earns the ISR.
        part.record_follower_fetch(3, 5, 0, now);
        for _ in 0..5 {
            part.log.append_as_leader(&batch, 1).unwrap();
        }
        part.record_follower_fetch(2, 10, 0, now);
        assert_eq!(part.high_watermark(), 5, "waits for the joiner");
        part.record_follower_fetch(3, 8, 0, now);
        assert_eq!(part.high_watermark(), 8);
        // Once it is in the ISR it counts as any member does.
        part.set_leadership(three(&[1, 2, 3]));
        part.record_follower_fetch(3, 10, 0, now);
        assert_eq!(part.high_watermark(), 10);
    }

    /// A fetch by a replica on a fenced broker (a dead broker's last delayed
    /// fetch, answered after it was fenced) earns it nothing: it neither
    /// holds the high watermark back nor asks to join the ISR.
    #[test]
    fn a_fenced_replica_never_holds_the_high_watermark_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), Arc::new(LogConfig::default()), None, None).unwrap());
        let part = Partition::new(TopicPartition::new("t", 0), Uuid::new_v4(), log, None);
        let fenced = Leadership {
            fenced: vec![2],
            ..leading(&[1])
        };
        part.set_leadership(fenced.clone());
        let now = crate::log::segment::now_ms();
        part.record_follower_fetch(2, 0, 0, now);
        let batch = crate::log::batch::tests::encode_batch(0, &[b"v"], 1000);
        for _ in 0..5 {
            part.append(&batch, -1).unwrap();
        }
        assert_eq!(part.high_watermark(), 5);
        assert_eq!(desired_isr(&fenced, &part.followers(), now, 30_000), vec![1]);
    }

    /// A follower that stopped fetching leaves the ISR and stays out: what
    /// it fetched while in sync does not earn it the ISR back; a fetch at
    /// the high watermark after it left does.
    #[test]
    fn a_stalled_follower_does_not_flap_back_into_the_isr() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), Arc::new(LogConfig::default()), None, None).unwrap());
        let part = Partition::new(TopicPartition::new("t", 0), Uuid::new_v4(), log, None);
        part.set_leadership(leading(&[1, 2]));
        part.record_follower_fetch(2, 0, 0, 0);
        part.set_leadership(leading(&[1]));
        // Its old offset equals the idle partition's high watermark: still out.
        let now = crate::log::segment::now_ms();
        let hw = part.high_watermark();
        assert_eq!(desired_isr(&leading(&[1]), &part.followers(), now, 30_000), vec![1]);
        part.record_follower_fetch(2, hw, 0, now);
        assert_eq!(desired_isr(&leading(&[1]), &part.followers(), now, 30_000), vec![1, 2]);
    }
}
