//! The log cleaner: compaction of `cleanup.policy=compact` logs.
//!
//! For the segments before the active one (and older than
//! `min.compaction.lag.ms`), keep the newest record of each key, keep
//! tombstones until `delete.retention.ms` after they were first cleaned
//! (KIP-534), and keep every surviving record's offset and bytes (batches
//! keep their base offset and last offset delta; gaps are allowed).
//! Transactions, as Kafka's cleaner treats them: only segments below the
//! first open transaction are cleaned; an aborted transaction's batches are
//! removed and never supersede a committed record; a marker stays while any
//! batch of its transaction does, then gets a delete horizon like a
//! tombstone and goes after it (KIP-534); a cleaned segment's `.txnindex`
//! keeps the aborted transactions whose markers stayed. A pass runs when
//! the dirty part (written since the last pass) reaches
//! `min.cleanable.dirty.ratio`, when dirty data is older than
//! `max.compaction.lag.ms`, or when kept tombstones are due. Segments are
//! streamed batch by batch and the key map is bounded by
//! `log.cleaner.dedupe.buffer.size`.
//!
//! Crash safety: a group of segments is rewritten into `<base>.cleaned`,
//! fsynced and renamed to `<base>.swap`; then the old segments are deleted
//! and the swap file becomes `<base>.log`. At open, a `.cleaned` file is
//! discarded and a `.swap` file completes its swap, so a crash at any point
//! leaves either the old segments or the new one, never a mix.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::batch::{self, BatchHeader};
use super::marker::{self, Marker};
use super::producer_state::AbortedTxn;
use super::record;
use super::segment::{file_path, now_ms, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use super::txn_index::TXN_INDEX_SUFFIX;
use super::{Log, LogState};
use crate::error::Result;

pub const CLEANED_SUFFIX: &str = ".cleaned";
pub const SWAP_SUFFIX: &str = ".swap";
/// Per-partition file holding the offset up to which the log is clean.
pub const CLEANER_CHECKPOINT: &str = "cleaner-offset-checkpoint";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub segments_before: usize,
    pub segments_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
}

/// Completes or discards a clean interrupted by a crash (before the log opens).
pub fn recover_interrupted(dir: &Path) -> std::io::Result<()> {
    let mut swaps = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.ends_with(CLEANED_SUFFIX) {
            std::fs::remove_file(&path)?;
        } else if let Some(stem) = name.strip_suffix(SWAP_SUFFIX) {
            if let Ok(base) = stem.parse::<i64>() {
                swaps.push((base, path));
            }
        }
    }
    for (base, swap) in swaps {
        let data = std::fs::read(&swap)?;
        let end = batch::complete_batches(&data)
            .last()
            .map_or(base, |(_, h)| h.next_offset());
        // The swap replaces every segment that starts inside its offset range.
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let Some(stem) = name.split('.').next() else { continue };
            let Ok(seg_base) = stem.parse::<i64>() else { continue };
            let is_segment_file = [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX]
                .iter()
                .any(|s| name.ends_with(s));
            if is_segment_file && seg_base >= base && seg_base < end {
                std::fs::remove_file(&path)?;
            }
        }
        std::fs::rename(&swap, file_path(dir, base, LOG_SUFFIX))?;
        tracing::info!(dir = %dir.display(), base, "completed an interrupted log clean");
    }
    Ok(())
}

/// Stored batches were bounded when appended; this only keeps a damaged one
/// from costing more than that.
const STORED_MAX_UNCOMPRESSED: usize = 1 << 30;

/// The cleaner's checkpoint: the offset up to which the log is clean, and the
/// earliest KIP-534 delete horizon among the tombstones it kept (i64::MAX
/// when none), so a log whose tombstones are due is cleaned even without new
/// dirty data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpoint {
    clean_up_to: i64,
    next_delete_horizon: i64,
}

fn read_checkpoint(dir: &Path) -> Checkpoint {
    let text = std::fs::read_to_string(dir.join(CLEANER_CHECKPOINT)).unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse::<i64>().ok());
    Checkpoint {
        clean_up_to: fields.next().flatten().unwrap_or(0),
        next_delete_horizon: fields.next().flatten().unwrap_or(i64::MAX),
    }
}

fn write_checkpoint(dir: &Path, c: Checkpoint) -> std::io::Result<()> {
    let text = format!("{}\n{}\n", c.clean_up_to, c.next_delete_horizon);
    super::manager::write_atomically(&dir.join(CLEANER_CHECKPOINT), text.as_bytes())
}

/// A cleanable segment, as seen when the pass starts.
struct Source {
    base: i64,
    next_offset: i64,
    size: u32,
    data_path: PathBuf,
}

