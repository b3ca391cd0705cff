//! A view of the 61-byte header of a Kafka v2 record batch.
//!
//! The produce and fetch paths never decode records: they read this header,
//! check the CRC32C (which covers bytes 21.. of the batch, so the base offset
//! and partition leader epoch can be patched without recomputing it), and move
//! the bytes as they are.

use bytes::Bytes;

pub const HEADER_SIZE: usize = 61;
/// Bytes before and including the length field.
pub const LOG_OVERHEAD: usize = 12;

const BASE_OFFSET: usize = 0;
const LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_MASK: i16 = 0x08;
const TRANSACTIONAL_MASK: i16 = 0x10;
const CONTROL_MASK: i16 = 0x20;
/// KIP-534: the base timestamp holds the time after which tombstones may go.
const DELETE_HORIZON_MASK: i16 = 0x40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("invalid batch length {0}")]
    InvalidLength(i32),
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    #[error("CRC mismatch: stored {stored:#x}, computed {computed:#x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch declares {0} records")]
    InvalidRecordCount(i32),
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Reads the batch's total size (length field + 12) from its first 12 bytes.
pub fn total_size(prefix: &[u8]) -> Result<usize, BatchError> {
    if prefix.len() < LOG_OVERHEAD {
        return Err(BatchError::Truncated {
            needed: LOG_OVERHEAD,
            available: prefix.len(),
        });
    }
    let len = i32_at(prefix, LENGTH);
    // The smallest legal v2 batch is its header.
    if len < (HEADER_SIZE - LOG_OVERHEAD) as i32 {
        return Err(BatchError::InvalidLength(len));
    }
    Ok(len as usize + LOG_OVERHEAD)
}

/// A borrowed view over a batch header (at least [`HEADER_SIZE`] bytes).
#[derive(Clone, Copy)]
pub struct BatchHeader<'a>(&'a [u8]);

impl<'a> BatchHeader<'a> {
    /// Views a header; checks only that enough bytes are present and the magic is 2.
    pub fn parse(bytes: &'a [u8]) -> Result<BatchHeader<'a>, BatchError> {
        if bytes.len() < HEADER_SIZE {
            return Err(BatchError::Truncated {
                needed: HEADER_SIZE,
                available: bytes.len(),
            });
        }
        let magic = bytes[MAGIC] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        total_size(bytes)?;
        Ok(BatchHeader(bytes))
    }

    pub fn base_offset(&self) -> i64 {
        i64_at(self.0, BASE_OFFSET)
    }
    /// The bytes viewed: the whole batch where the caller passed it whole.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
    /// Size of the whole batch including the offset and length fields.
    pub fn total_size(&self) -> usize {
        i32_at(self.0, LENGTH) as usize + LOG_OVERHEAD
    }
    pub fn partition_leader_epoch(&self) -> i32 {
        i32_at(self.0, PARTITION_LEADER_EPOCH)
    }
    pub fn crc(&self) -> u32 {
        i32_at(self.0, CRC) as u32
    }
    pub fn attributes(&self) -> i16 {
        i16_at(self.0, ATTRIBUTES)
    }
    pub fn compression(&self) -> i16 {
        self.attributes() & COMPRESSION_MASK
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & TIMESTAMP_TYPE_MASK != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_MASK != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_MASK != 0
    }
    /// KIP-534's delete horizon, when the cleaner has set one.
    pub fn delete_horizon(&self) -> Option<i64> {
        (self.attributes() & DELETE_HORIZON_MASK != 0).then(|| self.base_timestamp())
    }
    pub fn last_offset_delta(&self) -> i32 {
        i32_at(self.0, LAST_OFFSET_DELTA)
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + self.last_offset_delta() as i64
    }
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
    pub fn base_timestamp(&self) -> i64 {
        i64_at(self.0, BASE_TIMESTAMP)
    }
    pub fn max_timestamp(&self) -> i64 {
        i64_at(self.0, MAX_TIMESTAMP)
    }
    pub fn producer_id(&self) -> i64 {
        i64_at(self.0, PRODUCER_ID)
    }
    pub fn producer_epoch(&self) -> i16 {
        i16_at(self.0, PRODUCER_EPOCH)
    }
    pub fn base_sequence(&self) -> i32 {
        i32_at(self.0, BASE_SEQUENCE)
    }
    pub fn last_sequence(&self) -> i32 {
        let base = self.base_sequence();
        if base < 0 {
            return -1;
        }
        // Sequences wrap at i32::MAX like Kafka's DefaultRecordBatch.incrementSequence.
        let delta = self.last_offset_delta();
        if base > i32::MAX - delta {
            delta - (i32::MAX - base) - 1
        } else {
            base + delta
        }
    }
    pub fn records_count(&self) -> i32 {
        i32_at(self.0, RECORDS_COUNT)
    }
}

/// Checks a complete batch: length, magic, record count and CRC32C.
pub fn validate(batch: &[u8]) -> Result<BatchHeader<'_>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.total_size() != batch.len() {
        return Err(BatchError::Truncated {
            needed: header.total_size(),
            available: batch.len(),
        });
    }
    let computed = crc32c::crc32c(&batch[ATTRIBUTES..]);
    if computed != header.crc() {
        return Err(BatchError::CrcMismatch {
            stored: header.crc(),
            computed,
        });
    }
    if header.records_count() < 0 || header.last_offset_delta() < 0 {
        return Err(BatchError::InvalidRecordCount(header.records_count()));
    }
    Ok(header)
}

