//! One log segment: `<base>.log` holding record batches exactly as written,
//! with its sparse `<base>.index` and `<base>.timeindex`.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::{self, BatchHeader, HEADER_SIZE};
use super::index::{OffsetIndex, TimeIndex};

pub const LOG_SUFFIX: &str = ".log";
pub const INDEX_SUFFIX: &str = ".index";
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";

/// `<dir>/<20-digit base offset><suffix>`, Kafka's file naming.
pub fn file_path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}{suffix}"))
}

/// A region of a segment file: served to the socket with sendfile, or read.
/// Holding the file keeps the data readable even after retention unlinks it.
#[derive(Debug, Clone)]
pub struct FileSlice {
    pub file: Arc<File>,
    pub position: u64,
    pub len: usize,
}

impl FileSlice {
    pub fn read(&self) -> io::Result<Bytes> {
        let mut buf = vec![0u8; self.len];
        self.file.read_exact_at(&mut buf, self.position)?;
        Ok(Bytes::from(buf))
    }

    /// Whether reading or sending it will find every page in memory.
    pub fn is_resident(&self) -> bool {
        super::page_cache::is_resident(&self.file, self.position, self.len)
    }

    /// Brings it into the page cache (blocking disk reads).
    pub fn load(&self) -> io::Result<()> {
        super::page_cache::load(&self.file, self.position, self.len)
    }
}

/// A batch ready to be written: its patched header and the untouched rest.
pub struct OutgoingBatch {
    pub header: batch::PatchedHeader,
    pub body: Bytes,
}

impl OutgoingBatch {
    pub fn size(&self) -> usize {
        HEADER_SIZE + self.body.len()
    }
}

/// Why a scan stopped before the end of the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    End,
    /// Bytes at this position are not a whole, valid batch.
    Invalid {
        position: u32,
        reason: String,
    },
}

pub struct Segment {
    pub base_offset: i64,
    log_path: PathBuf,
    file: Arc<File>,
    size: u32,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    index_interval_bytes: u32,
    bytes_since_last_index_entry: u32,
    next_offset: i64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
    /// The first batch's max timestamp, from which `segment.ms` counts (Kafka's
    /// rollingBasedTimestamp): read back from the file after a restart, so a
    /// broker restarted often still rolls and retains by time.
    rolling_base_timestamp: Option<i64>,
}

impl Segment {
    /// Opens (or creates) the segment files. `prealloc_index_bytes` is set for the active segment.
    pub fn open(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u32,
        prealloc_index_bytes: Option<usize>,
    ) -> io::Result<Segment> {
        let log_path = file_path(dir, base_offset, LOG_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)?;
        let size = u32::try_from(file.metadata()?.len()).unwrap_or(u32::MAX);
        let offset_index = OffsetIndex::open(
            &file_path(dir, base_offset, INDEX_SUFFIX),
            base_offset,
            prealloc_index_bytes,
        )?;
        let time_index = TimeIndex::open(
            &file_path(dir, base_offset, TIME_INDEX_SUFFIX),
            base_offset,
            prealloc_index_bytes.map(|b| b / 8 * 12),
        )?;
        Ok(Segment {
            base_offset,
            log_path,
            file: Arc::new(file),
            size,
            offset_index,
            time_index,
            index_interval_bytes,
            bytes_since_last_index_entry: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            rolling_base_timestamp: None,
        })
    }

    /// After a clean shutdown: trust the indexes, scan only the tail past the last entry.
    /// Returns false when the indexes do not match the log and must be rebuilt.
    pub fn load_tail(&mut self) -> io::Result<bool> {
        if !self.offset_index.is_consistent(self.size) {
            return Ok(false);
        }
        let (last_indexed, start) = self.offset_index.last_entry().unwrap_or((self.base_offset, 0));
        let (mut max_ts, mut max_ts_offset) = self.time_index.last_entry().unwrap_or((-1, -1));
        let mut next = last_indexed;
        let mut bad = false;
        let stop = self.scan(start, |_, b| {
            match BatchHeader::parse(b) {
                Ok(h) => {
                    next = h.next_offset();
                    if h.max_timestamp() > max_ts {
                        max_ts = h.max_timestamp();
                        max_ts_offset = h.last_offset();
                    }
                }
                Err(_) => bad = true,
            }
            !bad
        })?;
        if bad || stop != ScanStop::End || (start > 0 && next == last_indexed) {
            return Ok(false);
        }
        self.next_offset = next;
        self.max_timestamp = max_ts;
        self.offset_of_max_timestamp = max_ts_offset;
        self.bytes_since_last_index_entry = self.size - start;
        if self.size >= HEADER_SIZE as u32 {
            let mut first = [0u8; HEADER_SIZE];
            self.file.read_exact_at(&mut first, 0)?;
            if let Ok(h) = BatchHeader::parse(&first) {
                self.rolling_base_timestamp = Some(rolling_base(h.max_timestamp()));
            }
        }
        Ok(self.time_index.is_consistent(self.next_offset))
    }