/// Kafka's SkimpyOffsetMap: the latest offset of each key of the dirty
/// section, under a 128-bit fingerprint of the key rather than the key, with
/// at most `log.cleaner.dedupe.buffer.size` / 24 entries (a 16-byte hash and
/// an 8-byte offset, as Kafka sizes it). When it is full, the pass cleans only
/// as far as the map reaches; the next pass goes on from there.
struct OffsetMap {
    hashers: (RandomState, RandomState),
    latest: HashMap<u128, i64>,
    capacity: usize,
}

impl OffsetMap {
    fn new(dedupe_buffer_bytes: usize) -> OffsetMap {
        OffsetMap {
            hashers: (RandomState::new(), RandomState::new()),
            latest: HashMap::new(),
            capacity: (dedupe_buffer_bytes / 24).max(1),
        }
    }

    fn fingerprint(&self, key: &[u8]) -> u128 {
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    fn has_room_for(&self, records: usize) -> bool {
        self.latest.len() + records <= self.capacity
    }

    fn put(&mut self, key: &[u8], offset: i64) {
        let fp = self.fingerprint(key);
        self.latest.insert(fp, offset);
    }

    fn latest(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(&self.fingerprint(key)).copied()
    }
}

/// Streams the whole batches of a segment file, one at a time: a pass never
/// holds a segment in memory. `f` returns false to stop.
fn for_each_batch(path: &Path, mut f: impl FnMut(Bytes) -> Result<bool>) -> Result<()> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut pos = 0u64;
    while pos + batch::LOG_OVERHEAD as u64 <= len {
        let mut prefix = [0u8; batch::LOG_OVERHEAD];
        reader.read_exact(&mut prefix)?;
        let size = batch::total_size(&prefix)?;
        if pos + size as u64 > len {
            break; // a torn tail: recovery's to cut, not the cleaner's to read
        }
        let mut buf = vec![0u8; size];
        buf[..batch::LOG_OVERHEAD].copy_from_slice(&prefix);
        reader.read_exact(&mut buf[batch::LOG_OVERHEAD..])?;
        pos += size as u64;
        if !f(Bytes::from(buf))? {
            break;
        }
    }
    Ok(())
}

/// What a pass knows of transactions (Kafka's CleanedTransactionMetadata):
/// the aborted ones, and, as batches pass in offset order, which
/// transactions still have a batch in the log, so that their marker stays.
struct TxnCleaning {
    /// Each producer's aborted transactions: [first offset, marker offset).
    aborted: HashMap<i64, Vec<(i64, i64)>>,
    /// Producers whose current committed transaction keeps a batch.
    committed_kept: HashSet<i64>,
    /// Producers whose current aborted transaction keeps a batch (an empty
    /// one kept for the producer's sequence).
    aborted_kept: HashSet<i64>,
}

impl TxnCleaning {
    fn new(aborted: &[AbortedTxn]) -> TxnCleaning {
        let mut by_producer: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for a in aborted {
            by_producer
                .entry(a.producer_id)
                .or_default()
                .push((a.first_offset, a.last_offset));
        }
        TxnCleaning {
            aborted: by_producer,
            committed_kept: HashSet::new(),
            aborted_kept: HashSet::new(),
        }
    }

    /// Whether a transactional batch at `offset` is part of an aborted transaction.
    fn is_aborted(&self, h: &BatchHeader<'_>) -> bool {
        let offset = h.base_offset();
        h.is_transactional()
            && !h.is_control()
            && self
                .aborted
                .get(&h.producer_id())
                .is_some_and(|txns| txns.iter().any(|&(first, end)| first <= offset && offset < end))
    }

    /// A transactional batch stays in the log (with records or empty).
    fn kept(&mut self, h: &BatchHeader<'_>) {
        if !h.is_transactional() || h.is_control() {
            return;
        }
        if self.is_aborted(h) {
            self.aborted_kept.insert(h.producer_id());
        } else {
            self.committed_kept.insert(h.producer_id());
        }
    }

    /// The aborted transaction a kept abort marker ends, for the cleaned
    /// segment's `.txnindex`.
    fn ended_by(&self, raw: &[u8], h: &BatchHeader<'_>) -> Option<AbortedTxn> {
        if !h.is_control() || marker::decode(raw) != Some(Marker::Abort) {
            return None;
        }
        let (first_offset, last_offset) = *self
            .aborted
            .get(&h.producer_id())?
            .iter()
            .find(|(_, end)| *end == h.base_offset())?;
        Some(AbortedTxn {
            producer_id: h.producer_id(),
            first_offset,
            last_offset,
        })
    }

    /// Whether the marker ending `producer_id`'s transaction may go: no batch
    /// of that transaction is left (replaying a kept batch without its
    /// marker would reopen the transaction).
    fn marker_may_go(&mut self, producer_id: i64, marker: Option<Marker>) -> bool {
        match marker {
            Some(Marker::Commit) => !self.committed_kept.remove(&producer_id),
            Some(Marker::Abort) => !self.aborted_kept.remove(&producer_id),
            None => false,
        }
    }
}