/// [`validate`] plus the checks a leader makes on a client's batch: at least
/// one record and an offset range matching the count (compaction later leaves
/// gaps, so stored batches are not held to this).
pub fn validate_for_append(batch: &[u8]) -> Result<BatchHeader<'_>, BatchError> {
    let header = validate(batch)?;
    let count = header.records_count();
    if count == 0 || header.last_offset_delta() != count - 1 {
        return Err(BatchError::InvalidRecordCount(count));
    }
    Ok(header)
}

/// Splits a record set into whole batches without copying.
pub fn split_batches(records: &Bytes) -> Result<Vec<Bytes>, BatchError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let size = total_size(&records[pos..])?;
        if pos + size > records.len() {
            return Err(BatchError::Truncated {
                needed: size,
                available: records.len() - pos,
            });
        }
        out.push(records.slice(pos..pos + size));
        pos += size;
    }
    Ok(out)
}

/// How many bytes at the front of a fetched record set are whole batches. A
/// fetch may end inside a batch (the leader's byte limit cut it there, as
/// Kafka's does); that batch comes whole with the next fetch. A length that
/// is not a batch's is left to [`split_batches`] to refuse.
pub fn whole_batches_len(records: &[u8]) -> usize {
    let mut pos = 0;
    loop {
        match total_size(&records[pos..]) {
            Ok(size) if pos + size <= records.len() => pos += size,
            Err(BatchError::InvalidLength(_)) => return records.len(),
            _ => return pos,
        }
    }
}

/// Walks whole batches in a buffer, stopping at the first incomplete one.
pub fn complete_batches(buf: &[u8]) -> impl Iterator<Item = (usize, BatchHeader<'_>)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = &buf[pos..];
        let header = BatchHeader::parse(rest).ok()?;
        let size = header.total_size();
        if size > rest.len() {
            return None;
        }
        let at = pos;
        pos += size;
        Some((at, header))
    })
}

/// A record without a producer (no id, epoch or sequence), to encode with [`encode_records`].
pub fn plain_record(
    offset: i64,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
) -> kafka_protocol::records::Record {
    kafka_protocol::records::Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp,
        key,
        value,
        headers: Default::default(),
    }
}

/// Encodes records into one v2 batch with kafka-protocol's encoder, with the
/// given producer fields (-1s for a batch without a producer).
pub fn encode_records(
    records: &mut [kafka_protocol::records::Record],
    compression: kafka_protocol::records::Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<Bytes, String> {
    use kafka_protocol::records::{RecordBatchEncoder, RecordEncodeOptions};
    // The encoder keeps records in one batch only while offset - sequence is
    // constant; batches without a producer get their -1 patched in after.
    for r in records.iter_mut() {
        r.producer_id = producer_id;
        r.producer_epoch = producer_epoch;
        if base_sequence < 0 {
            r.sequence = r.offset as i32;
        }
    }
    let mut out = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| e.to_string())?;
    if out.len() < HEADER_SIZE {
        return Err("no records to encode".into());
    }
    let mut header = PatchedHeader::from_batch(&out);
    header.set_producer(producer_id, producer_epoch, base_sequence);
    header.recompute_crc(&out[HEADER_SIZE..]);
    out[..HEADER_SIZE].copy_from_slice(&header.0);
    Ok(out.freeze())
}

/// An owned copy of a header to patch before it is written.
pub struct PatchedHeader(pub [u8; HEADER_SIZE]);

