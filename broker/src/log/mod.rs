//! The partition log: an ordered list of segments with append, read, roll,
//! retention and recovery (Kafka's UnifiedLog, without replication).

pub mod batch;
pub mod cleaner;
pub mod epoch;
pub mod index;
pub mod manager;
pub mod marker;
pub mod page_cache;
pub mod producer_state;
pub mod record;
pub mod segment;
pub mod txn_index;
pub mod validator;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::log::marker::Marker;
use crate::log::producer_state::{
    AbortedTxn, ActiveProducer, BatchMetadata, ProducerEntry, ProducerStateManager, SequenceCheck,
};
use batch::{BatchHeader, PatchedHeader, HEADER_SIZE};
use epoch::{EpochEntry, LeaderEpochCache};
pub use segment::FileSlice;
use segment::{now_ms, OutgoingBatch, Segment, LOG_SUFFIX};

/// Who appends to a leader's log (Kafka's AppendOrigin): a client's batches
/// have their sequences checked; a coordinator's records do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOrigin {
    Client,
    Coordinator,
}

/// What an append wrote (or, for a retried batch, had already written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendInfo {
    pub first_offset: i64,
    pub last_offset: i64,
    /// Set when the topic uses LogAppendTime, else -1.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    pub records: u64,
    pub bytes: u64,
    pub duplicate: bool,
    /// `flush.messages` reached: the caller makes the log durable through
    /// this append ([`Log::flush_through_end`]) before answering for it.
    pub flush_due: bool,
    /// The log's truncation count at the append: a different count later
    /// means these offsets may hold other records now.
    pub truncations: u64,
}

/// What a fetch serves from one partition: a file region, not yet read.
#[derive(Debug, Clone)]
pub struct SliceInfo {
    pub slice: Option<FileSlice>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

#[derive(Debug, Clone)]
pub struct ReadInfo {
    pub records: Bytes,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

struct LogState {
    segments: Vec<Segment>,
    log_start_offset: i64,
    next_offset: i64,
    recovery_point: i64,
    /// Base offset of the newest segment rolled since: the segments before it
    /// are flushed in the background and the recovery point moves to it.
    roll_flush_pending: Option<i64>,
    /// Bumped by every truncation: a flush that started before one must not
    /// move the recovery point over what was appended after it.
    truncations: u64,
    /// Segment files created, and how many of those the last directory
    /// fsync covered (a new file's name is durable only then).
    segments_created: u64,
    segments_dir_synced: u64,
    unflushed_messages: i64,
    last_flush_ms: i64,
    producers: ProducerStateManager,
    /// Where each leader epoch starts (a follower names the latest in every
    /// fetch; leaders answer divergence from it).
    epochs: LeaderEpochCache,
}

impl LogState {
    /// Indexes the transactions aborted by markers appended since the
    /// producer state knew `count` of them.
    fn index_aborted_since(&self, count: usize) -> std::io::Result<()> {
        if self.producers.aborted_count() == count {
            return Ok(()); // the common case: no abort marker among the batches
        }
        let lso = self.producers.first_unstable_offset().unwrap_or(self.next_offset);
        index_aborted(&self.segments, self.producers.aborted_since(count), lso)
    }

    fn active(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("a log always has an active segment")
    }

