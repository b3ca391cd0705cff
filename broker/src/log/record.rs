//! The records inside a v2 batch, walked without copying: each record's
//! bytes as stored and the fields the log reads (timestamp and offset
//! deltas, key, whether a value is present). Used by the validator on append
//! and by the cleaner, which keeps surviving records byte for byte.
//!
//! Varints are read and written with prost's LEB128 codec and zigzagged as
//! Kafka's ByteUtils does.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

use super::batch::{BatchHeader, HEADER_SIZE};
use crate::error::{Error, Result};

/// One record as stored, with the fields the log reads.
#[derive(Debug, Clone)]
pub struct RecordView {
    /// The whole record: its length varint, then its body.
    pub raw: Bytes,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<Bytes>,
    pub has_value: bool,
    attributes: u8,
    /// The body from the offset delta on.
    after_timestamp: Bytes,
}

impl RecordView {
    /// This record with another timestamp delta (its batch's base timestamp
    /// changed); everything else is kept as stored.
    pub fn with_timestamp_delta(&self, delta: i64) -> Bytes {
        let mut body = BytesMut::with_capacity(self.after_timestamp.len() + 11);
        body.put_u8(self.attributes);
        prost::encoding::encode_varint(zigzag64(delta), &mut body);
        body.put_slice(&self.after_timestamp);
        let mut out = BytesMut::with_capacity(body.len() + 5);
        prost::encoding::encode_varint(u64::from(zigzag32(body.len() as i32)), &mut out);
        out.put_slice(&body);
        out.freeze()
    }
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::CorruptMessage(what.into())
}

fn zigzag32(n: i32) -> u32 {
    ((n << 1) ^ (n >> 31)) as u32
}

fn zigzag64(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// A zigzag varint of at most 32 bits.
fn varint(buf: &mut Bytes, what: &str) -> Result<i32> {
    let n = prost::encoding::decode_varint(buf).map_err(|_| corrupt(format!("truncated {what}")))?;
    let n = u32::try_from(n).map_err(|_| corrupt(format!("{what} does not fit 32 bits")))?;
    Ok(((n >> 1) as i32) ^ -((n & 1) as i32))
}

/// A zigzag varint of at most 64 bits.
fn varlong(buf: &mut Bytes, what: &str) -> Result<i64> {
    let n = prost::encoding::decode_varint(buf).map_err(|_| corrupt(format!("truncated {what}")))?;
    Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
}

/// Takes a length-prefixed field; None when its length is -1 (null).
fn field(buf: &mut Bytes, what: &str, nullable: bool) -> Result<Option<Bytes>> {
    let len = varint(buf, what)?;
    if len == -1 && nullable {
        return Ok(None);
    }
    if len < 0 {
        return Err(corrupt(format!("{what} length {len}")));
    }
    if len as usize > buf.remaining() {
        return Err(corrupt(format!("{what} of {len} bytes past the end of its record")));
    }
    Ok(Some(buf.split_to(len as usize)))
}

/// The records section of a batch, decompressed when the batch is compressed,
/// into at most `max_uncompressed` bytes: a few hostile bytes that claim or
/// inflate to gigabytes are CORRUPT_MESSAGE, not an allocation. The codec
/// crates are used directly, as streams cut at the bound (kafka-protocol's
/// decompressors allocate what the stream claims).
pub fn records_section(batch: &Bytes, max_uncompressed: usize) -> Result<Bytes> {
    let header = BatchHeader::parse(batch)?;
    let body = batch.slice(HEADER_SIZE..);
    let failed = |e: std::io::Error| corrupt(format!("cannot decompress the batch: {e}"));
    match header.compression() {
        0 => Ok(body),
        1 => bounded(flate2::read::GzDecoder::new(&body[..]), max_uncompressed),
        2 => snappy(&body, max_uncompressed),
        3 => bounded(lz4::Decoder::new(&body[..]).map_err(failed)?, max_uncompressed),
        4 => bounded(
            zstd::stream::read::Decoder::new(&body[..]).map_err(failed)?,
            max_uncompressed,
        ),
        other => Err(corrupt(format!("unknown compression codec {other}"))),
    }
}

fn too_large(limit: usize) -> Error {
    corrupt(format!("the batch decompresses to more than {limit} bytes"))
}

/// Reads a decompressing stream to its end or one byte past `limit`.
fn bounded(reader: impl std::io::Read, limit: usize) -> Result<Bytes> {
    use std::io::Read;
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(format!("cannot decompress the batch: {e}")))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(out))
}

