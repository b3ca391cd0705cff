//! Per-partition producer state: <producer id, epoch, sequence>, and the
//! transactions of each producer in the partition.
//!
//! Each producer keeps the metadata of its last five batches so a retried
//! batch is answered with its original offsets instead of being written
//! twice, as Kafka's ProducerStateManager does. A transactional producer's
//! open transaction is the first offset it wrote since its last marker; the
//! earliest of them bounds the last stable offset, and an abort marker adds
//! the transaction to the aborted ones that read_committed fetches return.
//! The state is snapshotted at segment rolls and on clean shutdown, and
//! rebuilt from the batches past the latest snapshot on start (and on
//! truncation), markers included, so followers and restarts agree. The
//! aborted transactions are kept in the segments' `.txnindex` files
//! ([`super::txn_index`]) rather than in the snapshots.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::marker::{self, Marker};
use crate::log::batch::BatchHeader;

/// Batches remembered per producer (Kafka's NUM_BATCHES_TO_RETAIN).
pub const BATCHES_TO_RETAIN: usize = 5;
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMetadata>,
    /// The first offset of its open transaction in this partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn_first_offset: Option<i64>,
    /// The coordinator epoch of the last marker written for it (-1: none):
    /// a marker from an older coordinator epoch is a zombie coordinator's.
    #[serde(default = "no_coordinator_epoch")]
    pub coordinator_epoch: i32,
}

fn no_coordinator_epoch() -> i32 {
    -1
}

impl Default for ProducerEntry {
    fn default() -> Self {
        ProducerEntry {
            epoch: 0,
            batches: VecDeque::new(),
            txn_first_offset: None,
            coordinator_epoch: no_coordinator_epoch(),
        }
    }
}

/// One producer's state in a partition (DescribeProducers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveProducer {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp: i64,
    /// The first offset of its open transaction here.
    pub txn_first_offset: Option<i64>,
    /// The coordinator epoch of its last marker here (-1: none).
    pub coordinator_epoch: i32,
}

/// An aborted transaction, as a read_committed fetch names it (Kafka's
/// AbortedTxn): its producer, its first offset and its marker's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer epoch {got} is older than the current epoch {current}")]
    InvalidProducerEpoch { got: i16, current: i16 },
    #[error("out of order sequence {got}: expected {expected}")]
    OutOfOrderSequence { got: i32, expected: i32 },
    #[error("coordinator epoch {got} is older than the producer's last marker's {current}")]
    CoordinatorFenced { got: i32, current: i32 },
}