    /// Index of the segment holding `offset` (the last with base <= offset).
    fn segment_for(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }
}

pub struct Log {
    dir: PathBuf,
    /// Set by a failed group-commit fsync (see [`Log::flush_through_end`]).
    fsync_failed: std::sync::atomic::AtomicBool,
    config: RwLock<Arc<LogConfig>>,
    state: RwLock<LogState>,
    /// Held by whoever removes or replaces non-active segments (cleaner, retention).
    cleaner_lock: parking_lot::Mutex<()>,
}

/// fsync of a directory: the names of files created in it become durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn io_err(e: std::io::Error) -> Error {
    Error::Storage(e)
}

/// Where each leader epoch starts along `segments`, read from batch headers
/// (a log from before the checkpoint, or one whose checkpoint was lost).
/// Epochs never decrease along a log, so a segment whose successor starts
/// in the same epoch holds only that epoch and is not scanned.
fn epochs_in(segments: &[Segment]) -> Result<Vec<EpochEntry>> {
    let first_epoch = |seg: &Segment| -> Result<Option<i32>> {
        let mut first = None;
        seg.for_each_header_until(seg.base_offset, |h| {
            first = Some(h.partition_leader_epoch());
            false
        })?;
        Ok(first)
    };
    let mut entries: Vec<EpochEntry> = Vec::new();
    let mut note = |epoch: i32, start_offset: i64| {
        if epoch >= 0 && entries.last().is_none_or(|e| epoch > e.epoch) {
            entries.push(EpochEntry { epoch, start_offset });
        }
    };
    let firsts = segments.iter().map(first_epoch).collect::<Result<Vec<_>>>()?;
    for (i, seg) in segments.iter().enumerate() {
        let Some(first) = firsts[i] else { continue };
        if firsts.get(i + 1).copied().flatten() == Some(first) {
            note(first, seg.base_offset);
            continue;
        }
        seg.for_each_header(seg.base_offset, |h| note(h.partition_leader_epoch(), h.base_offset()))?;
    }
    Ok(entries)
}

/// Producer state as of `next_offset`: the latest snapshot at or below it
/// (newer ones are dropped), then the batches after it replayed.
/// The aborted transactions come from the segments' `.txnindex` files up to
/// the replay's start (entries past it are cut: the replay indexes them again).
fn rebuild_producers(
    dir: &Path,
    segments: &[Segment],
    log_start_offset: i64,
    next_offset: i64,
) -> Result<ProducerStateManager> {
    let (mut producers, snapshot_offset) = ProducerStateManager::load_latest(dir, next_offset)?;
    let replay_from = snapshot_offset.max(log_start_offset);
    let mut aborted = Vec::new();
    for seg in segments {
        let entries = txn_index::retain(&seg.txn_index_path(), |a| a.last_offset < replay_from)?;
        aborted.extend(entries.into_iter().filter(|a| a.last_offset >= log_start_offset));
    }
    // A snapshot written before the indexes existed names its aborted transactions.
    let unindexed: Vec<AbortedTxn> = producers
        .replace_aborted(Vec::new())
        .into_iter()
        .filter(|a| (log_start_offset..replay_from).contains(&a.last_offset) && !aborted.contains(a))
        .collect();
    index_aborted(segments, &unindexed, replay_from)?;
    aborted.extend(unindexed);
    aborted.sort_by_key(|a| a.last_offset);
    producers.replace_aborted(aborted);
    let indexed = producers.aborted_count();
    let start = segments
        .partition_point(|s| s.base_offset <= replay_from)
        .saturating_sub(1);
    for seg in &segments[start..] {
        seg.for_each_header(replay_from, |h| {
            if h.base_offset() >= replay_from {
                producers.replay(h)
            }
        })?;
    }
    let lso = producers.first_unstable_offset().unwrap_or(next_offset);
    index_aborted(segments, producers.aborted_since(indexed), lso)?;
    Ok(producers)
}

/// Adds aborted transactions to the `.txnindex` of the segment holding each
/// one's marker, with the last stable offset after them.
fn index_aborted(segments: &[Segment], aborted: &[AbortedTxn], last_stable_offset: i64) -> std::io::Result<()> {
    let mut i = 0;
    while i < aborted.len() {
        let seg_at = segments
            .partition_point(|s| s.base_offset <= aborted[i].last_offset)
            .saturating_sub(1);
        let Some(seg) = segments.get(seg_at) else { break };
        let next_base = segments.get(seg_at + 1).map_or(i64::MAX, |s| s.base_offset);
        let n = aborted[i..]
            .iter()
            .take_while(|a| a.last_offset < next_base)
            .count()
            .max(1);
        let entries: Vec<(AbortedTxn, i64)> = aborted[i..i + n].iter().map(|a| (*a, last_stable_offset)).collect();
        txn_index::append(&seg.txn_index_path(), &entries)?;
        i += n;
    }
    Ok(())
}

impl Log {
    /// Opens the log in `dir`, creating it when new. `recover_from` is the
    /// recovery point when the last shutdown was not clean: segments from the
    /// one holding it on are scanned and their torn or corrupt tails cut.
    pub fn open(
        dir: &Path,
        config: Arc<LogConfig>,
        recover_from: Option<i64>,
        log_start_checkpoint: Option<i64>,
    ) -> Result<Log> {
        std::fs::create_dir_all(dir)?;
        cleaner::recover_interrupted(dir)?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy().into_owned();
            if name.ends_with(".deleted") || name.ends_with(".tmp") {
                let _ = std::fs::remove_file(dir.join(&name));
            } else if let Some(stem) = name.strip_suffix(LOG_SUFFIX) {
                if let Ok(base) = stem.parse::<i64>() {
                    bases.push(base);
                }
            }
        }
        bases.sort_unstable();
        if bases.is_empty() {
            bases.push(log_start_checkpoint.unwrap_or(0).max(0));
        }
        let interval = config.index_interval_bytes.max(0) as u32;
        let index_bytes = config.segment_index_bytes as usize;
        let mut segments = Vec::with_capacity(bases.len());
        for (i, base) in bases.iter().enumerate() {
            let active = i + 1 == bases.len();
            segments.push(Segment::open(dir, *base, interval, active.then_some(index_bytes))?);
        }

