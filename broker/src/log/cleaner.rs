//! The log cleaner: compaction of `cleanup.policy=compact` logs.
//!
//! For the segments before the active one (and older than
//! `min.compaction.lag.ms`), keep the newest record of each key, drop
//! tombstones older than `delete.retention.ms`, and keep every surviving
//! record's offset (batches are rewritten with only their survivors; gaps
//! are allowed). Control batches are kept. A pass runs when the dirty part
//! (written since the last pass) reaches `min.cleanable.dirty.ratio`, or when
//! dirty data is older than `max.compaction.lag.ms`.
//!
//! Crash safety: a group of segments is rewritten into `<base>.cleaned`,
//! fsynced and renamed to `<base>.swap`; then the old segments are deleted
//! and the swap file becomes `<base>.log`. At open, a `.cleaned` file is
//! discarded and a `.swap` file completes its swap, so a crash at any point
//! leaves either the old segments or the new one, never a mix.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};

use super::batch::{self, BatchHeader};
use super::segment::{file_path, now_ms, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use super::{Log, LogState};
use crate::error::{Error, Result};

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
            let is_segment_file = [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX]
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

pub fn read_checkpoint(dir: &Path) -> i64 {
    std::fs::read_to_string(dir.join(CLEANER_CHECKPOINT))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_checkpoint(dir: &Path, offset: i64) -> std::io::Result<()> {
    super::manager::write_atomically(&dir.join(CLEANER_CHECKPOINT), offset.to_string().as_bytes())
}

/// A cleanable segment, as seen when the pass starts.
struct Source {
    base: i64,
    next_offset: i64,
    size: u32,
    data_path: PathBuf,
}

impl Log {
    /// One cleaning pass if the log is compacted and due; returns what it did.
    pub fn clean(&self) -> Result<Option<CleanStats>> {
        let config = self.config();
        if !config.compact() {
            return Ok(None);
        }
        let _cleaning = self.cleaner_lock.lock();
        let now = now_ms();
        let checkpoint = read_checkpoint(&self.dir);
        let sources: Vec<Source> = {
            let st = self.state.read();
            let n = st.segments.len().saturating_sub(1);
            st.segments[..n]
                .iter()
                .take_while(|s| {
                    config.min_compaction_lag_ms <= 0 || s.max_timestamp() < now - config.min_compaction_lag_ms
                })
                .map(|s| Source {
                    base: s.base_offset,
                    next_offset: s.next_offset(),
                    size: s.size(),
                    data_path: s.log_path().to_path_buf(),
                })
                .collect()
        };
        if sources.is_empty() {
            return Ok(None);
        }
        let total: u64 = sources.iter().map(|s| u64::from(s.size)).sum();
        let dirty: u64 = sources
            .iter()
            .filter(|s| s.next_offset > checkpoint)
            .map(|s| u64::from(s.size))
            .sum();
        let ratio = if total == 0 { 0.0 } else { dirty as f64 / total as f64 };
        let overdue = config.max_compaction_lag_ms < i64::MAX && {
            let st = self.state.read();
            st.segments.iter().any(|s| {
                s.next_offset() > checkpoint
                    && s.max_timestamp() >= 0
                    && now - s.max_timestamp() > config.max_compaction_lag_ms
            })
        };
        if dirty == 0 || (ratio < config.min_cleanable_dirty_ratio && !overdue) {
            return Ok(None);
        }

        // Pass 1: the newest offset of every key in the cleanable range.
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        for src in &sources {
            for_each_record_batch(&src.data_path, |_, records| {
                for r in records {
                    if let Some(k) = &r.key {
                        latest.insert(k.clone(), r.offset);
                    }
                }
            })?;
        }

        // Pass 2: rewrite groups of segments (at most segment.bytes of input each).
        let mut stats = CleanStats {
            segments_before: sources.len(),
            bytes_before: total,
            ..Default::default()
        };
        let horizon = now - config.delete_retention_ms;
        let mut start = 0;
        while start < sources.len() {
            let mut end = start + 1;
            let mut size = u64::from(sources[start].size);
            while end < sources.len() && size + u64::from(sources[end].size) <= config.segment_bytes as u64 {
                size += u64::from(sources[end].size);
                end += 1;
            }
            let group = &sources[start..end];
            let (bytes, removed) = self.clean_group(group, &latest, horizon)?;
            stats.bytes_after += bytes;
            stats.records_removed += removed;
            stats.segments_after += 1;
            start = end;
        }
        write_checkpoint(&self.dir, sources.last().map_or(checkpoint, |s| s.next_offset))?;
        tracing::info!(
            dir = %self.dir.display(),
            before = stats.bytes_before,
            after = stats.bytes_after,
            removed = stats.records_removed,
            "cleaned log"
        );
        Ok(Some(stats))
    }

    /// Rewrites one group of segments into one and swaps it in.
    fn clean_group(&self, group: &[Source], latest: &HashMap<Bytes, i64>, horizon: i64) -> Result<(u64, u64)> {
        let base = group[0].base;
        let cleaned = file_path(&self.dir, base, CLEANED_SUFFIX);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&cleaned)?);
        let mut written = 0u64;
        let mut removed = 0u64;
        for src in group {
            let mut failure: Option<Error> = None;
            for_each_record_batch(&src.data_path, |raw, records| {
                if failure.is_some() {
                    return;
                }
                let h = match BatchHeader::parse(raw) {
                    Ok(h) => h,
                    Err(e) => return failure = Some(e.into()),
                };
                let keep = |r: &kafka_protocol::records::Record| match &r.key {
                    None => true,
                    Some(k) => {
                        latest.get(k).is_some_and(|o| *o == r.offset) && (r.value.is_some() || r.timestamp > horizon)
                    }
                };
                let result = if h.is_control() || records.iter().all(keep) {
                    Ok(Some(Bytes::copy_from_slice(raw)))
                } else {
                    let mut survivors: Vec<_> = records.iter().filter(|r| keep(r)).cloned().collect();
                    removed += (records.len() - survivors.len()) as u64;
                    if survivors.is_empty() {
                        Ok(None)
                    } else {
                        let codec = compression_of(h.compression());
                        batch::encode_records(
                            &mut survivors,
                            codec,
                            h.producer_id(),
                            h.producer_epoch(),
                            h.base_sequence(),
                        )
                        .map(|b| {
                            // Keep the original partition leader epoch.
                            let mut header = batch::PatchedHeader::from_batch(&b);
                            header.set_partition_leader_epoch(h.partition_leader_epoch());
                            Some(Bytes::from([&header.0[..], &b[batch::HEADER_SIZE..]].concat()))
                        })
                        .map_err(Error::CorruptMessage)
                    }
                };
                match result {
                    Ok(Some(bytes)) => {
                        if let Err(e) = out.write_all(&bytes) {
                            failure = Some(e.into());
                        }
                        written += bytes.len() as u64;
                    }
                    Ok(None) => {}
                    Err(e) => failure = Some(e),
                }
            })?;
            if let Some(e) = failure {
                let _ = std::fs::remove_file(&cleaned);
                return Err(e);
            }
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
        let mut seg = Segment::open(&self.dir, base, config.index_interval_bytes.max(0) as u32, None)?;
        seg.recover(|_| {})?;
        seg.on_become_inactive()?;
        let at = st.segments.partition_point(|s| s.base_offset < base);
        st.segments.insert(at, seg);
        Ok((written, removed))
    }
}

fn compression_of(code: i16) -> Compression {
    match code {
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => Compression::None,
    }
}

/// Calls `f(raw batch, decoded records)` for every batch of a segment file.
fn for_each_record_batch(path: &Path, mut f: impl FnMut(&[u8], &[kafka_protocol::records::Record])) -> Result<()> {
    let data = Bytes::from(std::fs::read(path)?);
    for (at, h) in batch::complete_batches(&data) {
        let raw = data.slice(at..at + h.total_size());
        let mut buf = raw.clone();
        let records = if h.is_control() {
            Vec::new()
        } else {
            RecordBatchDecoder::decode(&mut buf)
                .map_err(|e| Error::CorruptMessage(e.to_string()))?
                .records
        };
        f(&raw, &records);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::LogConfig;
    use kafka_protocol::records::Record;

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
        let stats = log.clean().unwrap().expect("a pass ran");
        assert!(stats.records_removed > 20);
        assert!(log.size_bytes() < before);
        let got = contents(&log);
        let a: Vec<_> = got.iter().filter(|r| r.1 == "a").collect();
        assert_eq!(a.len(), 1, "one value per key: {got:?}");
        assert_eq!(a[0].2.as_deref(), Some("a9"));
        assert_eq!(a[0].0, 27, "offsets are kept");
        assert!(!got.iter().any(|r| r.0 == tomb_old), "old tombstone gone");
        assert!(
            got.iter().any(|r| r.0 == tomb_new && r.2.is_none()),
            "recent tombstone kept"
        );
        assert!(!got.iter().any(|r| r.1 == "b"), "b is deleted entirely");
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
}