/// What to do with an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    Append,
    /// Already written: answer with these offsets.
    Duplicate(BatchMetadata),
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStateManager {
    producers: HashMap<i64, ProducerEntry>,
    /// Aborted transactions in the log, in the order of their markers. Their
    /// durable home is each segment's `.txnindex`; snapshots no longer carry
    /// them (an older snapshot's are read once and indexed).
    #[serde(default, skip_serializing)]
    aborted: Vec<AbortedTxn>,
    /// The last snapshot written and whether the state changed since: an
    /// unchanged state is linked to the new offset, not written again.
    #[serde(skip)]
    snapshot: Option<(PathBuf, bool)>,
    /// The open transactions as (first offset, producer id), so the last
    /// stable offset, asked on every fetch, is one lookup rather than a
    /// scan of the producers. Derived from the entries; rebuilt on load.
    #[serde(skip)]
    ongoing: BTreeSet<(i64, i64)>,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerStateManager {
    /// Validates a batch from a client against the producer's state (pure).
    pub fn check(
        &self,
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
        last_seq: i32,
    ) -> Result<SequenceCheck, SequenceError> {
        let Some(entry) = self.producers.get(&producer_id) else {
            // Unknown producer (new, or its state expired with retention): accept.
            return Ok(SequenceCheck::Append);
        };
        if epoch < entry.epoch {
            return Err(SequenceError::InvalidProducerEpoch {
                got: epoch,
                current: entry.epoch,
            });
        }
        if epoch > entry.epoch {
            // A bumped epoch starts its sequences again at 0.
            return if first_seq == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrderSequence {
                    got: first_seq,
                    expected: 0,
                })
            };
        }
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(SequenceCheck::Duplicate(*dup));
        }
        match entry.batches.back() {
            Some(last) if first_seq != next_seq(last.last_seq) => Err(SequenceError::OutOfOrderSequence {
                got: first_seq,
                expected: next_seq(last.last_seq),
            }),
            _ => Ok(SequenceCheck::Append),
        }
    }

    fn changed(&mut self) {
        if let Some((_, changed)) = &mut self.snapshot {
            *changed = true;
        }
    }

    /// Kafka's removeExpiredProducers: forgets producers whose last batch is
    /// older than `producer.id.expiration.ms` (by the batch's timestamp, as
    /// Kafka counts, so every replica expires the same producers).
    pub fn remove_expired(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        // A producer with an open transaction stays: it holds the LSO back.
        self.producers.retain(|_, e| {
            e.txn_first_offset.is_some()
                || e.batches
                    .back()
                    .is_some_and(|b| now_ms.saturating_sub(b.timestamp) < expiration_ms)
        });
        let removed = before - self.producers.len();
        if removed > 0 {
            self.changed();
        }
        removed
    }

    /// Records a written batch; a transactional one opens the producer's
    /// transaction here if none is open.
    pub fn update(&mut self, producer_id: i64, epoch: i16, meta: BatchMetadata, transactional: bool) {
        self.changed();
        let entry = self.producers.entry(producer_id).or_default();
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if transactional && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(meta.first_offset);
            self.ongoing.insert((meta.first_offset, producer_id));
        }
        entry.batches.push_back(meta);
        while entry.batches.len() > BATCHES_TO_RETAIN {
            entry.batches.pop_front();
        }
    }

    /// Puts back an entry saved before a failed append.
    pub fn restore(&mut self, producer_id: i64, entry: Option<ProducerEntry>) {
        self.changed();
        if let Some(first) = self.producers.get(&producer_id).and_then(|e| e.txn_first_offset) {
            self.ongoing.remove(&(first, producer_id));
        }
        if let Some(first) = entry.as_ref().and_then(|e| e.txn_first_offset) {
            self.ongoing.insert((first, producer_id));
        }
        match entry {
            Some(e) => {
                self.producers.insert(producer_id, e);
            }
            None => {
                self.producers.remove(&producer_id);
            }
        }
    }

    /// Whether a marker of `epoch` may end `producer_id`'s transaction: one
    /// from an older epoch is a zombie coordinator's (Kafka's
    /// INVALID_PRODUCER_EPOCH for a WriteTxnMarkers).
    pub fn check_marker(&self, producer_id: i64, epoch: i16) -> Result<(), SequenceError> {
        match self.producers.get(&producer_id) {
            Some(e) if epoch < e.epoch => Err(SequenceError::InvalidProducerEpoch {
                got: epoch,
                current: e.epoch,
            }),
            _ => Ok(()),
        }
    }

    /// Whether a marker from `coordinator_epoch` may be written: one from an
    /// older coordinator epoch than the producer's last marker here comes
    /// from a coordinator that has since lost the transaction's state
    /// partition (Kafka's TRANSACTION_COORDINATOR_FENCED).
    pub fn check_coordinator_epoch(&self, producer_id: i64, coordinator_epoch: i32) -> Result<(), SequenceError> {
        match self.producers.get(&producer_id) {
            Some(e) if coordinator_epoch < e.coordinator_epoch => Err(SequenceError::CoordinatorFenced {
                got: coordinator_epoch,
                current: e.coordinator_epoch,
            }),
            _ => Ok(()),
        }
    }

    /// A marker written at `offset` ends the producer's open transaction
    /// here: an abort adds it to the aborted transactions. A marker of a
    /// bumped epoch (a fenced producer's transaction aborted) moves the
    /// producer to that epoch.
    pub fn complete_txn(&mut self, producer_id: i64, epoch: i16, coordinator_epoch: i32, marker: Marker, offset: i64) {
        self.changed();
        let entry = self.producers.entry(producer_id).or_default();
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.coordinator_epoch = entry.coordinator_epoch.max(coordinator_epoch);
        let first = entry.txn_first_offset.take();
        if let Some(first_offset) = first {
            self.ongoing.remove(&(first_offset, producer_id));
        }
        if let (Some(first_offset), Marker::Abort) = (first, marker) {
            self.aborted.push(AbortedTxn {
                producer_id,
                first_offset,
                last_offset: offset,
            });
        }
    }

    /// Producers with a transaction open in this partition.
    pub fn open_transactions(&self) -> usize {
        self.ongoing.len()
    }

    /// The first offset of the earliest open transaction: the last stable
    /// offset is this or the high watermark, whichever is lower.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.first().map(|(offset, _)| *offset)
    }

    /// The aborted transactions a read_committed fetch of [from, to) must
    /// name: those whose marker is at or past `from` and that began before `to`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < to)
            .copied()
            .collect()
    }

    /// How many aborted transactions are known: the ones added by later
    /// markers are `aborted_since` that count.
    pub fn aborted_count(&self) -> usize {
        self.aborted.len()
    }

    pub fn aborted_since(&self, count: usize) -> &[AbortedTxn] {
        self.aborted.get(count..).unwrap_or_default()
    }

    /// Replaces the aborted transactions (read from the segments' indexes);
    /// answers what was there (an older snapshot's).
    pub fn replace_aborted(&mut self, aborted: Vec<AbortedTxn>) -> Vec<AbortedTxn> {
        std::mem::replace(&mut self.aborted, aborted)
    }

    /// Forgets aborted transactions whose marker is below the log start.
    pub fn prune_aborted(&mut self, log_start_offset: i64) {
        let before = self.aborted.len();
        self.aborted.retain(|a| a.last_offset >= log_start_offset);
        if self.aborted.len() != before {
            self.changed();
        }
    }

    /// Replays a stored batch (recovery, snapshots' tails, followers).
    pub fn replay(&mut self, h: &BatchHeader) {
        if h.producer_id() < 0 {
            return;
        }
        if h.is_control() {
            if let Some((marker, coordinator_epoch)) = marker::decode_with_epoch(h.bytes()) {
                self.complete_txn(
                    h.producer_id(),
                    h.producer_epoch(),
                    coordinator_epoch,
                    marker,
                    h.base_offset(),
                );
            }
            return;
        }
        self.update(
            h.producer_id(),
            h.producer_epoch(),
            BatchMetadata {
                first_seq: h.base_sequence(),
                last_seq: h.last_sequence(),
                first_offset: h.base_offset(),
                last_offset: h.last_offset(),
                timestamp: h.max_timestamp(),
            },
            h.is_transactional(),
        );
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Every producer with state here, as DescribeProducers shows them.
    pub fn active(&self) -> Vec<ActiveProducer> {
        let mut out: Vec<ActiveProducer> = self
            .producers
            .iter()
            .map(|(&producer_id, e)| ActiveProducer {
                producer_id,
                epoch: e.epoch,
                last_sequence: e.batches.back().map_or(-1, |b| b.last_seq),
                last_timestamp: e.batches.back().map_or(-1, |b| b.timestamp),
                txn_first_offset: e.txn_first_offset,
                coordinator_epoch: e.coordinator_epoch,
            })
            .collect();
        out.sort_by_key(|a| a.producer_id);
        out
    }

    pub fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Writes `<offset>.snapshot` atomically. As Kafka's snapshots, it holds
    /// each producer's last batch only (older retries of a restarted broker's
    /// producers are found by replaying the log past the snapshot). When
    /// nothing changed since the last snapshot, that file is hard-linked to
    /// the new offset instead of being written again.
    pub fn write_snapshot(&mut self, dir: &Path, offset: i64) -> io::Result<()> {
        let path = snapshot_path(dir, offset);
        if let Some((last, false)) = &self.snapshot {
            if *last == path || std::fs::hard_link(last, &path).is_ok() {
                self.snapshot = Some((path, false));
                return Ok(());
            }
        }
        let tmp = path.with_extension("snapshot.tmp");
        let last_batches = ProducerStateManager {
            producers: self
                .producers
                .iter()
                .map(|(id, e)| {
                    let entry = ProducerEntry {
                        epoch: e.epoch,
                        batches: e.batches.back().copied().into_iter().collect(),
                        txn_first_offset: e.txn_first_offset,
                        coordinator_epoch: e.coordinator_epoch,
                    };
                    (*id, entry)
                })
                .collect(),
            aborted: self.aborted.clone(),
            snapshot: None,
            ongoing: BTreeSet::new(),
        };
        let data = serde_json::to_vec(&last_batches).map_err(io::Error::other)?;
        std::fs::write(&tmp, data)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        self.snapshot = Some((path, false));
        Ok(())
    }

    /// Loads the newest snapshot at or below `max_offset`, deleting newer ones.
    /// Returns the state and the offset replay must start from.
    pub fn load_latest(dir: &Path, max_offset: i64) -> io::Result<(ProducerStateManager, i64)> {
        let mut snaps = list_snapshots(dir)?;
        snaps.sort_unstable();
        while let Some(&offset) = snaps.last() {
            let path = snapshot_path(dir, offset);
            if offset > max_offset {
                std::fs::remove_file(&path)?;
                snaps.pop();
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|d| serde_json::from_slice::<ProducerStateManager>(&d).ok())
            {
                Some(mut state) => {
                    // Replay past the snapshot changes the state: the next roll writes anew.
                    state.snapshot = Some((path, true));
                    state.ongoing = state
                        .producers
                        .iter()
                        .filter_map(|(pid, e)| e.txn_first_offset.map(|first| (first, *pid)))
                        .collect();
                    return Ok((state, offset));
                }
                None => {
                    tracing::warn!(path = %path.display(), "discarding unreadable producer snapshot");
                    std::fs::remove_file(&path)?;
                    snaps.pop();
                }
            }
        }
        Ok((ProducerStateManager::default(), 0))
    }

    /// Keeps only the newest `keep` snapshots and none below `log_start_offset`'s segment.
    pub fn clean_snapshots(dir: &Path, keep: usize) -> io::Result<()> {
        let mut snaps = list_snapshots(dir)?;
        snaps.sort_unstable();
        let n = snaps.len().saturating_sub(keep);
        for offset in &snaps[..n] {
            std::fs::remove_file(snapshot_path(dir, *offset))?;
        }
        Ok(())
    }
}