        // Recovery: scan what may be torn; otherwise trust the indexes and read the tail.
        let mut truncated_at: Option<usize> = None;
        if let Some(point) = recover_from {
            let unflushed = bases.iter().skip(1).filter(|next_base| **next_base > point).count() + 1;
            tracing::info!(
                dir = %dir.display(),
                recovery_point = point,
                segments_scanned = unflushed,
                segments = bases.len(),
                "recovering the segments past the recovery point"
            );
        }
        for (i, seg) in segments.iter_mut().enumerate() {
            let next_base = bases.get(i + 1).copied().unwrap_or(i64::MAX);
            let must_scan = match recover_from {
                Some(point) => next_base > point,
                None => false,
            };
            if must_scan || !seg.load_tail()? {
                if !must_scan {
                    tracing::warn!(segment = %seg.log_path().display(), "index does not match the log, rebuilding");
                }
                if seg.recover(|_| {})? > 0 {
                    truncated_at = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = truncated_at {
            // Everything after a torn segment was written after the tear: it cannot be trusted.
            for seg in segments.drain(i + 1..) {
                tracing::warn!(segment = %seg.log_path().display(), "deleting segment after a corrupt one");
                seg.delete()?;
            }
            let last = segments.last_mut().expect("kept the truncated segment");
            last.on_become_active(index_bytes)?;
        }

        let next_offset = segments.last().map_or(0, |s| s.next_offset().max(s.base_offset));
        let first_base = segments.first().map_or(0, |s| s.base_offset);
        let log_start_offset = log_start_checkpoint
            .unwrap_or(first_base)
            .clamp(first_base, next_offset);

        let producers = rebuild_producers(dir, &segments, log_start_offset, next_offset)?;
        let mut epochs = match LeaderEpochCache::load(dir) {
            Some(cache) => cache,
            None => LeaderEpochCache::rebuilt(dir, epochs_in(&segments)?)?,
        };
        // Entries past a torn tail, or below the log start, no longer hold.
        epochs.truncate_from_end(next_offset)?;
        epochs.truncate_from_start(log_start_offset)?;

        Ok(Log {
            dir: dir.to_path_buf(),
            fsync_failed: std::sync::atomic::AtomicBool::new(false),
            config: RwLock::new(config),
            cleaner_lock: parking_lot::Mutex::new(()),
            state: RwLock::new(LogState {
                segments,
                log_start_offset,
                next_offset,
                recovery_point: next_offset,
                roll_flush_pending: None,
                truncations: 0,
                segments_created: 0,
                segments_dir_synced: 0,
                unflushed_messages: 0,
                last_flush_ms: now_ms(),
                producers,
                epochs,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> Arc<LogConfig> {
        self.config.read().clone()
    }

    pub fn set_config(&self, config: Arc<LogConfig>) {
        *self.config.write() = config;
    }

    pub fn log_start_offset(&self) -> i64 {
        self.state.read().log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.state.read().next_offset
    }

    /// How many times the log was truncated since it opened.
    pub fn truncations(&self) -> u64 {
        self.state.read().truncations
    }

    pub fn recovery_point(&self) -> i64 {
        self.state.read().recovery_point
    }

    pub fn size_bytes(&self) -> u64 {
        self.state.read().segments.iter().map(|s| u64::from(s.size())).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.state.read().segments.len()
    }

    /// Idempotent producers this log remembers.
    pub fn producer_count(&self) -> usize {
        self.state.read().producers.len()
    }

    pub fn remove_expired_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        self.state.write().producers.remove_expired(now_ms, expiration_ms)
    }

    pub fn producer_entry(&self, producer_id: i64) -> Option<ProducerEntry> {
        self.state.read().producers.entry(producer_id).cloned()
    }

    /// The producers with state in this log (DescribeProducers).
    pub fn producers(&self) -> Vec<ActiveProducer> {
        self.state.read().producers.active()
    }

    /// Whether the producer, at `epoch`, has a transaction open here.
    pub fn in_transaction(&self, producer_id: i64, epoch: i16) -> bool {
        self.state
            .read()
            .producers
            .entry(producer_id)
            .is_some_and(|e| e.epoch == epoch && e.txn_first_offset.is_some())
    }

    /// Producers with a transaction open here.
    pub fn open_transactions(&self) -> usize {
        self.state.read().producers.open_transactions()
    }

    /// The first offset of the earliest open transaction, if any.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.state.read().producers.first_unstable_offset()
    }

    /// The aborted transactions a read_committed fetch of [from, to) names.
    pub fn aborted_transactions(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.state.read().producers.aborted_between(from, to)
    }

    /// Appends a transaction marker as the leader (a WriteTxnMarkers from
    /// the transaction's coordinator): the control batch ends the
    /// producer's transaction in this partition. A marker of an older
    /// producer epoch than the log's is a zombie coordinator's and refused.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
        marker: Marker,
        leader_epoch: i32,
    ) -> Result<AppendInfo> {
        self.check_online()?;
        let config = self.config();
        let now = now_ms();
        let batch = marker::encode(producer_id, producer_epoch, coordinator_epoch, marker, now)
            .map_err(Error::CorruptMessage)?;
        let mut st = self.state.write();
        st.producers.check_marker(producer_id, producer_epoch)?;
        st.producers.check_coordinator_epoch(producer_id, coordinator_epoch)?;
        self.maybe_roll(&mut st, batch.len(), now, &config)?;
        let offset = st.next_offset;
        let mut header = PatchedHeader::from_batch(&batch);
        header.set_base_offset(offset);
        header.set_partition_leader_epoch(leader_epoch);
        let out = [OutgoingBatch {
            header,
            body: batch.slice(HEADER_SIZE..),
        }];
        let epochs_before = st.epochs.is_new(leader_epoch).then(|| st.epochs.entries().to_vec());
        st.epochs.assign(leader_epoch, offset).map_err(io_err)?;
        if let Err(e) = st.active().append(&out) {
            if let Some(before) = epochs_before {
                let _ = st.epochs.restore(before);
            }
            return Err(io_err(e));
        }
        let indexed = st.producers.aborted_count();
        st.producers
            .complete_txn(producer_id, producer_epoch, coordinator_epoch, marker, offset);
        st.next_offset = offset + 1;
        st.unflushed_messages += 1;
        st.index_aborted_since(indexed).map_err(io_err)?;
        Ok(AppendInfo {
            first_offset: offset,
            last_offset: offset,
            log_append_time: -1,
            log_start_offset: st.log_start_offset,
            records: 1,
            bytes: out[0].size() as u64,
            duplicate: false,
            flush_due: st.unflushed_messages >= config.flush_messages,
            truncations: st.truncations,
        })
    }

    /// Validates a client's record set, assigns offsets and appends it.
    pub fn append_as_leader(&self, records: &Bytes, leader_epoch: i32) -> Result<AppendInfo> {
        self.append_validated(records, leader_epoch, AppendOrigin::Client)
    }

    /// Validates a record set from `origin`, assigns offsets and appends it.
    pub fn append_validated(&self, records: &Bytes, leader_epoch: i32, origin: AppendOrigin) -> Result<AppendInfo> {
        self.check_online()?;
        let config = self.config();
        let batches = batch::split_batches(records)?;
        if batches.is_empty() {
            return Err(Error::CorruptMessage("empty record set".into()));
        }
        let policy = validator::RecordPolicy {
            now_ms: now_ms(),
            create_time: !config.log_append_time(),
            timestamp_before_max_ms: config.message_timestamp_before_max_ms,
            timestamp_after_max_ms: config.message_timestamp_after_max_ms,
            require_keys: config.compact(),
            max_uncompressed: max_uncompressed(&config),
        };
        // Each batch, with its true max timestamp when the header claimed another.
        let mut incoming = Vec::with_capacity(batches.len());
        for b in batches {
            let h = batch::validate_for_append(&b)?;
            if b.len() > config.max_message_bytes as usize {
                return Err(Error::MessageTooLarge {
                    size: b.len(),
                    max: config.max_message_bytes,
                });
            }
            if h.is_control() {
                return Err(Error::InvalidRecord("clients may not send control batches".into()));
            }
            if h.is_transactional() && h.producer_id() < 0 {
                return Err(Error::InvalidRecord("a transactional batch needs a producer id".into()));
            }
            let validated = validator::validate_records(&b, &policy)?;
            let codec = h.compression();
            let fixed_max = validated.max_timestamp != h.max_timestamp();
            incoming.push((recompress_if_needed(b, codec, &config)?, fixed_max.then_some(validated)));
        }

        let log_append_time = if config.log_append_time() { now_ms() } else { -1 };
        let total: usize = incoming.iter().map(|(b, _)| b.len()).sum();
        // The newest timestamp arriving, against which segment.ms is measured (as Kafka).
        let incoming_timestamp = if log_append_time >= 0 {
            log_append_time
        } else {
            incoming
                .iter()
                .map(|(b, true_max)| {
                    true_max.map_or_else(
                        || BatchHeader::parse(b).map_or(-1, |h| h.max_timestamp()),
                        |v| v.max_timestamp,
                    )
                })
                .max()
                .filter(|ts| *ts >= 0)
                .unwrap_or_else(now_ms)
        };
        let mut st = self.state.write();
        self.maybe_roll(&mut st, total, incoming_timestamp, &config)?;

        let mut offset = st.next_offset;
        let mut out = Vec::with_capacity(incoming.len());
        let mut producer_backup: Vec<(i64, Option<ProducerEntry>)> = Vec::new();
        let restore = |st: &mut LogState, backup: Vec<(i64, Option<ProducerEntry>)>| {
            for (pid, entry) in backup.into_iter().rev() {
                st.producers.restore(pid, entry);
            }
        };
        let mut count = 0u64;
        for (b, true_max) in &incoming {
            let h = BatchHeader::parse(b)?;
            let last_offset = offset + h.last_offset_delta() as i64;
            if h.producer_id() >= 0 {
                let check = match origin {
                    AppendOrigin::Client => st.producers.check(
                        h.producer_id(),
                        h.producer_epoch(),
                        h.base_sequence(),
                        h.last_sequence(),
                    ),
                    // A coordinator's transactional offsets carry the producer
                    // but no sequence (Kafka checks sequences of clients only).
                    AppendOrigin::Coordinator => st
                        .producers
                        .check_marker(h.producer_id(), h.producer_epoch())
                        .map(|()| SequenceCheck::Append),
                };
                match check {
                    Ok(SequenceCheck::Append) => {}
                    Ok(SequenceCheck::Duplicate(meta)) => {
                        restore(&mut st, producer_backup);
                        return Ok(AppendInfo {
                            first_offset: meta.first_offset,
                            last_offset: meta.last_offset,
                            log_append_time,
                            log_start_offset: st.log_start_offset,
                            records: 0,
                            bytes: 0,
                            duplicate: true,
                            flush_due: false,
                            truncations: st.truncations,
                        });
                    }
                    Err(e) => {
                        restore(&mut st, producer_backup);
                        return Err(e.into());
                    }
                }
                producer_backup.push((h.producer_id(), st.producers.entry(h.producer_id()).cloned()));
                st.producers.update(
                    h.producer_id(),
                    h.producer_epoch(),
                    BatchMetadata {
                        first_seq: h.base_sequence(),
                        last_seq: h.last_sequence(),
                        first_offset: offset,
                        last_offset,
                        timestamp: h.max_timestamp(),
                    },
                    h.is_transactional(),
                );
            }
            let mut header = PatchedHeader::from_batch(b);
            header.set_base_offset(offset);
            header.set_partition_leader_epoch(leader_epoch);
            let body = b.slice(HEADER_SIZE..);
            if log_append_time >= 0 {
                header.set_log_append_time(log_append_time);
                header.recompute_crc(&body);
            } else if let Some(v) = true_max {
                // As Kafka's LogValidator: the header's max timestamp is the
                // records' own, so a false claim cannot pin a segment against
                // time retention or mislead the time index.
                header.set_max_timestamp(v.max_timestamp);
                header.recompute_crc(&body);
            }
            count += h.records_count() as u64;
            out.push(OutgoingBatch { header, body });
            offset = last_offset + 1;
        }
        let first_offset = st.next_offset;
        // Kept only when this append starts an epoch (rare): a failed write puts it back.
        let epochs_before = st.epochs.is_new(leader_epoch).then(|| st.epochs.entries().to_vec());
        if let Err(e) = st.epochs.assign(leader_epoch, first_offset) {
            restore(&mut st, producer_backup);
            return Err(io_err(e));
        }
        if let Err(e) = st.active().append(&out) {
            restore(&mut st, producer_backup);
            if let Some(before) = epochs_before {
                let _ = st.epochs.restore(before);
            }
            return Err(io_err(e));
        }
        st.next_offset = offset;
        st.unflushed_messages += count as i64;
        Ok(AppendInfo {
            first_offset,
            last_offset: offset - 1,
            log_append_time,
            log_start_offset: st.log_start_offset,
            records: count,
            bytes: total as u64,
            duplicate: false,
            flush_due: st.unflushed_messages >= config.flush_messages,
            truncations: st.truncations,
        })
    }

    /// Appends batches as the leader stored them (a follower's fetch): offsets,
    /// leader epochs and timestamps kept, nothing recompressed. Batches the
    /// log already holds (a fetch that overlapped) are skipped; a gap is an
    /// error, never papered over.
    pub fn append_as_follower(&self, records: &Bytes) -> Result<AppendInfo> {
        self.check_online()?;
        let config = self.config();
        let whole = batch::whole_batches_len(records);
        let batches = batch::split_batches(&records.slice(..whole))?;
        let mut st = self.state.write();
        let mut expected = st.next_offset;
        let mut out = Vec::with_capacity(batches.len());
        let mut headers = Vec::with_capacity(batches.len());
        let mut max_timestamp = -1;
        for b in &batches {
            let h = batch::validate(b)?;
            if h.last_offset() < expected {
                continue;
            }
            if h.base_offset() != expected {
                return Err(Error::CorruptMessage(format!(
                    "replicated batch at offset {} does not follow the log end offset {expected}",
                    h.base_offset()
                )));
            }
            expected = h.last_offset() + 1;
            max_timestamp = max_timestamp.max(h.max_timestamp());
            let body = b.slice(HEADER_SIZE..);
            out.push(OutgoingBatch {
                header: PatchedHeader::from_batch(b),
                body,
            });
            headers.push(h);
        }
        if out.is_empty() {
            return Ok(AppendInfo {
                first_offset: st.next_offset,
                last_offset: st.next_offset - 1,
                log_append_time: -1,
                log_start_offset: st.log_start_offset,
                records: 0,
                bytes: 0,
                duplicate: true,
                flush_due: false,
                truncations: st.truncations,
            });
        }
        let total: usize = out.iter().map(OutgoingBatch::size).sum();
        let timestamp = if max_timestamp >= 0 { max_timestamp } else { now_ms() };
        self.maybe_roll(&mut st, total, timestamp, &config)?;
        // Epochs first: a crash between the two leaves a checkpoint entry past
        // the log end, which the next open cuts, never a missing one.
        let epochs_before = headers
            .iter()
            .any(|h| st.epochs.is_new(h.partition_leader_epoch()))
            .then(|| st.epochs.entries().to_vec());
        for h in &headers {
            st.epochs.assign(h.partition_leader_epoch(), h.base_offset())?;
        }
        if let Err(e) = st.active().append(&out) {
            if let Some(before) = epochs_before {
                let _ = st.epochs.restore(before);
            }
            return Err(io_err(e));
        }
        let mut count = 0u64;
        let indexed = st.producers.aborted_count();
        for h in &headers {
            st.producers.replay(h);
            count += h.records_count() as u64;
        }
        let first_offset = st.next_offset;
        st.next_offset = expected;
        st.unflushed_messages += count as i64;
        st.index_aborted_since(indexed).map_err(io_err)?;
        Ok(AppendInfo {
            first_offset,
            last_offset: expected - 1,
            log_append_time: -1,
            log_start_offset: st.log_start_offset,
            records: count,
            bytes: total as u64,
            duplicate: false,
            flush_due: st.unflushed_messages >= config.flush_messages,
            truncations: st.truncations,
        })
    }

    /// The leader epoch of the last batch; -1 for an empty log.
    pub fn last_epoch(&self) -> i32 {
        self.state.read().epochs.latest_epoch().unwrap_or(-1)
    }

    /// Kafka's endOffsetForEpoch (KIP-101/279): see [`LeaderEpochCache::end_offset_for`].
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let st = self.state.read();
        st.epochs.end_offset_for(epoch, st.next_offset)
    }

    /// A new leader's epoch starts at its log end (Kafka's makeLeader):
    /// from now on a follower diverging from an older epoch is told where
    /// that epoch ends here, even before this leader appends anything.
    pub fn assign_leader_epoch(&self, epoch: i32) -> Result<()> {
        let mut st = self.state.write();
        let end = st.next_offset;
        st.epochs.assign(epoch, end)?;
        Ok(())
    }

    /// Each leader epoch in this log and where it starts.
    pub fn epoch_entries(&self) -> Vec<EpochEntry> {
        self.state.read().epochs.entries().to_vec()
    }

    /// Drops every record at or past `offset` (Kafka's truncateTo): a replica
    /// that follows a new leader cuts what that leader may not have. Indexes
    /// and producer state are rebuilt for what stays.
    pub fn truncate_to(&self, offset: i64) -> Result<()> {
        let _exclusive = self.cleaner_lock.lock();
        let config = self.config();
        let index_bytes = config.segment_index_bytes as usize;
        let mut st = self.state.write();
        if offset >= st.next_offset {
            // Nothing to cut, but an epoch this broker started as leader
            // without appending (at its log end) is not in the leader's log:
            // drop it, or the follower would name it in every fetch.
            let end = st.next_offset;
            st.epochs.truncate_from_end(end)?;
            return Ok(());
        }
        let offset = offset.max(0);
        tracing::info!(dir = %self.dir.display(), from = st.next_offset, to = offset, "truncating the log");
        while st.segments.len() > 1 && st.active().base_offset >= offset {
            let gone = st.segments.pop().expect("more than one segment");
            gone.delete()?;
            st.active().on_become_active(index_bytes)?;
        }
        if st.active().base_offset > offset {
            // Below the only segment: start over empty at `offset`.
            let gone = st.segments.pop().expect("one segment");
            gone.delete()?;
            let interval = config.index_interval_bytes.max(0) as u32;
            st.segments
                .push(Segment::open(&self.dir, offset, interval, Some(index_bytes))?);
            st.segments_created += 1;
            st.log_start_offset = offset;
        } else {
            st.active().truncate_to(offset)?;
        }
        let next = {
            let active = st.active();
            active.next_offset().max(active.base_offset)
        };
        st.next_offset = next;
        st.recovery_point = st.recovery_point.min(next);
        st.log_start_offset = st.log_start_offset.min(next);
        st.producers = rebuild_producers(&self.dir, &st.segments, st.log_start_offset, next)?;
        st.truncations += 1;
        // What stays past the recovery point is still to be flushed.
        st.unflushed_messages = (next - st.recovery_point).max(0);
        st.roll_flush_pending = st.roll_flush_pending.filter(|upto| *upto <= next);
        st.epochs.truncate_from_end(next)?;
        let start = st.log_start_offset;
        st.epochs.truncate_from_start(start)?;
        Ok(())
    }

    /// Drops the whole log and starts it empty at `offset` (Kafka's
    /// truncateFullyAndStartAt): a follower behind its leader's log start.
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<()> {
        let _exclusive = self.cleaner_lock.lock();
        let config = self.config();
        let mut st = self.state.write();
        tracing::info!(dir = %self.dir.display(), from = st.next_offset, to = offset, "starting the log over");
        for seg in st.segments.drain(..) {
            seg.delete()?;
        }
        let interval = config.index_interval_bytes.max(0) as u32;
        st.segments.push(Segment::open(
            &self.dir,
            offset,
            interval,
            Some(config.segment_index_bytes as usize),
        )?);
        st.log_start_offset = offset;
        st.next_offset = offset;
        st.recovery_point = offset;
        st.roll_flush_pending = None;
        st.truncations += 1;
        st.segments_created += 1;
        st.unflushed_messages = 0;
        // Nothing before `offset` is here: no producer or epoch history either.
        ProducerStateManager::clean_snapshots(&self.dir, 0)?;
        st.producers = ProducerStateManager::default();
        st.epochs.truncate_from_end(i64::MIN)?;
        Ok(())
    }

    fn maybe_roll(
        &self,
        st: &mut LogState,
        incoming: usize,
        incoming_timestamp: i64,
        config: &LogConfig,
    ) -> Result<()> {
        let next_offset = st.next_offset;
        let active = st.active();
        if active.is_empty() {
            return Ok(());
        }
        let too_big = u64::from(active.size()) + incoming as u64 > config.segment_bytes as u64;
        let too_old = active
            .time_waited_for_roll(incoming_timestamp)
            .is_some_and(|waited| waited >= config.segment_ms);
        // Relative offsets in the index are 32-bit.
        let offset_overflow = next_offset - active.base_offset > i32::MAX as i64 / 2;
        if too_big || too_old || offset_overflow || active.index_full() {
            self.roll_locked(st, config)?;
        }
        Ok(())
    }

    fn roll_locked(&self, st: &mut LogState, config: &LogConfig) -> Result<()> {
        let next_offset = st.next_offset;
        if st.active().base_offset == next_offset {
            return Ok(());
        }
        st.active().on_become_inactive()?;
        let seg = Segment::open(
            &self.dir,
            next_offset,
            config.index_interval_bytes.max(0) as u32,
            Some(config.segment_index_bytes as usize),
        )?;
        st.producers.write_snapshot(&self.dir, next_offset)?;
        ProducerStateManager::clean_snapshots(&self.dir, 2)?;
        tracing::debug!(dir = %self.dir.display(), base_offset = next_offset, "rolled new segment");
        st.segments.push(seg);
        st.segments_created += 1;
        st.roll_flush_pending = Some(next_offset);
        Ok(())
    }

    /// Kafka's flush on roll: makes the segments a roll finished durable and
    /// moves the recovery point to the new active segment, so a crash
    /// rescans only that. Run off the append path (the flush scheduler): the
    /// fsyncs happen without the log's lock.
    pub fn flush_rolled(&self) -> Result<()> {
        let (upto, files, truncations, created) = {
            let st = self.state.read();
            let Some(upto) = st.roll_flush_pending else {
                return Ok(());
            };
            let files: Vec<_> = st.segments[st.segment_for(st.recovery_point)..]
                .iter()
                .take_while(|s| s.base_offset < upto)
                .map(Segment::files_to_flush)
                .collect();
            (upto, files, st.truncations, st.segments_created)
        };
        self.synced(|| {
            for f in &files {
                f.sync()?;
            }
            sync_dir(&self.dir)
        })?;
        let mut st = self.state.write();
        st.segments_dir_synced = st.segments_dir_synced.max(created);
        if st.roll_flush_pending == Some(upto) {
            st.roll_flush_pending = None;
        }
        // A truncation meanwhile: what is below `upto` now may be new, unsynced.
        if st.truncations == truncations {
            st.recovery_point = st.recovery_point.max(upto.min(st.next_offset));
        }
        Ok(())
    }

    /// Runs fsyncs; the first failure takes the log offline for good (until
    /// a restart recovers it), as Kafka takes the log directory offline: a
    /// later fsync succeeding says nothing of the pages the failed one lost.
    fn synced(&self, f: impl FnOnce() -> std::io::Result<()>) -> Result<()> {
        self.check_online()?;
        f().map_err(|e| {
            self.fsync_failed.store(true, std::sync::atomic::Ordering::Release);
            tracing::error!(dir = %self.dir.display(), error = %e, "fsync failed: the log is offline");
            Error::Storage(e)
        })
    }

    /// Err once an fsync of this log failed.
    pub fn check_online(&self) -> Result<()> {
        if self.fsync_failed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Storage(std::io::Error::other(
                "an earlier fsync of this log failed; it is offline until restarted",
            )));
        }
        Ok(())
    }

    /// Rolls the active segment now (tests, admin).
    pub fn roll(&self) -> Result<()> {
        let config = self.config();
        let mut st = self.state.write();
        self.roll_locked(&mut st, &config)
    }

    /// Rolls when the active segment is older than `segment.ms` even without appends.
    pub fn roll_if_expired(&self) -> Result<()> {
        let config = self.config();
        let mut st = self.state.write();
        let expired = st
            .active()
            .time_waited_for_roll(now_ms())
            .is_some_and(|waited| waited >= config.segment_ms);
        if expired {
            self.roll_locked(&mut st, &config)?;
        }
        Ok(())
    }

    /// The file region to serve from `offset`, never past `max_offset` (the high watermark).
    pub fn read_slice(&self, offset: i64, max_bytes: usize, max_offset: i64, min_one: bool) -> Result<SliceInfo> {
        let st = self.state.read();
        let (start, end) = (st.log_start_offset, st.next_offset);
        if offset < start || offset > end {
            return Err(Error::OffsetOutOfRange { offset, start, end });
        }
        let mut slice = None;
        if offset < end.min(max_offset) {
            // Gaps (compaction, deleted records) may leave a segment with nothing at or past `offset`.
            for seg in &st.segments[st.segment_for(offset)..] {
                if let Some(s) = seg.slice(offset, max_bytes, max_offset, min_one)? {
                    slice = Some(s);
                    break;
                }
            }
        }
        Ok(SliceInfo {
            slice,
            log_start_offset: start,
            log_end_offset: end,
        })
    }

    /// Reads whole batches from `offset`, never past `max_offset` (the high watermark).
    pub fn read(&self, offset: i64, max_bytes: usize, max_offset: i64, min_one: bool) -> Result<ReadInfo> {
        let info = self.read_slice(offset, max_bytes, max_offset, min_one)?;
        let mut records = match &info.slice {
            Some(s) => s.read()?,
            None => Bytes::new(),
        };
        let whole = batch::complete_batches(&records)
            .last()
            .map_or(0, |(at, h)| at + h.total_size());
        records.truncate(whole);
        Ok(ReadInfo {
            records,
            log_start_offset: info.log_start_offset,
            log_end_offset: info.log_end_offset,
        })
    }

    /// The first offset whose record timestamp is >= `timestamp`, with that timestamp.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        let st = self.state.read();
        let start = st.log_start_offset;
        for seg in &st.segments[st.segment_for(start)..] {
            if seg.max_timestamp() < timestamp {
                continue;
            }
            let Some(batch) = seg.find_batch_by_timestamp(timestamp, start)? else {
                continue;
            };
            let h = BatchHeader::parse(&batch)?;
            let mut buf = batch.clone();
            // Only here are records decoded: the exact offset lies inside the batch.
            if let Ok(set) = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf) {
                let log_append = h.is_log_append_time();
                for r in set.records {
                    let ts = if log_append { h.max_timestamp() } else { r.timestamp };
                    if ts >= timestamp && r.offset >= start {
                        return Ok(Some((r.offset, ts)));
                    }
                }
            }
            return Ok(Some((h.base_offset().max(start), h.max_timestamp())));
        }
        Ok(None)
    }