    /// Scans every batch, checking length and CRC; rebuilds both indexes and
    /// truncates the file at the first torn or corrupt batch. `on_batch` sees
    /// each valid batch (producer state is rebuilt from it). Returns the bytes cut.
    pub fn recover(&mut self, on_batch: impl FnMut(&BatchHeader)) -> io::Result<u64> {
        self.rebuild(i64::MAX, on_batch)
    }

    /// Cuts the segment before the first batch at or past `offset` (a
    /// replica dropping a tail its leader does not have), rebuilding the
    /// indexes from what stays. Returns the bytes cut.
    pub fn truncate_to(&mut self, offset: i64) -> io::Result<u64> {
        self.rebuild(offset, |_| {})
    }

    fn rebuild(&mut self, stop_at: i64, mut on_batch: impl FnMut(&BatchHeader)) -> io::Result<u64> {
        self.offset_index.reset();
        self.time_index.reset();
        self.bytes_since_last_index_entry = 0;
        self.next_offset = self.base_offset;
        self.max_timestamp = -1;
        self.offset_of_max_timestamp = -1;
        let mut valid_end = 0u32;
        let mut corrupt: Option<String> = None;
        let mut entries: Vec<(u32, i64, i64, i64, u32)> = Vec::new();
        let stop = self.scan(0, |pos, bytes| match batch::validate(bytes) {
            Ok(h) if h.base_offset() >= stop_at => false,
            Ok(h) => {
                on_batch(&h);
                entries.push((
                    pos,
                    h.base_offset(),
                    h.last_offset(),
                    h.max_timestamp(),
                    bytes.len() as u32,
                ));
                valid_end = pos + bytes.len() as u32;
                true
            }
            Err(e) => {
                corrupt = Some(e.to_string());
                false
            }
        })?;
        for (pos, base, last, max_ts, len) in entries {
            self.index_batch(pos, base, last, max_ts, len);
            self.next_offset = last + 1;
        }
        let cut = u64::from(self.size - valid_end);
        if cut > 0 && stop_at != i64::MAX {
            self.file.set_len(u64::from(valid_end))?;
            self.size = valid_end;
        } else if cut > 0 {
            let reason = corrupt.or(match stop {
                ScanStop::Invalid { reason, .. } => Some(reason),
                ScanStop::End => None,
            });
            tracing::warn!(
                segment = %self.log_path.display(),
                position = valid_end,
                bytes = cut,
                reason = reason.as_deref().unwrap_or("torn tail"),
                "truncating invalid tail of segment"
            );
            self.file.set_len(u64::from(valid_end))?;
            self.size = valid_end;
        }
        Ok(cut)
    }

    /// Calls `f(position, batch bytes)` for each whole batch from `from`;
    /// stops when `f` returns false.
    fn scan(&self, from: u32, mut f: impl FnMut(u32, &[u8]) -> bool) -> io::Result<ScanStop> {
        const CHUNK: usize = 1 << 20;
        let mut pos = from;
        let mut buf: Vec<u8> = Vec::new();
        while pos < self.size {
            let want = CHUNK.min((self.size - pos) as usize);
            buf.resize(want, 0);
            self.file.read_exact_at(&mut buf, u64::from(pos))?;
            let mut at = 0usize;
            loop {
                let rest = &buf[at..];
                if rest.len() < batch::LOG_OVERHEAD {
                    break;
                }
                let size = match batch::total_size(rest) {
                    Ok(s) => s,
                    Err(e) => {
                        return Ok(ScanStop::Invalid {
                            position: pos + at as u32,
                            reason: e.to_string(),
                        })
                    }
                };
                if u64::from(pos) + (at + size) as u64 > u64::from(self.size) {
                    return Ok(ScanStop::Invalid {
                        position: pos + at as u32,
                        reason: format!("batch of {size} bytes runs past the end of the segment"),
                    });
                }
                if size > rest.len() {
                    if at == 0 {
                        // One batch larger than the chunk: read it whole.
                        buf.resize(size, 0);
                        self.file.read_exact_at(&mut buf, u64::from(pos))?;
                        continue;
                    }
                    break;
                }
                if !f(pos + at as u32, &rest[..size]) {
                    return Ok(ScanStop::Invalid {
                        position: pos + at as u32,
                        reason: "rejected".into(),
                    });
                }
                at += size;
            }
            if at == 0 {
                return Ok(ScanStop::Invalid {
                    position: pos,
                    reason: "truncated batch header".into(),
                });
            }
            pos += at as u32;
        }
        Ok(ScanStop::End)
    }

