//! Zero-copy fetch responses.
//!
//! The kafka-protocol codec encodes a fetch response whose record sets are
//! placeholders: slices of a static zero buffer, each starting at its own
//! address. The output buffer recognises a placeholder by address and length
//! as the codec copies it in, and puts the segment file region behind it in
//! its place. Large regions then go to the socket with sendfile(2); small ones
//! are read into the response. Stored batches are never decoded or copied
//! through user space on their way out.

use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

pub use crate::log::FileSlice;

const PLACEHOLDER_LEN: usize = 64 << 20;
/// Never read: only its addresses identify record sets during encoding.
static PLACEHOLDER: [u8; PLACEHOLDER_LEN] = [0; PLACEHOLDER_LEN];

/// Regions below this size are read into the response instead of sendfile'd.
pub const SENDFILE_MIN: usize = 16 * 1024;

/// File regions standing behind placeholder record sets of one response.
#[derive(Default)]
pub struct FileRecords {
    next_start: usize,
    held: Vec<(usize, usize, FileSlice)>,
}

impl FileRecords {
    /// A placeholder for `slice`, or None when the placeholder space is used up
    /// (the caller then reads the region instead).
    pub fn hold(&mut self, slice: FileSlice) -> Option<Bytes> {
        let start = self.next_start;
        if slice.len == 0 || start + slice.len > PLACEHOLDER_LEN {
            return None;
        }
        // Distinct start addresses make every placeholder identifiable.
        self.next_start += 1;
        let bytes = Bytes::from_static(&PLACEHOLDER[start..start + slice.len]);
        self.held.push((bytes.as_ptr() as usize, slice.len, slice));
        Some(bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Brings the regions that are not in the page cache into it, blocking:
    /// afterwards encoding (which reads small regions) and sendfile find
    /// them in memory. A read error is left for those reads to report.
    pub fn load_evicted(&self) {
        let evicted: Vec<&FileSlice> = self
            .held
            .iter()
            .map(|(_, _, s)| s)
            .filter(|s| !s.is_resident())
            .collect();
        if evicted.is_empty() {
            return;
        }
        crate::blocking::blocking(|| {
            for slice in evicted {
                if let Err(e) = slice.load() {
                    tracing::debug!(error = %e, "reading a fetched region into the page cache");
                }
            }
        });
    }
}

/// One piece of an outgoing frame.
#[derive(Debug)]
pub enum Chunk {
    Bytes(Bytes),
    File(FileSlice),
}

impl Chunk {
    pub fn len(&self) -> usize {
        match self {
            Chunk::Bytes(b) => b.len(),
            Chunk::File(f) => f.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

enum Piece {
    Bytes(BytesMut),
    File(FileSlice),
}

/// The codec's output buffer: bytes, with file regions spliced in at placeholders.
pub struct ChunkedBuf<'a> {
    pieces: Vec<Piece>,
    current: BytesMut,
    flushed: usize,
    files: &'a FileRecords,
    substituted: usize,
    error: Option<std::io::Error>,
}

impl<'a> ChunkedBuf<'a> {
    pub fn new(files: &'a FileRecords, capacity: usize) -> ChunkedBuf<'a> {
        ChunkedBuf {
            pieces: Vec::new(),
            current: BytesMut::with_capacity(capacity),
            flushed: 0,
            files,
            substituted: 0,
            error: None,
        }
    }

    fn flush_current(&mut self) {
        if !self.current.is_empty() {
            self.flushed += self.current.len();
            let cap = self.current.capacity().clamp(256, 64 * 1024);
            let done = std::mem::replace(&mut self.current, BytesMut::with_capacity(cap));
            self.pieces.push(Piece::Bytes(done));
        }
    }

    /// The frame: `prefix_len` bytes at the start are patched by `patch`
    /// (the size prefix) once the total length is known.
    pub fn finish(mut self, patch: impl FnOnce(&mut [u8], usize)) -> std::io::Result<Vec<Chunk>> {
        let mut patch = Some(patch);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        // Every placeholder must have been replaced: zeros must never reach a client.
        if self.substituted != self.files.held.len() {
            return Err(std::io::Error::other("a record set placeholder was not substituted"));
        }
        self.flush_current();
        let total = self.flushed;
        let mut chunks = Vec::with_capacity(self.pieces.len());
        let mut first = true;
        for piece in self.pieces {
            match piece {
                Piece::Bytes(mut b) => {
                    if let Some(patch) = patch.take().filter(|_| first) {
                        patch(&mut b, total);
                    }
                    chunks.push(Chunk::Bytes(b.freeze()));
                }
                Piece::File(f) => chunks.push(Chunk::File(f)),
            }
            first = false;
        }
        Ok(chunks)
    }
}

// SAFETY: every method delegates to the inner BytesMut, which upholds BufMut's contract.
unsafe impl BufMut for ChunkedBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        let addr = src.as_ptr() as usize;
        let base = PLACEHOLDER.as_ptr() as usize;
        // Placeholders are handed out at increasing addresses: a binary search finds one.
        let held = if (base..base + PLACEHOLDER_LEN).contains(&addr) {
            let held = &self.files.held;
            held.binary_search_by_key(&addr, |(a, _, _)| *a)
                .ok()
                .map(|i| &held[i])
                .filter(|(_, len, _)| *len == src.len())
        } else {
            None
        };
        match held {
            Some((_, _, slice)) => {
                self.substituted += 1;
                if slice.len >= SENDFILE_MIN {
                    self.flush_current();
                    self.flushed += slice.len;
                    self.pieces.push(Piece::File(slice.clone()));
                } else {
                    match slice.read() {
                        Ok(bytes) => self.current.put_slice(&bytes),
                        Err(e) => {
                            self.error = Some(e);
                            self.current.put_bytes(0, slice.len);
                        }
                    }
                }
            }
            None => self.current.put_slice(src),
        }
    }
}

impl ByteBufMut for ChunkedBuf<'_> {
    fn offset(&self) -> usize {
        self.flushed + self.current.len()
    }

    // Message encoders never seek or fill gaps (only record batch encoders
    // do), so these only ever address the current tail.
    fn seek(&mut self, offset: usize) {
        self.current.resize(offset.saturating_sub(self.flushed), 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        let start = r.start.saturating_sub(self.flushed);
        let end = r.end.saturating_sub(self.flushed);
        &mut self.current[start..end]
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::*;

    fn file_with(data: &[u8]) -> (tempfile::NamedTempFile, Arc<std::fs::File>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        let file = Arc::new(f.reopen().unwrap());
        (f, file)
    }

    /// Expands chunks back into the bytes a socket would carry.
    fn flatten(chunks: &[Chunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            match c {
                Chunk::Bytes(b) => out.extend_from_slice(b),
                Chunk::File(f) => out.extend_from_slice(&f.read().unwrap()),
            }
        }
        out
    }

    #[test]
    fn placeholders_become_file_regions_and_encode_identically() {
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (_keep, file) = file_with(&big);
        let mut files = FileRecords::default();
        let large = FileSlice {
            file: file.clone(),
            position: 10,
            len: 50_000,
        };
        let small = FileSlice {
            file: file.clone(),
            position: 60_000,
            len: 100,
        };
        let p_large = files.hold(large.clone()).unwrap();
        let p_small = files.hold(small.clone()).unwrap();
        let response = |a: Bytes, b: Bytes| {
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default().with_partitions(vec![
                PartitionData::default().with_partition_index(0).with_records(Some(a)),
                PartitionData::default().with_partition_index(1).with_records(Some(b)),
            ])])
        };
        let mut buf = ChunkedBuf::new(&files, 64);
        response(p_large, p_small).encode(&mut buf, 12).unwrap();
        let chunks = buf.finish(|_, _| {}).unwrap();
        assert!(
            chunks.iter().any(|c| matches!(c, Chunk::File(f) if f.len == 50_000)),
            "large region is sendfile'd"
        );
        assert_eq!(
            chunks.iter().filter(|c| matches!(c, Chunk::File(_))).count(),
            1,
            "small region is inlined"
        );

        // Byte for byte what encoding the real records gives.
        let mut expected = BytesMut::new();
        response(large.read().unwrap(), small.read().unwrap())
            .encode(&mut expected, 12)
            .unwrap();
        let flat = flatten(&chunks);
        assert_eq!(flat, expected.to_vec());
        let decoded = FetchResponse::decode(&mut Bytes::from(flat), 12).unwrap();
        assert_eq!(
            decoded.responses[0].partitions[0].records.as_deref(),
            Some(&big[10..50_010])
        );
    }

    /// A fetched region evicted from the page cache is read back in before
    /// the response is encoded or sendfile'd.
    #[test]
    fn evicted_regions_are_loaded_before_sending() {
        use std::os::fd::AsRawFd;
        let (keep, file) = file_with(&vec![3u8; 300_000]);
        keep.as_file().sync_all().unwrap();
        // SAFETY: a plain advice call on an open descriptor.
        assert_eq!(
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) },
            0
        );
        let mut files = FileRecords::default();
        let slices = [(0, 100), (100_000, 200_000)].map(|(position, len)| FileSlice {
            file: file.clone(),
            position,
            len,
        });
        for s in &slices {
            files.hold(s.clone()).unwrap();
        }
        let evicted = slices.iter().all(|s| !s.is_resident());
        // Without cachestat (before Linux 6.5) every region counts as resident.
        assert!(evicted || !crate::log::page_cache::is_supported(), "evicted");
        files.load_evicted();
        assert!(slices.iter().all(FileSlice::is_resident));
    }

    #[test]
    fn an_unsubstituted_placeholder_is_an_error_not_zeros() {
        let (_keep, file) = file_with(&[1u8; 100]);
        let mut files = FileRecords::default();
        let placeholder = files
            .hold(FileSlice {
                file,
                position: 0,
                len: 100,
            })
            .unwrap();
        // Encoded somewhere the buffer never sees it: the frame must be refused.
        let mut elsewhere = BytesMut::new();
        elsewhere.put_slice(&placeholder);
        let buf = ChunkedBuf::new(&files, 64);
        assert!(buf.finish(|_, _| {}).is_err());
    }
}