    /// Offset and timestamp of the first record holding the largest
    /// timestamp at or past the log start offset (ListOffsets -3, KIP-734).
    /// As Kafka since KAFKA-16310, the batch holding it is read to find the
    /// record itself, not the batch's last offset.
    pub fn max_timestamp_offset(&self) -> Result<(i64, i64)> {
        let max = {
            let st = self.state.read();
            let start = st.log_start_offset;
            let mut max = -1;
            for seg in &st.segments[st.segment_for(start)..] {
                if seg.base_offset >= start {
                    max = max.max(seg.max_timestamp());
                } else {
                    // Records below the log start offset do not count.
                    seg.for_each_header(start, |h| {
                        if h.last_offset() >= start {
                            max = max.max(h.max_timestamp());
                        }
                    })?;
                }
            }
            max
        };
        if max < 0 {
            return Ok((-1, -1));
        }
        Ok(self.offset_for_timestamp(max)?.unwrap_or((-1, -1)))
    }

    /// Deletes whole segments past `retention.ms` / `retention.bytes` or below
    /// the log start offset. The active segment is never deleted.
    pub fn delete_old_segments(&self) -> Result<usize> {
        let config = self.config();
        let now = now_ms();
        let _no_clean = self.cleaner_lock.lock();
        let mut st = self.state.write();
        let mut total: i64 = st.segments.iter().map(|s| s.size() as i64).sum();
        let mut n = 0;
        while n + 1 < st.segments.len() {
            let seg = &st.segments[n];
            let below_start = st.segments[n + 1].base_offset <= st.log_start_offset;
            let by_time = config.delete()
                && config.retention_ms >= 0
                && seg.max_timestamp() >= 0
                && now - seg.max_timestamp() > config.retention_ms;
            let by_size =
                config.delete() && config.retention_bytes >= 0 && total - seg.size() as i64 >= config.retention_bytes;
            if !(below_start || by_time || by_size) {
                break;
            }
            total -= seg.size() as i64;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let removed: Vec<Segment> = st.segments.drain(..n).collect();
        let new_start = st.segments[0].base_offset;
        st.log_start_offset = st.log_start_offset.max(new_start);
        let start = st.log_start_offset;
        st.epochs.truncate_from_start(start)?;
        st.producers.prune_aborted(start);
        for seg in removed {
            tracing::info!(segment = %seg.log_path().display(), "deleting segment by retention");
            seg.delete()?;
        }
        Ok(n)
    }

    /// DeleteRecords: moves the log start offset forward (up to the high watermark).
    pub fn delete_records_before(&self, offset: i64, high_watermark: i64) -> Result<i64> {
        {
            let mut st = self.state.write();
            let (start, end) = (st.log_start_offset, st.next_offset);
            let target = if offset == -1 { high_watermark } else { offset };
            if target < 0 || target > high_watermark {
                return Err(Error::OffsetOutOfRange {
                    offset: target,
                    start,
                    end,
                });
            }
            st.log_start_offset = st.log_start_offset.max(target);
            let start = st.log_start_offset;
            st.epochs.truncate_from_start(start)?;
            st.producers.prune_aborted(start);
        }
        self.delete_old_segments()?;
        Ok(self.log_start_offset())
    }

    fn flush_locked(&self, st: &mut LogState) -> Result<()> {
        let from = st.segment_for(st.recovery_point);
        let new_files = st.segments_created > st.segments_dir_synced;
        self.synced(|| {
            for seg in &st.segments[from..] {
                seg.flush()?;
            }
            if new_files {
                sync_dir(&self.dir)?;
            }
            Ok(())
        })?;
        st.segments_dir_synced = st.segments_created;
        st.recovery_point = st.next_offset;
        st.unflushed_messages = 0;
        st.last_flush_ms = now_ms();
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.flush_locked(&mut self.state.write())
    }

    /// A group commit: fsyncs everything appended so far without holding
    /// the log's lock, so appends go on meanwhile and the next flush covers
    /// them all. Answers the offset below which the log is now durable.
    /// Only the active segment's data needs syncing here: a crash rescans
    /// the segment holding the recovery point, rebuilding its indexes.
    ///
    /// A failed fsync fails every later one too (until a restart recovers
    /// the log), as Kafka takes the log directory offline: a later fsync
    /// succeeding says nothing of the pages the failed one lost.
    pub fn flush_through_end(&self) -> Result<i64> {
        self.check_online()?;
        let (end, active, rolled, truncations, created, covered) = {
            let st = self.state.read();
            if st.recovery_point >= st.next_offset {
                return Ok(st.recovery_point);
            }
            let last = st.segments.len() - 1;
            let rolled: Vec<_> = st.segments[st.segment_for(st.recovery_point)..last]
                .iter()
                .map(Segment::files_to_flush)
                .collect();
            (
                st.next_offset,
                st.segments[last].files_to_flush(),
                rolled,
                st.truncations,
                (st.segments_created > st.segments_dir_synced).then_some(st.segments_created),
                st.unflushed_messages,
            )
        };
        self.synced(|| {
            for f in &rolled {
                f.sync()?;
            }
            active.sync_log()?;
            if created.is_some() {
                sync_dir(&self.dir)?;
            }
            Ok(())
        })?;
        let mut st = self.state.write();
        if let Some(created) = created {
            st.segments_dir_synced = st.segments_dir_synced.max(created);
        }
        // A truncation meanwhile: what is below `end` now may be new, unsynced.
        if st.truncations == truncations && end > st.recovery_point {
            st.recovery_point = end.min(st.next_offset);
            st.unflushed_messages = (st.unflushed_messages - covered).max(0);
        }
        st.last_flush_ms = now_ms();
        Ok(st.recovery_point)
    }

    /// Flushes when unflushed data is older than `flush.ms`.
    pub fn flush_if_due(&self) -> Result<()> {
        let config = self.config();
        let due = {
            let st = self.state.read();
            st.unflushed_messages > 0 && now_ms() - st.last_flush_ms >= config.flush_ms
        };
        if due {
            self.flush()?;
        }
        Ok(())
    }

    /// Clean close: trim the active indexes, flush, snapshot producer state at the end.
    pub fn close(&self) -> Result<()> {
        let mut st = self.state.write();
        st.active().on_become_inactive()?;
        self.flush_locked(&mut st)?;
        let end = st.next_offset;
        st.producers.write_snapshot(&self.dir, end)?;
        Ok(())
    }
}

/// What one produced batch may decompress to: 128 times `max.message.bytes`
/// (128 MiB at the default), far above real data's ratios, so a small
/// hostile batch cannot make the broker inflate gigabytes.
pub fn max_uncompressed(config: &LogConfig) -> usize {
    (config.max_message_bytes.max(1 << 20) as usize).saturating_mul(128)
}

/// Recompresses a batch when the topic's `compression.type` names another codec.
fn recompress_if_needed(batch: Bytes, codec: i16, config: &LogConfig) -> Result<Bytes> {
    use kafka_protocol::records::{Compression, RecordBatchDecoder};
    let target = match config.compression_type.as_str() {
        "producer" => return Ok(batch),
        "uncompressed" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => return Err(Error::InvalidConfig(format!("compression.type {other}"))),
    };
    if target as i16 == codec {
        return Ok(batch);
    }
    let header = BatchHeader::parse(&batch)?;
    let (producer_id, epoch, base_sequence) = (header.producer_id(), header.producer_epoch(), header.base_sequence());
    let mut buf = batch.clone();
    let mut set = RecordBatchDecoder::decode(&mut buf).map_err(|e| Error::CorruptMessage(e.to_string()))?;
    batch::encode_records(&mut set.records, target, producer_id, epoch, base_sequence).map_err(Error::CorruptMessage)
}

#[cfg(test)]
mod tests;
