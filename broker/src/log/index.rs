//! Sparse, memory-mapped offset and time indexes.
//!
//! Offset index entry: 4-byte offset relative to the segment's base offset,
//! 4-byte file position. Time index entry: 8-byte timestamp, 4-byte relative
//! offset. Both are preallocated while their segment is active and trimmed to
//! their entries when it rolls or the log closes, like Kafka's.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

/// The fixed-size-entry file both indexes share.
struct IndexFile {
    path: PathBuf,
    file: File,
    mmap: Option<MmapMut>,
    entries: usize,
    entry_size: usize,
    /// Bytes from the start known to be backed by disk blocks.
    reserved: usize,
}

impl IndexFile {
    fn open(path: &Path, entry_size: usize, prealloc_bytes: Option<usize>) -> io::Result<IndexFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let meta = file.metadata()?;
        let len = meta.len() as usize;
        // Blocks actually allocated: a preallocated file left by a crash is sparse past its entries.
        let allocated = (std::os::unix::fs::MetadataExt::blocks(&meta) as usize * 512).min(len);
        let entries = len / entry_size;
        let mut index = IndexFile {
            path: path.to_path_buf(),
            file,
            mmap: None,
            entries,
            entry_size,
            reserved: allocated,
        };
        index.remap(prealloc_bytes.map(|b| b.max(len)).unwrap_or(len))?;
        Ok(index)
    }

    fn remap(&mut self, bytes: usize) -> io::Result<()> {
        let bytes = bytes / self.entry_size * self.entry_size;
        self.mmap = None;
        self.file.set_len(bytes as u64)?;
        self.mmap = if bytes == 0 {
            None
        } else {
            // SAFETY: the file is owned by this index and only resized through `remap`,
            // which drops the old mapping first; no other process writes it.
            Some(unsafe { MmapMut::map_mut(&self.file)? })
        };
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mmap.as_ref().map_or(0, |m| m.len() / self.entry_size)
    }

    fn entry(&self, i: usize) -> &[u8] {
        let m = self.mmap.as_ref().expect("entry of an empty index");
        &m[i * self.entry_size..(i + 1) * self.entry_size]
    }

    fn push(&mut self, bytes: &[u8]) -> bool {
        if self.entries >= self.capacity() {
            return false;
        }
        let at = self.entries * self.entry_size;
        if at + self.entry_size > self.reserved {
            let len = RESERVE_CHUNK.min(self.capacity() * self.entry_size - self.reserved.min(at));
            if let Err(e) = reserve(&self.file, self.reserved.min(at), len.max(self.entry_size)) {
                // The index is sparse: a skipped entry only lengthens lookups' scans.
                tracing::warn!(index = %self.path.display(), error = %e, "cannot reserve index space; skipping entry");
                return true;
            }
            self.reserved = self.reserved.min(at) + len.max(self.entry_size);
        }
        let m = self.mmap.as_mut().expect("capacity checked");
        m[at..at + self.entry_size].copy_from_slice(bytes);
        self.entries += 1;
        true
    }

    /// Index of the last entry whose key is <= target (keys are monotonic).
    fn floor(&self, target: impl Fn(&[u8]) -> bool) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.entries);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if target(self.entry(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    fn truncate_entries(&mut self, entries: usize) {
        self.entries = self.entries.min(entries);
    }

    /// Shrinks the file to its entries (segment no longer active).
    fn trim(&mut self) -> io::Result<()> {
        self.flush()?;
        self.remap(self.entries * self.entry_size)
    }

    fn resize(&mut self, bytes: usize) -> io::Result<()> {
        self.remap(bytes.max(self.entries * self.entry_size))
    }

    fn flush(&self) -> io::Result<()> {
        match &self.mmap {
            Some(m) => m.flush(),
            None => Ok(()),
        }
    }

    fn reset(&mut self) {
        self.entries = 0;
    }
}

/// Bytes of index file reserved on disk at a time, ahead of the entries.
const RESERVE_CHUNK: usize = 64 * 1024;

/// Reserves blocks of the sparse, preallocated index: a write through the
/// mapping into an unreserved page on a full disk raises SIGBUS, where a
/// failed reservation is just an error.
fn reserve(file: &File, from: usize, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor owned by `file`.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), from as libc::off_t, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

pub const OFFSET_ENTRY: usize = 8;
pub const TIME_ENTRY: usize = 12;

/// Offset -> file position.
pub struct OffsetIndex {
    base_offset: i64,
    file: IndexFile,
}

impl OffsetIndex {
    pub fn open(path: &Path, base_offset: i64, prealloc: Option<usize>) -> io::Result<OffsetIndex> {
        let mut index = OffsetIndex {
            base_offset,
            file: IndexFile::open(path, OFFSET_ENTRY, prealloc)?,
        };
        index.drop_unwritten_tail();
        Ok(index)
    }

    /// A preallocated file left by a crash ends in zeroed slots: keep the increasing prefix.
    fn drop_unwritten_tail(&mut self) {
        let mut valid = 0;
        let mut prev: Option<(u32, u32)> = None;
        for i in 0..self.file.entries {
            let e = self.file.entry(i);
            let (rel, pos) = (u32_at(e, 0), u32_at(e, 4));
            let ok = match prev {
                None => rel > 0 || pos > 0,
                Some((prel, ppos)) => rel > prel && pos > ppos,
            };
            if !ok {
                break;
            }
            prev = Some((rel, pos));
            valid += 1;
        }
        self.file.truncate_entries(valid);
    }

    pub fn entries(&self) -> usize {
        self.file.entries
    }

    pub fn is_full(&self) -> bool {
        self.file.entries >= self.file.capacity()
    }

    pub fn entry(&self, i: usize) -> (i64, u32) {
        let e = self.file.entry(i);
        (self.base_offset + u32_at(e, 0) as i64, u32_at(e, 4))
    }

    pub fn last_entry(&self) -> Option<(i64, u32)> {
        self.file.entries.checked_sub(1).map(|i| self.entry(i))
    }

    /// Appends an entry; false when the index is full (the segment must roll).
    pub fn append(&mut self, offset: i64, position: u32) -> bool {
        if self.last_entry().is_some_and(|(o, _)| o >= offset) {
            return true;
        }
        let mut e = [0u8; OFFSET_ENTRY];
        e[..4].copy_from_slice(&((offset - self.base_offset) as u32).to_be_bytes());
        e[4..].copy_from_slice(&position.to_be_bytes());
        self.file.push(&e)
    }

    /// The last indexed (offset, position) at or before `offset`; (base, 0) if none.
    pub fn lookup(&self, offset: i64) -> (i64, u32) {
        let rel = offset - self.base_offset;
        if rel <= 0 || self.file.entries == 0 {
            return (self.base_offset, 0);
        }
        match self.file.floor(|e| (u32_at(e, 0) as i64) <= rel) {
            Some(i) => self.entry(i),
            None => (self.base_offset, 0),
        }
    }

    /// Removes entries at or past `offset` (log truncation).
    pub fn truncate_to(&mut self, offset: i64) {
        let keep = match self.file.floor(|e| (u32_at(e, 0) as i64) < offset - self.base_offset) {
            Some(i) => i + 1,
            None => 0,
        };
        self.file.truncate_entries(keep);
    }

    pub fn reset(&mut self) {
        self.file.reset();
    }
    pub fn trim(&mut self) -> io::Result<()> {
        self.file.trim()
    }
    pub fn resize(&mut self, bytes: usize) -> io::Result<()> {
        self.file.resize(bytes)
    }
    pub fn flush(&self) -> io::Result<()> {
        self.file.flush()
    }
    pub fn path(&self) -> &Path {
        &self.file.path
    }
    pub fn rename(&mut self, to: &Path) -> io::Result<()> {
        std::fs::rename(&self.file.path, to)?;
        self.file.path = to.to_path_buf();
        Ok(())
    }

    /// Entries increase and stay inside the segment; otherwise rebuild.
    pub fn is_consistent(&self, segment_size: u32) -> bool {
        let mut prev = (self.base_offset, 0u32);
        for i in 0..self.entries() {
            let (o, p) = self.entry(i);
            if (i > 0 && (o <= prev.0 || p <= prev.1)) || p >= segment_size.max(1) {
                return false;
            }
            prev = (o, p);
        }
        true
    }
}

/// Max timestamp so far -> offset where it was first seen.
pub struct TimeIndex {
    base_offset: i64,
    file: IndexFile,
}

impl TimeIndex {
    pub fn open(path: &Path, base_offset: i64, prealloc: Option<usize>) -> io::Result<TimeIndex> {
        let mut index = TimeIndex {
            base_offset,
            file: IndexFile::open(path, TIME_ENTRY, prealloc)?,
        };
        let mut valid = 0;
        let mut prev: Option<(i64, u32)> = None;
        for i in 0..index.file.entries {
            let e = index.file.entry(i);
            let (ts, rel) = (i64_at(e, 0), u32_at(e, 8));
            let ok = match prev {
                None => ts != 0 || rel != 0,
                Some((pts, prel)) => ts > pts && rel >= prel,
            };
            if !ok {
                break;
            }
            prev = Some((ts, rel));
            valid += 1;
        }
        index.file.truncate_entries(valid);
        Ok(index)
    }

    pub fn entries(&self) -> usize {
        self.file.entries
    }

    pub fn is_full(&self) -> bool {
        self.file.entries >= self.file.capacity()
    }

    pub fn entry(&self, i: usize) -> (i64, i64) {
        let e = self.file.entry(i);
        (i64_at(e, 0), self.base_offset + u32_at(e, 8) as i64)
    }

    pub fn last_entry(&self) -> Option<(i64, i64)> {
        self.file.entries.checked_sub(1).map(|i| self.entry(i))
    }

    /// Appends when the timestamp grows past the last entry's.
    pub fn maybe_append(&mut self, timestamp: i64, offset: i64) -> bool {
        if self.last_entry().is_some_and(|(t, _)| t >= timestamp) {
            return true;
        }
        let mut e = [0u8; TIME_ENTRY];
        e[..8].copy_from_slice(&timestamp.to_be_bytes());
        e[8..].copy_from_slice(&((offset - self.base_offset) as u32).to_be_bytes());
        self.file.push(&e)
    }

    /// The offset to start scanning from for the first record with a
    /// timestamp >= `timestamp`: the last entry strictly below it.
    pub fn lookup(&self, timestamp: i64) -> i64 {
        match self.file.floor(|e| i64_at(e, 0) < timestamp) {
            Some(i) => self.entry(i).1,
            None => self.base_offset,
        }
    }

    pub fn truncate_to(&mut self, offset: i64) {
        let keep = match self.file.floor(|e| (u32_at(e, 8) as i64) < offset - self.base_offset) {
            Some(i) => i + 1,
            None => 0,
        };
        self.file.truncate_entries(keep);
    }

    pub fn reset(&mut self) {
        self.file.reset();
    }
    pub fn trim(&mut self) -> io::Result<()> {
        self.file.trim()
    }
    pub fn resize(&mut self, bytes: usize) -> io::Result<()> {
        self.file.resize(bytes)
    }
    pub fn flush(&self) -> io::Result<()> {
        self.file.flush()
    }
    pub fn path(&self) -> &Path {
        &self.file.path
    }
    pub fn rename(&mut self, to: &Path) -> io::Result<()> {
        std::fs::rename(&self.file.path, to)?;
        self.file.path = to.to_path_buf();
        Ok(())
    }

    pub fn is_consistent(&self, next_offset: i64) -> bool {
        let mut prev = (i64::MIN, self.base_offset);
        for i in 0..self.entries() {
            let (t, o) = self.entry(i);
            if t <= prev.0 || o < prev.1 || o >= next_offset.max(self.base_offset + 1) {
                return false;
            }
            prev = (t, o);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Lookup returns the greatest indexed offset <= target, as a linear scan does.
        #[test]
        fn offset_lookup_matches_linear_scan(
            deltas in proptest::collection::vec((1u32..50, 1u32..5000), 0..300),
            targets in proptest::collection::vec(0i64..20_000, 1..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let base = 1000;
            let mut idx = OffsetIndex::open(&dir.path().join("i.index"), base, Some(8 * 400)).unwrap();
            let (mut off, mut pos) = (base, 0u32);
            let mut entries = vec![];
            for (d, p) in deltas {
                off += d as i64;
                pos += p;
                prop_assert!(idx.append(off, pos));
                entries.push((off, pos));
            }
            for t in targets {
                let t = base + t / 10;
                let expected = entries.iter().rev().find(|(o, _)| *o <= t).copied().unwrap_or((base, 0));
                prop_assert_eq!(idx.lookup(t), expected);
            }
            // Reopening (after a trim) sees the same entries.
            idx.trim().unwrap();
            let reopened = OffsetIndex::open(&dir.path().join("i.index"), base, None).unwrap();
            prop_assert_eq!(reopened.entries(), entries.len());
        }

        #[test]
        fn time_lookup_finds_last_entry_below(
            steps in proptest::collection::vec((1i64..100, 1u32..20), 1..200),
            target in 0i64..30_000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut idx = TimeIndex::open(&dir.path().join("t.timeindex"), 0, Some(12 * 300)).unwrap();
            let (mut ts, mut off) = (1_000i64, 0i64);
            let mut entries = vec![];
            for (dt, doff) in steps {
                ts += dt;
                off += doff as i64;
                idx.maybe_append(ts, off);
                entries.push((ts, off));
            }
            let expected = entries.iter().rev().find(|(t, _)| *t < target).map(|e| e.1).unwrap_or(0);
            prop_assert_eq!(idx.lookup(target), expected);
        }
    }

    #[test]
    fn preallocated_tail_after_crash_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        {
            let mut idx = OffsetIndex::open(&path, 0, Some(8 * 100)).unwrap();
            idx.append(5, 100);
            idx.append(9, 300);
            idx.flush().unwrap();
            // Dropped without trim, as a crash would leave it.
        }
        let idx = OffsetIndex::open(&path, 0, Some(8 * 100)).unwrap();
        assert_eq!(idx.entries(), 2);
        assert_eq!(idx.lookup(10), (9, 300));
        assert!(idx.is_consistent(400));
        assert!(!idx.is_consistent(200));
    }

    #[test]
    fn truncation_drops_entries_at_or_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = OffsetIndex::open(&dir.path().join("y.index"), 0, Some(800)).unwrap();
        for i in 1..=10 {
            idx.append(i * 10, i as u32 * 100);
        }
        idx.truncate_to(55);
        assert_eq!(idx.last_entry(), Some((50, 500)));
        let mut t = TimeIndex::open(&dir.path().join("y.timeindex"), 0, Some(1200)).unwrap();
        for i in 1..=10 {
            t.maybe_append(i * 1000, i * 10);
        }
        t.truncate_to(55);
        assert_eq!(t.last_entry(), Some((5000, 50)));
    }
}