    fn index_batch(&mut self, position: u32, base_offset: i64, last_offset: i64, max_timestamp: i64, size: u32) {
        if position == 0 {
            self.rolling_base_timestamp = Some(rolling_base(max_timestamp));
        }
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            self.offset_of_max_timestamp = last_offset;
        }
        if self.bytes_since_last_index_entry > self.index_interval_bytes {
            self.offset_index.append(base_offset, position);
            self.time_index
                .maybe_append(self.max_timestamp, self.offset_of_max_timestamp);
            self.bytes_since_last_index_entry = 0;
        }
        self.bytes_since_last_index_entry += size;
    }

    /// Appends batches whose headers already carry their final offsets.
    /// On a failed write the file is cut back so no partial batch remains.
    pub fn append(&mut self, batches: &[OutgoingBatch]) -> io::Result<()> {
        let start = self.size;
        let total: usize = batches.iter().map(OutgoingBatch::size).sum();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batches.len() * 2);
        for b in batches {
            slices.push(IoSlice::new(&b.header.0));
            slices.push(IoSlice::new(&b.body));
        }
        if let Err(e) = write_all_vectored(&self.file, &mut slices) {
            // Best effort: a torn tail would otherwise be found by recovery.
            let _ = self.file.set_len(u64::from(start));
            return Err(e);
        }
        let mut pos = start;
        for b in batches {
            let h = b.header.view();
            self.index_batch(
                pos,
                h.base_offset(),
                h.last_offset(),
                h.max_timestamp(),
                b.size() as u32,
            );
            self.next_offset = h.next_offset();
            pos += b.size() as u32;
        }
        self.size = start + total as u32;
        Ok(())
    }

    /// Position of the first batch whose last offset is >= `offset`, with its header.
    pub fn translate_offset(&self, offset: i64) -> io::Result<Option<(u32, [u8; HEADER_SIZE])>> {
        let (_, mut pos) = self.offset_index.lookup(offset);
        let mut header = [0u8; HEADER_SIZE];
        while pos < self.size {
            if self.size - pos < HEADER_SIZE as u32 {
                return Ok(None);
            }
            self.file.read_exact_at(&mut header, u64::from(pos))?;
            let h = match BatchHeader::parse(&header) {
                Ok(h) => h,
                Err(_) => return Ok(None),
            };
            if h.last_offset() >= offset {
                return Ok(Some((pos, header)));
            }
            pos += h.total_size() as u32;
        }
        Ok(None)
    }

    /// The region to serve from the batch holding `offset`: at most
    /// `max_bytes` (but the whole first batch when `min_one`), ending before
    /// the batch holding `max_offset` (the high watermark). Like Kafka's
    /// FileRecords slices, the region may end inside a batch; clients drop
    /// such a partial last batch and fetch it again.
    pub fn slice(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: i64,
        min_one: bool,
    ) -> io::Result<Option<FileSlice>> {
        let Some((pos, header)) = self.translate_offset(offset)? else {
            return Ok(None);
        };
        let first = BatchHeader::parse(&header).map_err(io::Error::other)?;
        let empty = FileSlice {
            file: self.file.clone(),
            position: u64::from(pos),
            len: 0,
        };
        if first.base_offset() >= max_offset {
            return Ok(Some(empty));
        }
        let end = if max_offset >= self.next_offset {
            self.size
        } else {
            self.translate_offset(max_offset)?.map_or(self.size, |(p, _)| p)
        };
        let available = end.saturating_sub(pos) as usize;
        let first_size = first.total_size();
        let len = if first_size > max_bytes {
            if !min_one {
                return Ok(Some(empty));
            }
            first_size.min(available)
        } else {
            max_bytes.min(available)
        };
        Ok(Some(FileSlice { len, ..empty }))
    }

    /// The first batch whose max timestamp is >= `timestamp`, read whole.
    pub fn find_batch_by_timestamp(&self, timestamp: i64, from_offset: i64) -> io::Result<Option<Bytes>> {
        if self.max_timestamp < timestamp {
            return Ok(None);
        }
        let start_offset = self.time_index.lookup(timestamp).max(from_offset);
        let Some((mut pos, _)) = self.translate_offset(start_offset)? else {
            return Ok(None);
        };
        let mut header = [0u8; HEADER_SIZE];
        while pos + HEADER_SIZE as u32 <= self.size {
            self.file.read_exact_at(&mut header, u64::from(pos))?;
            let h = BatchHeader::parse(&header).map_err(io::Error::other)?;
            if h.max_timestamp() >= timestamp {
                let mut buf = vec![0u8; h.total_size()];
                self.file.read_exact_at(&mut buf, u64::from(pos))?;
                return Ok(Some(Bytes::from(buf)));
            }
            pos += h.total_size() as u32;
        }
        Ok(None)
    }

    /// The segment stops being active: add the final time index entry and trim both indexes.
    pub fn on_become_inactive(&mut self) -> io::Result<()> {
        if self.max_timestamp >= 0 {
            self.time_index
                .maybe_append(self.max_timestamp, self.offset_of_max_timestamp);
        }
        self.offset_index.trim()?;
        self.time_index.trim()
    }

    /// Prepares the indexes for appends (the segment becomes active again after a restart).
    pub fn on_become_active(&mut self, index_bytes: usize) -> io::Result<()> {
        self.offset_index.resize(index_bytes)?;
        self.time_index.resize(index_bytes / 8 * 12)
    }

    /// Handles to make this segment durable later without holding the log's lock.
    pub fn files_to_flush(&self) -> SegmentFiles {
        SegmentFiles {
            log: self.file.clone(),
            indexes: vec![
                self.offset_index.path().to_path_buf(),
                self.time_index.path().to_path_buf(),
            ],
        }
    }

    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()?;
        self.offset_index.flush()?;
        self.time_index.flush()
    }

    pub fn delete(self) -> io::Result<()> {
        let paths = [
            self.log_path.clone(),
            self.offset_index.path().to_path_buf(),
            self.time_index.path().to_path_buf(),
            self.txn_index_path(),
        ];
        drop(self);
        for p in paths {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn size(&self) -> u32 {
        self.size
    }
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    /// Kafka's timeWaitedForRoll: how far `timestamp` (an incoming batch's
    /// max timestamp, or the clock) is past the first batch's; None while empty.
    pub fn time_waited_for_roll(&self, timestamp: i64) -> Option<i64> {
        self.rolling_base_timestamp.map(|t| timestamp.saturating_sub(t))
    }
    pub fn index_full(&self) -> bool {
        self.offset_index.is_full() || self.time_index.is_full()
    }

    /// The segment's aborted-transaction index (see `log::txn_index`).
    pub fn txn_index_path(&self) -> PathBuf {
        self.log_path.with_extension(&super::txn_index::TXN_INDEX_SUFFIX[1..])
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Calls `f` for every batch header from `from_offset` on (replays producer state).
    /// Like [`Segment::for_each_header`], stopping when `f` returns false.
    pub fn for_each_header_until(&self, from_offset: i64, mut f: impl FnMut(&BatchHeader) -> bool) -> io::Result<()> {
        let start = match self.translate_offset(from_offset)? {
            Some((pos, _)) => pos,
            None => return Ok(()),
        };
        self.scan(start, |_, b| BatchHeader::parse(b).map_or(true, |h| f(&h)))?;
        Ok(())
    }

    pub fn for_each_header(&self, from_offset: i64, mut f: impl FnMut(&BatchHeader)) -> io::Result<()> {
        let start = match self.translate_offset(from_offset)? {
            Some((pos, _)) => pos,
            None => return Ok(()),
        };
        self.scan(start, |_, b| {
            if let Ok(h) = BatchHeader::parse(b) {
                f(&h);
            }
            true
        })?;
        Ok(())
    }
}

fn write_all_vectored(mut file: &File, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut slices = slices;
    // Skip leading empty slices so a zero-length write is never mistaken for EOF.
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "failed to write batch")),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A finished segment's files, fsynced in the background after a roll.
pub struct SegmentFiles {
    log: Arc<File>,
    indexes: Vec<PathBuf>,
}

impl SegmentFiles {
    /// fsync of the log's data alone.
    pub fn sync_log(&self) -> io::Result<()> {
        self.log.sync_data()
    }

    /// fsync of the log and of both indexes (fsync writes back pages dirtied
    /// through the index mmaps too). A file removed meanwhile (retention, the
    /// cleaner) needs no flush.
    pub fn sync(&self) -> io::Result<()> {
        self.log.sync_data()?;
        for path in &self.indexes {
            match File::open(path) {
                Ok(f) => f.sync_data()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A batch without a timestamp (-1) counts from now.
fn rolling_base(max_timestamp: i64) -> i64 {
    if max_timestamp >= 0 {
        max_timestamp
    } else {
        now_ms()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