impl PatchedHeader {
    pub fn from_batch(batch: &[u8]) -> PatchedHeader {
        let mut h = [0u8; HEADER_SIZE];
        h.copy_from_slice(&batch[..HEADER_SIZE]);
        PatchedHeader(h)
    }
    pub fn set_base_offset(&mut self, offset: i64) {
        self.0[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&offset.to_be_bytes());
    }
    pub fn set_partition_leader_epoch(&mut self, epoch: i32) {
        self.0[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
    }
    /// Marks the batch LogAppendTime with the given time; the CRC must be recomputed.
    pub fn set_log_append_time(&mut self, timestamp: i64) {
        let attributes = i16_at(&self.0, ATTRIBUTES) | TIMESTAMP_TYPE_MASK;
        self.0[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        self.0[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&timestamp.to_be_bytes());
    }
    /// A cleaned batch's new records section: its count and length; the
    /// offsets (base and last delta) stay, so producer state stays right.
    pub fn set_records(&mut self, count: i32, records_len: usize) {
        self.0[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&count.to_be_bytes());
        let length = (HEADER_SIZE - LOG_OVERHEAD + records_len) as i32;
        self.0[LENGTH..LENGTH + 4].copy_from_slice(&length.to_be_bytes());
    }
    /// The records section is stored uncompressed (an emptied batch).
    pub fn set_uncompressed(&mut self) {
        let attributes = i16_at(&self.0, ATTRIBUTES) & !COMPRESSION_MASK;
        self.0[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    }
    /// Marks the batch with a KIP-534 delete horizon (held in the base timestamp).
    pub fn set_delete_horizon(&mut self, horizon: i64) {
        let attributes = i16_at(&self.0, ATTRIBUTES) | DELETE_HORIZON_MASK;
        self.0[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        self.0[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&horizon.to_be_bytes());
    }
    /// Sets the batch's max timestamp; the CRC must be recomputed.
    pub fn set_max_timestamp(&mut self, timestamp: i64) {
        self.0[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&timestamp.to_be_bytes());
    }
    pub fn set_producer(&mut self, producer_id: i64, epoch: i16, base_sequence: i32) {
        self.0[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
        self.0[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&epoch.to_be_bytes());
        self.0[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
    }
    /// Recomputes the CRC over this header's tail and the batch's records.
    pub fn recompute_crc(&mut self, records: &[u8]) {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.0[ATTRIBUTES..]), records);
        self.0[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    }
    pub fn view(&self) -> BatchHeader<'_> {
        BatchHeader(&self.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::records::Compression;

    /// Encodes a real batch with kafka-protocol's encoder for tests.
    pub fn encode_batch(base_offset: i64, values: &[&[u8]], timestamp: i64) -> Bytes {
        encode_batch_with(base_offset, values, timestamp, -1, -1, -1, Compression::None)
    }

    pub fn encode_batch_with(
        base_offset: i64,
        values: &[&[u8]],
        timestamp: i64,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
        compression: Compression,
    ) -> Bytes {
        let mut records: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut r = plain_record(
                    base_offset + i as i64,
                    timestamp + i as i64,
                    Some(Bytes::from(format!("k{i}"))),
                    Some(Bytes::copy_from_slice(v)),
                );
                r.sequence = base_sequence.wrapping_add(i as i32);
                r
            })
            .collect();
        encode_records(&mut records, compression, producer_id, producer_epoch, base_sequence).unwrap()
    }

    #[test]
    fn header_fields_and_crc() {
        let batch = encode_batch(10, &[b"a", b"b", b"c"], 1000);
        let h = validate(&batch).unwrap();
        assert_eq!(h.base_offset(), 10);
        assert_eq!(h.last_offset(), 12);
        assert_eq!(h.records_count(), 3);
        assert_eq!(h.base_timestamp(), 1000);
        assert_eq!(h.max_timestamp(), 1002);
        assert_eq!(h.total_size(), batch.len());
    }

    #[test]
    fn patching_offset_and_epoch_keeps_crc_valid() {
        let batch = encode_batch(0, &[b"x"], 5);
        let mut p = PatchedHeader::from_batch(&batch);
        p.set_base_offset(77);
        p.set_partition_leader_epoch(3);
        let mut whole = p.0.to_vec();
        whole.extend_from_slice(&batch[HEADER_SIZE..]);
        let h = validate(&whole).unwrap();
        assert_eq!((h.base_offset(), h.partition_leader_epoch()), (77, 3));
    }

    #[test]
    fn log_append_time_needs_new_crc() {
        let batch = encode_batch(0, &[b"x"], 5);
        let mut p = PatchedHeader::from_batch(&batch);
        p.set_log_append_time(999);
        let mut whole = p.0.to_vec();
        whole.extend_from_slice(&batch[HEADER_SIZE..]);
        assert!(matches!(validate(&whole), Err(BatchError::CrcMismatch { .. })));
        p.recompute_crc(&batch[HEADER_SIZE..]);
        let mut whole = p.0.to_vec();
        whole.extend_from_slice(&batch[HEADER_SIZE..]);
        let h = validate(&whole).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp(), 999);
    }

    #[test]
    fn corrupt_and_truncated_batches_are_rejected() {
        let batch = encode_batch(0, &[b"hello"], 5);
        let mut bad = batch.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(validate(&bad), Err(BatchError::CrcMismatch { .. })));
        assert!(validate(&batch[..batch.len() - 1]).is_err());
        assert!(validate(&batch[..30]).is_err());
        let two = Bytes::from([batch.to_vec(), batch.to_vec()].concat());
        assert_eq!(split_batches(&two).unwrap().len(), 2);
        assert!(split_batches(&two.slice(..two.len() - 3)).is_err());
    }

    #[test]
    fn sequence_wraps() {
        let batch = encode_batch_with(0, &[b"a", b"b", b"c"], 1, 7, 0, i32::MAX - 1, Compression::None);
        let h = validate(&batch).unwrap();
        assert_eq!(h.base_sequence(), i32::MAX - 1);
        assert_eq!(h.last_sequence(), 0);
    }
}