/// Kafka's snappy: xerial-framed blocks (`\x82SNAPPY\0` header) or, as the
/// Java client also reads, one raw block. Each block's claimed length is
/// checked against the bound before anything is allocated.
fn snappy(body: &[u8], limit: usize) -> Result<Bytes> {
    const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
    const XERIAL_HEADER: usize = 16;
    let mut out = Vec::new();
    let block = |compressed: &[u8], out: &mut Vec<u8>| -> Result<()> {
        let len = snap::raw::decompress_len(compressed).map_err(|e| corrupt(format!("snappy: {e}")))?;
        if out.len() + len > limit {
            return Err(too_large(limit));
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(compressed, &mut out[start..])
            .map_err(|e| corrupt(format!("snappy: {e}")))?;
        Ok(())
    };
    if body.len() >= XERIAL_HEADER && body.starts_with(XERIAL_MAGIC) {
        let mut rest = &body[XERIAL_HEADER..];
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt("snappy: truncated block length"))?;
            let len = u32::from_be_bytes(*len) as usize;
            if len > tail.len() {
                return Err(corrupt("snappy: block past the end of the batch"));
            }
            block(&tail[..len], &mut out)?;
            rest = &tail[len..];
        }
    } else {
        block(body, &mut out)?;
    }
    Ok(Bytes::from(out))
}

/// Compresses a records section with the batch codec `codec` (0: none).
pub fn compress(codec: i16, records: &[u8]) -> Result<Bytes> {
    let mut out = BytesMut::new();
    let write = |buf: &mut BytesMut| {
        buf.put_slice(records);
        Ok(())
    };
    let compressed = match codec {
        0 => return Ok(Bytes::copy_from_slice(records)),
        1 => Gzip::compress(&mut out, write),
        2 => Snappy::compress(&mut out, write),
        3 => Lz4::compress(&mut out, write),
        4 => Zstd::compress(&mut out, write),
        other => return Err(corrupt(format!("unknown compression codec {other}"))),
    };
    compressed.map_err(|e| corrupt(format!("cannot compress the batch: {e:#}")))?;
    Ok(out.freeze())
}