/// What one cleaning pass decides for the records of a batch.
struct Cleaning<'a> {
    map: &'a OffsetMap,
    /// Records at or past this offset were not in the map: they are kept.
    map_end: i64,
    now: i64,
    delete_retention_ms: i64,
}

/// A batch after cleaning.
enum Cleaned {
    /// Every record stays and nothing changes: the batch as stored.
    Unchanged,
    /// Some records stay, or the tombstones got their delete horizon.
    Rewritten { batch: Bytes, delete_horizon: Option<i64> },
    /// Nothing stays.
    Empty,
}

impl Cleaning<'_> {
    /// Keeps the newest record of each key and tombstones until their KIP-534
    /// delete horizon: set to now + delete.retention.ms the first time a
    /// tombstone is cleaned, so the consumers that read it have that long,
    /// whatever its CreateTime. Surviving records keep their bytes; the
    /// batch keeps its base offset, last offset delta, producer and sequence.
    /// An aborted transaction's batch goes whole; a marker is [`Self::marker`]'s.
    fn batch(&self, raw: &Bytes, removed: &mut u64, txns: &mut TxnCleaning) -> Result<Cleaned> {
        let h = BatchHeader::parse(raw)?;
        if h.is_control() {
            return self.marker(raw, &h, removed, txns);
        }
        if txns.is_aborted(&h) {
            *removed += h.records_count().max(0) as u64;
            return Ok(Cleaned::Empty);
        }
        let cleaned = self.records(raw, &h, removed)?;
        if !matches!(cleaned, Cleaned::Empty) {
            txns.kept(&h);
        }
        Ok(cleaned)
    }

    /// A marker whose transaction left no batch gets a delete horizon the
    /// first time, and goes once it is past; otherwise it stays as stored.
    fn marker(&self, raw: &Bytes, h: &BatchHeader<'_>, removed: &mut u64, txns: &mut TxnCleaning) -> Result<Cleaned> {
        if !txns.marker_may_go(h.producer_id(), marker::decode(raw)) {
            return Ok(Cleaned::Unchanged);
        }
        match h.delete_horizon() {
            Some(horizon) if self.now >= horizon => {
                *removed += h.records_count().max(0) as u64;
                Ok(Cleaned::Empty)
            }
            Some(_) => Ok(Cleaned::Unchanged),
            None => {
                let mut records = Vec::new();
                record::for_each(
                    record::records_section(raw, STORED_MAX_UNCOMPRESSED)?,
                    h.records_count(),
                    |_, r| {
                        records.push(r);
                        Ok(())
                    },
                )?;
                let horizon = self.now + self.delete_retention_ms;
                Ok(Cleaned::Rewritten {
                    batch: rewrite(raw, h, &records, Some(horizon))?,
                    delete_horizon: Some(horizon),
                })
            }
        }
    }

    fn records(&self, raw: &Bytes, h: &BatchHeader<'_>, removed: &mut u64) -> Result<Cleaned> {
        let base = h.base_offset();
        let tombstones_due = h.delete_horizon().is_some_and(|horizon| self.now >= horizon);
        let mut survivors = Vec::new();
        let mut dropped = 0u64;
        let mut tombstones = false;
        record::for_each(
            record::records_section(raw, STORED_MAX_UNCOMPRESSED)?,
            h.records_count(),
            |_, r| {
                let offset = base + i64::from(r.offset_delta);
                let superseded = offset < self.map_end
                    && r.key
                        .as_ref()
                        .is_some_and(|k| self.map.latest(k).is_some_and(|latest| offset < latest));
                if superseded || (!r.has_value && tombstones_due) {
                    dropped += 1;
                } else {
                    tombstones |= !r.has_value;
                    survivors.push(r);
                }
                Ok(())
            },
        )?;
        *removed += dropped;
        let new_horizon = (tombstones && h.delete_horizon().is_none()).then(|| self.now + self.delete_retention_ms);
        if dropped == 0 && new_horizon.is_none() {
            return Ok(Cleaned::Unchanged);
        }
        if survivors.is_empty() {
            return Ok(Cleaned::Empty);
        }
        let delete_horizon = if tombstones {
            new_horizon.or(h.delete_horizon())
        } else {
            None
        };
        Ok(Cleaned::Rewritten {
            batch: rewrite(raw, h, &survivors, new_horizon)?,
            delete_horizon,
        })
    }
}