pub fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}{SNAPSHOT_SUFFIX}"))
}

fn list_snapshots(dir: &Path) -> io::Result<Vec<i64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(SNAPSHOT_SUFFIX) {
            if let Ok(o) = stem.parse::<i64>() {
                out.push(o);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(first_seq: i32, last_seq: i32, first_offset: i64) -> BatchMetadata {
        BatchMetadata {
            first_seq,
            last_seq,
            first_offset,
            last_offset: first_offset + (last_seq - first_seq) as i64,
            timestamp: 0,
        }
    }

    #[test]
    fn markers_from_an_older_coordinator_epoch_are_fenced() {
        let mut s = ProducerStateManager::default();
        s.update(1, 0, meta(0, 0, 10), true);
        assert!(s.check_coordinator_epoch(1, -1).is_ok(), "no marker yet: any epoch");
        s.complete_txn(1, 0, 5, Marker::Commit, 11);
        assert_eq!(
            s.check_coordinator_epoch(1, 4),
            Err(SequenceError::CoordinatorFenced { got: 4, current: 5 })
        );
        assert!(s.check_coordinator_epoch(1, 5).is_ok());
        assert!(s.check_coordinator_epoch(2, 0).is_ok(), "another producer");
        assert_eq!(s.active()[0].coordinator_epoch, 5);
        // Snapshots keep it.
        let dir = tempfile::tempdir().unwrap();
        s.write_snapshot(dir.path(), 12).unwrap();
        let (loaded, _) = ProducerStateManager::load_latest(dir.path(), 12).unwrap();
        assert_eq!(loaded.entry(1).map(|e| e.coordinator_epoch), Some(5));
        // Replayed markers (followers, recovery) carry it from the batch.
        let mut replica = ProducerStateManager::default();
        let marker = crate::log::marker::encode(1, 0, 6, Marker::Abort, 0).unwrap();
        replica.replay(&crate::log::batch::BatchHeader::parse(&marker).unwrap());
        assert_eq!(replica.entry(1).map(|e| e.coordinator_epoch), Some(6));
        // A snapshot from before the field: no marker epoch known.
        let old: ProducerEntry = serde_json::from_str(r#"{"epoch":0,"batches":[]}"#).unwrap();
        assert_eq!(old.coordinator_epoch, -1);
    }

    #[test]
    fn transactions_bound_the_lso_and_aborts_are_remembered() {
        let mut s = ProducerStateManager::default();
        s.update(1, 0, meta(0, 1, 10), true);
        s.update(2, 0, meta(0, 0, 12), true);
        s.update(1, 0, meta(2, 2, 13), true);
        s.update(3, 0, meta(0, 0, 14), false);
        assert_eq!(s.first_unstable_offset(), Some(10));
        s.complete_txn(1, 0, 0, Marker::Abort, 15);
        assert_eq!(s.first_unstable_offset(), Some(12));
        s.complete_txn(2, 0, 0, Marker::Commit, 16);
        assert_eq!(s.first_unstable_offset(), None);
        let aborted = AbortedTxn {
            producer_id: 1,
            first_offset: 10,
            last_offset: 15,
        };
        assert_eq!(s.aborted_between(0, 20), vec![aborted]);
        assert_eq!(s.aborted_between(16, 20), vec![]);
        assert_eq!(s.aborted_between(0, 10), vec![]);
        // A zombie coordinator's marker is refused; a bumped epoch's is taken.
        s.update(1, 2, meta(0, 0, 17), true);
        assert!(s.check_marker(1, 1).is_err());
        assert!(s.check_marker(1, 3).is_ok());
        s.prune_aborted(16);
        assert_eq!(s.aborted_between(0, 20), vec![]);
        // A failed append puts the entry back: its transaction goes with it.
        assert_eq!(s.first_unstable_offset(), Some(17));
        let before = s.entry(4).cloned();
        s.update(4, 0, meta(0, 0, 18), true);
        assert_eq!(s.open_transactions(), 2);
        s.restore(4, before);
        assert_eq!((s.first_unstable_offset(), s.open_transactions()), (Some(17), 1));
    }

    #[test]
    fn sequences_must_follow_and_duplicates_are_found() {
        let mut s = ProducerStateManager::default();
        assert_eq!(s.check(1, 0, 0, 4), Ok(SequenceCheck::Append));
        s.update(1, 0, meta(0, 4, 100), false);
        assert_eq!(s.check(1, 0, 5, 9), Ok(SequenceCheck::Append));
        s.update(1, 0, meta(5, 9, 105), false);
        assert_eq!(s.check(1, 0, 0, 4), Ok(SequenceCheck::Duplicate(meta(0, 4, 100))));
        assert_eq!(
            s.check(1, 0, 12, 13),
            Err(SequenceError::OutOfOrderSequence { got: 12, expected: 10 })
        );
    }

    #[test]
    fn epochs_fence_old_producers_and_reset_sequences() {
        let mut s = ProducerStateManager::default();
        s.update(1, 3, meta(0, 0, 0), false);
        assert_eq!(
            s.check(1, 2, 1, 1),
            Err(SequenceError::InvalidProducerEpoch { got: 2, current: 3 })
        );
        assert_eq!(s.check(1, 4, 0, 0), Ok(SequenceCheck::Append));
        assert!(s.check(1, 4, 5, 5).is_err());
    }

    #[test]
    fn only_five_batches_are_remembered() {
        let mut s = ProducerStateManager::default();
        for i in 0..7 {
            s.update(9, 0, meta(i, i, i as i64), false);
        }
        assert_eq!(s.entry(9).unwrap().batches.len(), BATCHES_TO_RETAIN);
        // The oldest batches are forgotten: a retry that old is out of order.
        assert!(s.check(9, 0, 0, 0).is_err());
        assert!(matches!(s.check(9, 0, 6, 6), Ok(SequenceCheck::Duplicate(_))));
    }

    #[test]
    fn producers_expire_after_their_last_batch() {
        let mut s = ProducerStateManager::default();
        let at = |ts: i64| BatchMetadata {
            timestamp: ts,
            ..meta(0, 0, 0)
        };
        s.update(1, 0, at(1_000), false);
        s.update(2, 0, at(5_000), false);
        assert_eq!(s.remove_expired(10_000, 6_000), 1);
        assert!(s.entry(1).is_none() && s.entry(2).is_some());
        assert_eq!(s.remove_expired(10_000, 6_000), 0);
    }

    #[test]
    fn snapshots_hold_last_batches_and_are_linked_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProducerStateManager::default();
        for i in 0..5 {
            s.update(1, 0, meta(i, i, i as i64), false);
        }
        s.write_snapshot(dir.path(), 5).unwrap();
        let (loaded, _) = ProducerStateManager::load_latest(dir.path(), 5).unwrap();
        assert_eq!(
            loaded.entry(1).unwrap().batches.len(),
            1,
            "only the last batch is stored"
        );
        assert!(matches!(loaded.check(1, 0, 4, 4), Ok(SequenceCheck::Duplicate(_))));
        assert_eq!(loaded.check(1, 0, 5, 5), Ok(SequenceCheck::Append));
        // No producer activity until the next roll: the same file, linked.
        s.write_snapshot(dir.path(), 9).unwrap();
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(snapshot_path(dir.path(), 5)).unwrap();
        let b = std::fs::metadata(snapshot_path(dir.path(), 9)).unwrap();
        assert_eq!(a.ino(), b.ino(), "an unchanged state is not written again");
        s.update(1, 0, meta(5, 5, 9), false);
        s.write_snapshot(dir.path(), 10).unwrap();
        let c = std::fs::metadata(snapshot_path(dir.path(), 10)).unwrap();
        assert_ne!(c.ino(), a.ino());
    }

    #[test]
    fn snapshots_round_trip_and_newer_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProducerStateManager::default();
        s.update(1, 0, meta(0, 1, 0), false);
        s.write_snapshot(dir.path(), 2).unwrap();
        s.update(1, 0, meta(2, 3, 2), false);
        s.write_snapshot(dir.path(), 4).unwrap();
        let (loaded, at) = ProducerStateManager::load_latest(dir.path(), 3).unwrap();
        assert_eq!(at, 2);
        assert_eq!(loaded.entry(1).unwrap().batches.len(), 1);
        assert!(!snapshot_path(dir.path(), 4).exists());
    }

    proptest::proptest! {
        /// An idempotent producer sending batches of random sizes and
        /// retrying random earlier ones: each new batch in sequence is
        /// appended, a retry of one of the last five is a duplicate answered
        /// with its original offsets (never appended twice), an older retry
        /// or a gap is out of order.
        #[test]
        fn a_retrying_producer_appends_each_batch_once(
            steps in proptest::collection::vec((1i32..5, 0usize..8, proptest::bool::weighted(0.3)), 1..80),
        ) {
            let mut s = ProducerStateManager::default();
            let mut appended: Vec<BatchMetadata> = Vec::new();
            let (mut next_seq, mut next_offset) = (0i32, 0i64);
            for (size, back, retry) in steps {
                if retry && !appended.is_empty() {
                    let back = back.min(appended.len() - 1);
                    let b = appended[appended.len() - 1 - back];
                    match s.check(1, 0, b.first_seq, b.last_seq) {
                        Ok(SequenceCheck::Duplicate(d)) => {
                            proptest::prop_assert!(back < 5);
                            proptest::prop_assert_eq!(d, b);
                        }
                        Err(SequenceError::OutOfOrderSequence { .. }) => proptest::prop_assert!(back >= 5),
                        other => proptest::prop_assert!(false, "a retry answered {:?}", other),
                    }
                    continue;
                }
                let (first, last) = (next_seq, next_seq + size - 1);
                let gap = s.check(1, 0, last + 2, last + 2);
                proptest::prop_assert!(
                    appended.is_empty() || matches!(gap, Err(SequenceError::OutOfOrderSequence { .. })),
                    "a gap answered {:?}",
                    gap
                );
                proptest::prop_assert_eq!(s.check(1, 0, first, last), Ok(SequenceCheck::Append));
                let m = meta(first, last, next_offset);
                s.update(1, 0, m, false);
                appended.push(m);
                next_seq = last + 1;
                next_offset = m.last_offset + 1;
            }
        }
    }
}