/// Walks exactly `count` records of a records section, calling `f(index,
/// record)`. The count must match the records present and every length
/// must stay inside its record; anything else is CORRUPT_MESSAGE.
pub fn for_each(mut records: Bytes, count: i32, mut f: impl FnMut(i32, RecordView) -> Result<()>) -> Result<()> {
    for index in 0..count {
        if !records.has_remaining() {
            return Err(corrupt(format!("the batch declares {count} records but holds {index}")));
        }
        let start = records.clone();
        let len = varint(&mut records, "record length")?;
        if len < 0 || len as usize > records.remaining() {
            return Err(corrupt(format!(
                "record {index} of {len} bytes past the end of the batch"
            )));
        }
        let prefix = start.len() - records.len();
        let raw = start.slice(..prefix + len as usize);
        let mut body = records.split_to(len as usize);
        if !body.has_remaining() {
            return Err(corrupt(format!("record {index} is empty")));
        }
        let attributes = body.get_u8();
        let timestamp_delta = varlong(&mut body, "timestamp delta")?;
        let after_timestamp = body.clone();
        let offset_delta = varint(&mut body, "offset delta")?;
        let key = field(&mut body, "key", true)?;
        let has_value = field(&mut body, "value", true)?.is_some();
        let headers = varint(&mut body, "header count")?;
        if headers < 0 || headers as usize > body.remaining() / 2 {
            return Err(corrupt(format!("record {index} declares {headers} headers")));
        }
        for _ in 0..headers {
            field(&mut body, "header key", false)?;
            field(&mut body, "header value", true)?;
        }
        if body.has_remaining() {
            return Err(corrupt(format!(
                "record {index} has {} bytes past its last header",
                body.remaining()
            )));
        }
        f(
            index,
            RecordView {
                raw,
                timestamp_delta,
                offset_delta,
                key,
                has_value,
                attributes,
                after_timestamp,
            },
        )?;
    }
    if records.has_remaining() {
        return Err(corrupt(format!(
            "{} bytes past the {count} records the batch declares",
            records.remaining()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{encode_records, plain_record, PatchedHeader};
    use kafka_protocol::records::{Compression, RecordBatchDecoder};

    /// A batch of three records from a header and a records section, as the cleaner builds one.
    fn assemble(mut header: PatchedHeader, body: &[u8]) -> Bytes {
        header.set_records(3, body.len());
        header.recompute_crc(body);
        Bytes::from([&header.0[..], body].concat())
    }

    #[test]
    fn decompression_stops_at_the_bound() {
        let zeros = vec![0u8; 64 << 10];
        let mut records = vec![plain_record(0, 0, Some(Bytes::from("k")), Some(Bytes::from(zeros)))];
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = encode_records(&mut records, compression, -1, -1, -1).unwrap();
            assert!(batch.len() < 16 << 10, "{compression:?} shrinks zeros");
            assert!(
                records_section(&batch, 1 << 20).is_ok(),
                "{compression:?} within the bound"
            );
            assert!(
                matches!(records_section(&batch, 4 << 10), Err(Error::CorruptMessage(_))),
                "{compression:?} past the bound"
            );
        }
        // A raw snappy block claiming 4 GiB is refused before anything is allocated.
        let batch = encode_records(&mut records, Compression::Snappy, -1, -1, -1).unwrap();
        let mut header = PatchedHeader::from_batch(&batch);
        let claim: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0];
        header.set_records(1, claim.len());
        header.recompute_crc(claim);
        let lying = Bytes::from([&header.0[..], claim].concat());
        assert!(matches!(
            records_section(&lying, 1 << 20),
            Err(Error::CorruptMessage(_))
        ));
    }

    #[test]
    fn records_are_walked_and_reframed_as_stored() {
        let mut records: Vec<_> = (0..3)
            .map(|i| {
                plain_record(
                    i,
                    1_000 + i * 10,
                    (i != 1).then(|| Bytes::from(format!("k{i}"))),
                    (i != 2).then(|| Bytes::from_static(b"v")),
                )
            })
            .collect();
        for compression in [Compression::None, Compression::Snappy, Compression::Zstd] {
            let batch = encode_records(&mut records, compression, -1, -1, -1).unwrap();
            let section = records_section(&batch, 1 << 20).unwrap();
            let mut seen = Vec::new();
            let mut moved = Vec::new();
            for_each(section.clone(), 3, |i, r| {
                seen.push((i, r.offset_delta, r.timestamp_delta, r.key.clone(), r.has_value));
                moved.extend_from_slice(&r.with_timestamp_delta(r.timestamp_delta - 500));
                Ok(())
            })
            .unwrap();
            // Re-framed against a base timestamp 500 ms later, the records keep their timestamps.
            let mut h = PatchedHeader::from_batch(&batch);
            h.set_uncompressed();
            h.0[27..35].copy_from_slice(&1_500i64.to_be_bytes());
            let decoded = RecordBatchDecoder::decode(&mut assemble(h, &moved)).unwrap();
            let timestamps: Vec<i64> = decoded.records.iter().map(|r| r.timestamp).collect();
            assert_eq!(timestamps, vec![1_000, 1_010, 1_020]);
            assert_eq!(
                seen,
                vec![
                    (0, 0, 0, Some(Bytes::from("k0")), true),
                    (1, 1, 10, None, true),
                    (2, 2, 20, Some(Bytes::from("k2")), false),
                ]
            );
            // The section re-compressed decodes to the same records.
            let header = PatchedHeader::from_batch(&batch);
            let again = compress(header.view().compression(), &section).unwrap();
            let decoded = RecordBatchDecoder::decode(&mut assemble(header, &again)).unwrap();
            assert_eq!(decoded.records.len(), 3);
        }
    }
}