/// The batch with only `survivors`, and with a delete horizon when one is
/// newly set (the base timestamp becomes the horizon: each record's
/// timestamp delta is re-framed).
fn rewrite(
    raw: &Bytes,
    h: &BatchHeader<'_>,
    survivors: &[record::RecordView],
    new_horizon: Option<i64>,
) -> Result<Bytes> {
    let mut header = batch::PatchedHeader::from_batch(raw);
    let mut section = BytesMut::new();
    match new_horizon {
        Some(horizon) => {
            let base_timestamp = h.base_timestamp();
            for r in survivors {
                section.extend_from_slice(&r.with_timestamp_delta(base_timestamp + r.timestamp_delta - horizon));
            }
            header.set_delete_horizon(horizon);
        }
        None => survivors.iter().for_each(|r| section.extend_from_slice(&r.raw)),
    }
    let body = record::compress(h.compression(), &section)?;
    header.set_records(survivors.len() as i32, body.len());
    header.recompute_crc(&body);
    let mut out = BytesMut::with_capacity(batch::HEADER_SIZE + body.len());
    out.extend_from_slice(&header.0);
    out.extend_from_slice(&body);
    Ok(out.freeze())
}

/// An empty batch in place of one whose records all went: kept when it is
/// its producer's last, so the producer's sequence survives compaction (as
/// Kafka's cleaner retains it).
fn empty_batch(raw: &[u8]) -> Bytes {
    let mut header = batch::PatchedHeader::from_batch(raw);
    header.set_uncompressed();
    header.set_records(0, 0);
    header.recompute_crc(&[]);
    Bytes::copy_from_slice(&header.0)
}

impl Log {
    /// One cleaning pass if the log is compacted and due; returns what it did.
    /// `dedupe_buffer_bytes` bounds the pass's offset map
    /// (`log.cleaner.dedupe.buffer.size`).
    pub fn clean(&self, dedupe_buffer_bytes: usize) -> Result<Option<CleanStats>> {
        let config = self.config();
        if !config.compact() {
            return Ok(None);
        }
        let _cleaning = self.cleaner_lock.lock();
        let now = now_ms();
        let checkpoint = read_checkpoint(&self.dir);
        // Segments below the first open transaction only: whether its batches
        // are committed or aborted is not known yet (Kafka's first unstable offset).
        let (sources, aborted): (Vec<Source>, Vec<AbortedTxn>) = {
            let st = self.state.read();
            let n = st.segments.len().saturating_sub(1);
            let unstable = st.producers.first_unstable_offset().unwrap_or(i64::MAX);
            let sources = st.segments[..n]
                .iter()
                .take_while(|s| {
                    (config.min_compaction_lag_ms <= 0 || s.max_timestamp() < now - config.min_compaction_lag_ms)
                        && s.next_offset() <= unstable
                })
                .map(|s| Source {
                    base: s.base_offset,
                    next_offset: s.next_offset(),
                    size: s.size(),
                    data_path: s.log_path().to_path_buf(),
                })
                .collect();
            (sources, st.producers.aborted_between(0, i64::MAX))
        };
        let mut txns = TxnCleaning::new(&aborted);
        if sources.is_empty() {
            return Ok(None);
        }
        let total: u64 = sources.iter().map(|s| u64::from(s.size)).sum();
        let dirty: u64 = sources
            .iter()
            .filter(|s| s.next_offset > checkpoint.clean_up_to)
            .map(|s| u64::from(s.size))
            .sum();
        let ratio = if total == 0 { 0.0 } else { dirty as f64 / total as f64 };
        let overdue = config.max_compaction_lag_ms < i64::MAX && {
            let st = self.state.read();
            st.segments.iter().any(|s| {
                s.next_offset() > checkpoint.clean_up_to
                    && s.max_timestamp() >= 0
                    && now - s.max_timestamp() > config.max_compaction_lag_ms
            })
        };
        let tombstones_due = checkpoint.next_delete_horizon <= now;
        let dirty_due = dirty > 0 && (ratio >= config.min_cleanable_dirty_ratio || overdue);
        if !dirty_due && !tombstones_due {
            return Ok(None);
        }

        // Pass 1: the newest offset of every key of the dirty section, as far as the map holds.
        let mut map = OffsetMap::new(dedupe_buffer_bytes);
        let mut map_end = checkpoint.clean_up_to.max(sources[0].base);
        let mut full = false;
        for src in &sources {
            if src.next_offset <= map_end {
                continue;
            }
            for_each_batch(&src.data_path, |raw| {
                let h = BatchHeader::parse(&raw)?;
                // An aborted record never supersedes a committed one.
                if h.next_offset() <= map_end || h.is_control() || txns.is_aborted(&h) {
                    map_end = map_end.max(h.next_offset());
                    return Ok(true);
                }
                if !map.has_room_for(h.records_count().max(0) as usize) {
                    full = true;
                    return Ok(false);
                }
                let base = h.base_offset();
                record::for_each(
                    record::records_section(&raw, STORED_MAX_UNCOMPRESSED)?,
                    h.records_count(),
                    |_, r| {
                        if let Some(k) = &r.key {
                            map.put(k, base + i64::from(r.offset_delta));
                        }
                        Ok(())
                    },
                )?;
                map_end = h.next_offset();
                Ok(true)
            })?;
            if full {
                break;
            }
        }

        // Pass 2: rewrite groups of segments (at most segment.bytes of input each) up to the map's end.
        let cleanable: Vec<&Source> = sources.iter().filter(|s| s.base < map_end).collect();
        let mut stats = CleanStats {
            segments_before: cleanable.len(),
            bytes_before: cleanable.iter().map(|s| u64::from(s.size)).sum(),
            ..Default::default()
        };
        let cleaning = Cleaning {
            map: &map,
            map_end,
            now,
            delete_retention_ms: config.delete_retention_ms,
        };
        let mut next_delete_horizon = i64::MAX;
        let mut start = 0;
        while start < cleanable.len() {
            let mut end = start + 1;
            let mut size = u64::from(cleanable[start].size);
            while end < cleanable.len() && size + u64::from(cleanable[end].size) <= config.segment_bytes as u64 {
                size += u64::from(cleanable[end].size);
                end += 1;
            }
            let (bytes, removed, horizon) = self.clean_group(&cleanable[start..end], &cleaning, &mut txns)?;
            stats.bytes_after += bytes;
            stats.records_removed += removed;
            stats.segments_after += 1;
            next_delete_horizon = next_delete_horizon.min(horizon);
            start = end;
        }
        write_checkpoint(
            &self.dir,
            Checkpoint {
                clean_up_to: map_end,
                next_delete_horizon,
            },
        )?;
        tracing::info!(
            dir = %self.dir.display(),
            before = stats.bytes_before,
            after = stats.bytes_after,
            removed = stats.records_removed,
            clean_up_to = map_end,
            map_full = full,
            "cleaned log"
        );
        Ok(Some(stats))
    }

    /// Whether this batch is the last its producer wrote (its sequence must survive).
    fn is_last_batch_of_producer(&self, h: &BatchHeader<'_>) -> bool {
        h.producer_id() >= 0
            && self
                .state
                .read()
                .producers
                .entry(h.producer_id())
                .and_then(|e| e.batches.back())
                .is_some_and(|b| b.last_offset == h.last_offset())
    }

    /// Rewrites one group of segments into one and swaps it in; returns the
    /// bytes written, the records removed and the earliest delete horizon kept.
    fn clean_group(
        &self,
        group: &[&Source],
        cleaning: &Cleaning<'_>,
        txns: &mut TxnCleaning,
    ) -> Result<(u64, u64, i64)> {
        let base = group[0].base;
        let cleaned = file_path(&self.dir, base, CLEANED_SUFFIX);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&cleaned)?);
        let mut written = 0u64;
        let mut removed = 0u64;
        let mut next_delete_horizon = i64::MAX;
        let mut kept_aborts = Vec::new();
        let outcome = group.iter().try_for_each(|src| {
            for_each_batch(&src.data_path, |raw| {
                let kept = match cleaning.batch(&raw, &mut removed, txns)? {
                    Cleaned::Unchanged => {
                        if let Some(h) = BatchHeader::parse(&raw)?.delete_horizon() {
                            next_delete_horizon = next_delete_horizon.min(h);
                        }
                        raw
                    }
                    Cleaned::Rewritten { batch, delete_horizon } => {
                        next_delete_horizon = next_delete_horizon.min(delete_horizon.unwrap_or(i64::MAX));
                        batch
                    }
                    Cleaned::Empty => {
                        let h = BatchHeader::parse(&raw)?;
                        if !self.is_last_batch_of_producer(&h) {
                            return Ok(true);
                        }
                        txns.kept(&h);
                        empty_batch(&raw)
                    }
                };
                kept_aborts.extend(txns.ended_by(&kept, &BatchHeader::parse(&kept)?));
                out.write_all(&kept)?;
                written += kept.len() as u64;
                Ok(true)
            })
        });
        if let Err(e) = outcome {
            let _ = std::fs::remove_file(&cleaned);
            return Err(e);
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        let swap = file_path(&self.dir, base, SWAP_SUFFIX);
        std::fs::rename(&cleaned, &swap)?;
        std::fs::File::open(&self.dir)?.sync_all()?;

        // Swap: drop the old segments, put the new one in their place.
        let config = self.config();
        let mut st = self.state.write();
        let bases: Vec<i64> = group.iter().map(|s| s.base).collect();
        let old: Vec<Segment> = {
            let LogState { segments, .. } = &mut *st;
            let (gone, kept): (Vec<Segment>, Vec<Segment>) = std::mem::take(segments)
                .into_iter()
                .partition(|s| bases.contains(&s.base_offset));
            *segments = kept;
            gone
        };
        for seg in old {
            seg.delete()?;
        }
        std::fs::rename(&swap, file_path(&self.dir, base, LOG_SUFFIX))?;
        // The aborted transactions whose markers stayed (their last stable
        // offset is not known here: the marker's next offset stands in).
        let entries: Vec<(AbortedTxn, i64)> = kept_aborts.iter().map(|a| (*a, a.last_offset + 1)).collect();
        super::txn_index::append(&file_path(&self.dir, base, TXN_INDEX_SUFFIX), &entries)?;
        let mut seg = Segment::open(&self.dir, base, config.index_interval_bytes.max(0) as u32, None)?;
        seg.recover(|_| {})?;
        seg.on_become_inactive()?;
        let at = st.segments.partition_point(|s| s.base_offset < base);
        st.segments.insert(at, seg);
        Ok((written, removed, next_delete_horizon))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::LogConfig;
    use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};

    fn record(key: &str, value: Option<&str>, ts: i64) -> Record {
        batch::plain_record(
            0,
            ts,
            Some(Bytes::from(key.to_string())),
            value.map(|v| Bytes::from(v.to_string())),
        )
    }

    fn put(log: &Log, key: &str, value: Option<&str>, ts: i64) -> i64 {
        let b = batch::encode_records(&mut [record(key, value, ts)], Compression::None, -1, -1, -1).unwrap();
        log.append_as_leader(&b, 0).unwrap().first_offset
    }

    fn contents(log: &Log) -> Vec<(i64, String, Option<String>)> {
        let mut out = vec![];
        let mut next = log.log_start_offset();
        while next < log.log_end_offset() {
            let read = log.read(next, 1 << 20, i64::MAX, true).unwrap();
            if read.records.is_empty() {
                break;
            }
            for (at, h) in batch::complete_batches(&read.records) {
                let mut b = read.records.slice(at..at + h.total_size());
                for r in RecordBatchDecoder::decode(&mut b).unwrap().records {
                    let k = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                    out.push((r.offset, k, r.value.map(|v| String::from_utf8(v.to_vec()).unwrap())));
                }
                next = h.next_offset();
            }
        }
        out
    }

    fn compact_config() -> Arc<LogConfig> {
        Arc::new(LogConfig {
            cleanup_policy: "compact".into(),
            segment_bytes: 400,
            min_cleanable_dirty_ratio: 0.0,
            delete_retention_ms: 60_000,
            ..LogConfig::default()
        })
    }

    #[test]
    fn keeps_newest_value_per_key_with_offsets_and_young_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), compact_config(), None, None).unwrap();
        let now = now_ms();
        for round in 0..10 {
            for key in ["a", "b", "c"] {
                put(&log, key, Some(&format!("{key}{round}")), now);
            }
        }
        let tomb_old = put(&log, "b", None, now - 3_600_000);
        let tomb_new = put(&log, "c", None, now);
        for i in 0..6 {
            put(&log, "z", Some(&format!("z{i}")), now); // roll the tombstones out of the active segment
        }
        let before = log.size_bytes();
        let stats = log.clean(1 << 20).unwrap().expect("a pass ran");
        assert!(stats.records_removed > 20);
        assert!(log.size_bytes() < before);
        let got = contents(&log);
        let a: Vec<_> = got.iter().filter(|r| r.1 == "a").collect();
        assert_eq!(a.len(), 1, "one value per key: {got:?}");
        assert_eq!(a[0].2.as_deref(), Some("a9"));
        assert_eq!(a[0].0, 27, "offsets are kept");
        // KIP-534: a tombstone stays delete.retention.ms from its first clean,
        // whatever its CreateTime (an hour old here).
        for tomb in [tomb_old, tomb_new] {
            assert!(
                got.iter().any(|r| r.0 == tomb && r.2.is_none()),
                "tombstone {tomb} kept"
            );
        }
        assert_eq!(
            got.iter().filter(|r| r.1 == "b").count(),
            1,
            "only b's tombstone is left"
        );
        // The log keeps working and reopens with the cleaned segments.
        let next = put(&log, "a", Some("after"), now);
        assert_eq!(next, log.log_end_offset() - 1);
        drop(log);
        let log = Log::open(dir.path(), compact_config(), Some(0), None).unwrap();
        assert_eq!(contents(&log).last().unwrap().2.as_deref(), Some("after"));
    }

    #[test]
    fn an_interrupted_swap_completes_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), compact_config(), None, None).unwrap();
        let now = now_ms();
        for round in 0..20 {
            put(&log, "k", Some(&format!("v{round}")), now);
        }
        log.roll().unwrap();
        put(&log, "k", Some("last"), now);
        drop(log);
        // A crash after the swap file was complete: it holds offset 19's record only.
        let b = batch::encode_records(
            &mut [Record {
                offset: 19,
                ..record("k", Some("v19"), now)
            }],
            Compression::None,
            -1,
            -1,
            -1,
        )
        .unwrap();
        std::fs::write(file_path(dir.path(), 0, SWAP_SUFFIX), &b).unwrap();
        std::fs::write(file_path(dir.path(), 0, CLEANED_SUFFIX), b"partial").unwrap();
        let log = Log::open(dir.path(), compact_config(), None, None).unwrap();
        let got = contents(&log);
        let expected = vec![
            (19, "k".to_string(), Some("v19".to_string())),
            (20, "k".to_string(), Some("last".to_string())),
        ];
        assert_eq!(got, expected, "the swap replaced segment 0; segment 20 is untouched");
        assert!(!file_path(dir.path(), 0, CLEANED_SUFFIX).exists());
    }

    fn config_with(delete_retention_ms: i64) -> Arc<LogConfig> {
        Arc::new(LogConfig {
            delete_retention_ms,
            ..(*compact_config()).clone()
        })
    }

    fn roll_out(log: &Log, now: i64) {
        for i in 0..6 {
            put(log, "z", Some(&format!("z{i}")), now);
        }
        log.roll().unwrap();
    }

    #[test]
    fn tombstones_go_a_delete_retention_after_their_first_clean() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), config_with(0), None, None).unwrap();
        let now = now_ms();
        put(&log, "k", Some("v"), now);
        let tomb = put(&log, "k", None, now);
        roll_out(&log, now);
        log.clean(1 << 20).unwrap().expect("a pass ran");
        let got = contents(&log);
        assert!(
            got.iter().any(|r| r.0 == tomb),
            "the first clean keeps it and sets its horizon"
        );
        let read = log.read(tomb, 1 << 20, i64::MAX, true).unwrap().records;
        let (_, h) = batch::complete_batches(&read).next().unwrap();
        assert!(
            h.delete_horizon().is_some_and(|d| d <= now_ms()),
            "horizon set in the batch"
        );
        // Due now (delete.retention.ms = 0): the next pass removes it, without new dirty data.
        log.clean(1 << 20)
            .unwrap()
            .expect("due tombstones make the log cleanable");
        assert!(!contents(&log).iter().any(|r| r.1 == "k"), "k is gone");
    }

    /// One transactional batch of `kvs` from `producer`; its first offset.
    fn txn_put(log: &Log, producer: i64, sequence: i32, kvs: &[(&str, &str)], now: i64) -> i64 {
        let mut records: Vec<Record> = kvs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                offset: i as i64,
                sequence: sequence + i as i32,
                transactional: true,
                ..record(k, Some(v), now)
            })
            .collect();
        let b = batch::encode_records(&mut records, Compression::None, producer, 0, sequence).unwrap();
        log.append_as_leader(&b, 0).unwrap().first_offset
    }

    /// Every stored batch: (base offset, control, producer, delete horizon).
    fn batches(log: &Log) -> Vec<(i64, bool, i64, Option<i64>)> {
        let read = log
            .read(log.log_start_offset(), 1 << 20, i64::MAX, true)
            .unwrap()
            .records;
        batch::complete_batches(&read)
            .map(|(_, h)| (h.base_offset(), h.is_control(), h.producer_id(), h.delete_horizon()))
            .collect()
    }

    /// Transactions under compaction: an aborted transaction's records go
    /// and never supersede the committed value of their key; its marker
    /// gets a delete horizon and goes after it; a commit marker stays while
    /// its transaction keeps a record; an open transaction's segment is not
    /// cleaned.
    #[test]
    fn aborted_records_go_and_markers_stay_while_their_transaction_does() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), config_with(0), None, None).unwrap();
        let now = now_ms();
        let committed = txn_put(&log, 7, 0, &[("k", "committed"), ("c", "kept")], now);
        let commit = log.append_marker(7, 0, 0, Marker::Commit, 0).unwrap().first_offset;
        let aborted = txn_put(&log, 8, 0, &[("k", "aborted")], now);
        let abort = log.append_marker(8, 0, 0, Marker::Abort, 0).unwrap().first_offset;
        // Producer 8 writes again, so its aborted batch is not its last.
        txn_put(&log, 8, 1, &[("x", "later")], now);
        log.append_marker(8, 0, 0, Marker::Commit, 0).unwrap();
        roll_out(&log, now);

        log.clean(1 << 20).unwrap().expect("a pass ran");
        let got = contents(&log);
        let value = |key: &str| {
            got.iter()
                .filter(|r| r.1 == key)
                .map(|r| r.2.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            value("k"),
            vec![Some("committed".to_string())],
            "the aborted value superseded nothing"
        );
        assert!(got.iter().all(|r| r.0 != aborted), "the aborted batch is gone");
        let after = batches(&log);
        let at = |offset: i64| after.iter().find(|b| b.0 == offset).copied();
        assert!(at(committed).is_some());
        assert_eq!(
            at(commit).map(|b| b.3),
            Some(None),
            "the commit marker stays, no horizon: {after:?}"
        );
        let horizon = at(abort).and_then(|b| b.3);
        assert!(horizon.is_some(), "the abort marker has its horizon: {after:?}");
        let indexed = || -> Vec<AbortedTxn> {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().ends_with(TXN_INDEX_SUFFIX))
                .flat_map(|p| super::super::txn_index::read(&p).unwrap())
                .map(|(a, _)| a)
                .collect()
        };
        assert_eq!(
            indexed().iter().map(|a| a.last_offset).collect::<Vec<_>>(),
            vec![abort],
            "the kept marker's transaction stays indexed"
        );

        // Past its horizon (delete.retention.ms = 0) the abort marker goes;
        // the commit marker stays while "c" does.
        log.clean(1 << 20)
            .unwrap()
            .expect("the due horizon makes the log cleanable");
        let after = batches(&log);
        assert!(
            after.iter().all(|b| b.0 != abort),
            "the abort marker is gone: {after:?}"
        );
        assert!(indexed().is_empty(), "and its index entry with it");
        assert!(after.iter().any(|b| b.0 == commit));
        assert_eq!(log.first_unstable_offset(), None);

        // Once every record of the committed transaction is superseded (and
        // its batch is not producer 7's last), its marker goes too.
        put(&log, "k", Some("newer"), now);
        put(&log, "c", Some("newer"), now);
        txn_put(&log, 7, 2, &[("y", "again")], now);
        log.append_marker(7, 0, 0, Marker::Commit, 0).unwrap();
        roll_out(&log, now);
        log.clean(1 << 20).unwrap().expect("a pass ran");
        log.clean(1 << 20).unwrap();
        let after = batches(&log);
        assert!(
            after.iter().all(|b| b.0 != commit && b.0 != committed),
            "the committed transaction and its marker are gone: {after:?}"
        );

        // An open transaction holds back every segment from its first batch on.
        let open = txn_put(&log, 9, 0, &[("o", "open")], now);
        put(&log, "o", Some("plain"), now);
        roll_out(&log, now);
        log.clean(1 << 20).unwrap();
        assert!(
            contents(&log).iter().any(|r| r.0 == open),
            "an open transaction's record is not cleaned"
        );
    }

    #[test]
    fn rewritten_batches_keep_offsets_and_producers_keep_their_last_batch() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), compact_config(), None, None).unwrap();
        let now = now_ms();
        // One idempotent producer's batch of three keys; then newer a and c.
        let mut records: Vec<Record> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, k)| Record {
                offset: i as i64,
                sequence: i as i32,
                ..record(k, Some("old"), now)
            })
            .collect();
        let b = batch::encode_records(&mut records, Compression::Lz4, 77, 0, 0).unwrap();
        log.append_as_leader(&b, 0).unwrap();
        let b = batch::encode_records(&mut [record("d", Some("x"), now)], Compression::None, 88, 0, 0).unwrap();
        log.append_as_leader(&b, 0).unwrap();
        put(&log, "a", Some("new"), now);
        put(&log, "c", Some("new"), now);
        put(&log, "d", Some("new"), now);
        roll_out(&log, now);
        log.clean(1 << 20).unwrap().expect("a pass ran");
        let read = log.read(0, 1 << 20, i64::MAX, true).unwrap().records;
        let headers: Vec<_> = batch::complete_batches(&read)
            .map(|(_, h)| {
                (
                    h.base_offset(),
                    h.last_offset_delta(),
                    h.records_count(),
                    h.producer_id(),
                )
            })
            .collect();
        assert_eq!(
            headers[0],
            (0, 2, 1, 77),
            "b survives alone in a batch spanning offsets 0..=2"
        );
        assert_eq!(headers[1], (3, 0, 0, 88), "producer 88's last batch stays, empty");
        let got = contents(&log);
        assert!(got.iter().any(|r| r.0 == 1 && r.1 == "b"));
        assert_eq!(log.producer_entry(77).unwrap().batches.back().unwrap().last_seq, 2);
        // Reopened, the producer state rebuilt from the cleaned log is the same.
        drop(log);
        let log = Log::open(dir.path(), compact_config(), Some(0), None).unwrap();
        assert!(log.producer_entry(88).is_some());
    }

    #[test]
    fn a_small_dedupe_buffer_cleans_in_several_passes() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), compact_config(), None, None).unwrap();
        let now = now_ms();
        for round in 0..4 {
            for key in 0..12 {
                put(&log, &format!("k{key}"), Some(&format!("{round}")), now);
            }
        }
        roll_out(&log, now);
        // Room for 10 keys a pass: each pass cleans as far as its map reaches.
        let mut passes = 0;
        while log.clean(24 * 10).unwrap().is_some() {
            passes += 1;
            assert!(passes < 50, "the passes make progress");
        }
        assert!(passes > 1, "more than one pass was needed");
        let got = contents(&log);
        for key in 0..12 {
            let k = format!("k{key}");
            let values: Vec<_> = got.iter().filter(|r| r.1 == k).collect();
            assert_eq!(values.len(), 1, "{k}: {values:?}");
            assert_eq!(values[0].2.as_deref(), Some("3"));
        }
    }
}
