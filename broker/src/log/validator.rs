//! What Kafka's LogValidator checks in a client's batch before it is stored:
//! every record is walked, nothing is re-encoded.
//!
//! The batch header (CRC, count, offset range) is checked by
//! [`super::batch::validate_for_append`]; this walks the records the header
//! promises. Structural faults (a record count that does not match the
//! records present, lengths past the end, trailing bytes) make the batch
//! CORRUPT_MESSAGE. Faults of single records (an offset delta out of place, a
//! timestamp outside `message.timestamp.before/after.max.ms`, no key on a
//! compacted topic) are collected with their index in the batch and answered
//! as KIP-467 record errors, so a client fails exactly those records.
//!
//! Records are walked by [`super::record`]: keys, values and headers are
//! skipped, never copied.

use bytes::Bytes;

use super::batch::BatchHeader;
use super::record;
use crate::error::{Error, RecordError, RecordErrorKind, Result};

/// Kafka's RecordBatch.NO_TIMESTAMP.
const NO_TIMESTAMP: i64 = -1;

/// The topic's rules for a client's records, read from its config at append time.
#[derive(Debug, Clone, Copy)]
pub struct RecordPolicy {
    pub now_ms: i64,
    /// CreateTime topics check record timestamps; LogAppendTime ones overwrite them.
    pub create_time: bool,
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
    /// Compacted topics refuse records without a key.
    pub require_keys: bool,
    /// The most a compressed batch may decompress to.
    pub max_uncompressed: usize,
}

/// What the walk learned: the true max timestamp and the offset delta of the
/// record holding it (the header's own value is the client's claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validated {
    pub max_timestamp: i64,
    pub offset_delta_of_max: i32,
}

/// Walks every record of `batch` (a whole v2 batch whose header is already
/// validated). Compressed batches are decompressed for the walk only.
pub fn validate_records(batch: &Bytes, policy: &RecordPolicy) -> Result<Validated> {
    let header = BatchHeader::parse(batch)?;
    let count = header.records_count();
    let base_timestamp = header.base_timestamp();
    let mut errors = Vec::new();
    let mut max = Validated {
        max_timestamp: i64::MIN,
        offset_delta_of_max: 0,
    };
    record::for_each(
        record::records_section(batch, policy.max_uncompressed)?,
        count,
        |index, r| {
            let timestamp = base_timestamp.wrapping_add(r.timestamp_delta);
            if r.offset_delta != index {
                errors.push(RecordError::new(
                    index,
                    RecordErrorKind::InvalidRecord,
                    format!(
                        "record {index} has offset delta {}; inner offsets must be 0..{count}",
                        r.offset_delta
                    ),
                ));
            }
            if policy.require_keys && r.key.is_none() {
                errors.push(RecordError::new(
                    index,
                    RecordErrorKind::InvalidRecord,
                    "compacted topic cannot accept a record without a key".to_string(),
                ));
            }
            if policy.create_time {
                if let Some(problem) = timestamp_problem(timestamp, policy) {
                    errors.push(RecordError::new(index, RecordErrorKind::InvalidTimestamp, problem));
                }
            }
            if timestamp > max.max_timestamp {
                max = Validated {
                    max_timestamp: timestamp,
                    offset_delta_of_max: r.offset_delta,
                };
            }
            Ok(())
        },
    )?;
    if !errors.is_empty() {
        return Err(Error::InvalidRecords(errors));
    }
    Ok(max)
}

/// Kafka's `message.timestamp.before.max.ms` / `after.max.ms` check.
fn timestamp_problem(timestamp: i64, policy: &RecordPolicy) -> Option<String> {
    if timestamp == NO_TIMESTAMP {
        return None; // a record without a timestamp, which Kafka lets through
    }
    let behind = policy.now_ms.saturating_sub(timestamp);
    let ahead = timestamp.saturating_sub(policy.now_ms);
    if behind > policy.timestamp_before_max_ms {
        Some(format!(
            "timestamp {timestamp} is {behind} ms before the broker's time, more than message.timestamp.before.max.ms {}",
            policy.timestamp_before_max_ms
        ))
    } else if ahead > policy.timestamp_after_max_ms {
        Some(format!(
            "timestamp {timestamp} is {ahead} ms after the broker's time, more than message.timestamp.after.max.ms {}",
            policy.timestamp_after_max_ms
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{encode_records, plain_record, PatchedHeader, HEADER_SIZE};
    use kafka_protocol::records::Compression;

    const NOW: i64 = 1_700_000_000_000;

    fn policy() -> RecordPolicy {
        RecordPolicy {
            now_ms: NOW,
            create_time: true,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: 3_600_000,
            require_keys: false,
            max_uncompressed: 1 << 20,
        }
    }

    fn batch(keys: &[Option<&str>], timestamps: &[i64], compression: Compression) -> Bytes {
        let mut records: Vec<_> = keys
            .iter()
            .zip(timestamps)
            .enumerate()
            .map(|(i, (k, ts))| {
                plain_record(
                    i as i64,
                    *ts,
                    k.map(|k| Bytes::from(k.to_string())),
                    Some(Bytes::from_static(b"value")),
                )
            })
            .collect();
        encode_records(&mut records, compression, -1, -1, -1).unwrap()
    }

    #[test]
    fn a_good_batch_reports_its_true_max_timestamp() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(
                &[Some("a"), Some("b"), Some("c")],
                &[NOW, NOW + 5, NOW + 2],
                compression,
            );
            let v = validate_records(&b, &policy()).unwrap();
            assert_eq!(
                v,
                Validated {
                    max_timestamp: NOW + 5,
                    offset_delta_of_max: 1
                },
                "{compression:?}"
            );
        }
    }

    #[test]
    fn keyless_records_on_a_compacted_topic_are_named_by_index() {
        let b = batch(&[Some("a"), None, Some("c"), None], &[NOW; 4], Compression::Lz4);
        let p = RecordPolicy {
            require_keys: true,
            ..policy()
        };
        let Err(Error::InvalidRecords(errors)) = validate_records(&b, &p) else {
            panic!("keyless records must be refused");
        };
        assert_eq!(errors.iter().map(|e| e.batch_index).collect::<Vec<_>>(), vec![1, 3]);
        assert!(errors.iter().all(|e| e.kind == RecordErrorKind::InvalidRecord));
    }

    #[test]
    fn timestamps_outside_the_window_are_invalid_timestamps() {
        let b = batch(
            &[Some("a"), Some("b"), Some("c")],
            &[NOW, NOW + 7_200_000, NOW - 1000],
            Compression::None,
        );
        let p = RecordPolicy {
            timestamp_before_max_ms: 500,
            ..policy()
        };
        let Err(Error::InvalidRecords(errors)) = validate_records(&b, &p) else {
            panic!("timestamps out of range must be refused");
        };
        assert_eq!(errors.iter().map(|e| e.batch_index).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(Error::InvalidRecords(errors).code(), 32, "INVALID_TIMESTAMP");
        // LogAppendTime topics overwrite timestamps: nothing to check.
        let p = RecordPolicy {
            create_time: false,
            ..p
        };
        assert!(validate_records(&b, &p).is_ok());
    }

    /// Rewrites the record count (and the CRC) of an uncompressed batch.
    fn with_count(b: &Bytes, count: i32) -> Bytes {
        let mut out = b.to_vec();
        out[57..61].copy_from_slice(&count.to_be_bytes());
        out[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        let mut h = PatchedHeader::from_batch(&out);
        h.recompute_crc(&out[HEADER_SIZE..]);
        out[..HEADER_SIZE].copy_from_slice(&h.0);
        Bytes::from(out)
    }

    #[test]
    fn a_record_count_that_does_not_match_the_records_is_corrupt() {
        let b = batch(&[Some("a"), Some("b")], &[NOW; 2], Compression::None);
        for count in [1, 3, i32::MAX] {
            let bad = with_count(&b, count);
            assert!(
                matches!(validate_records(&bad, &policy()), Err(Error::CorruptMessage(_))),
                "count {count}"
            );
        }
    }

    #[test]
    fn offset_deltas_out_of_place_are_invalid_records() {
        // Two single-record batches glued: the second record says delta 0 again.
        let one = batch(&[Some("a")], &[NOW], Compression::None);
        let record = one.slice(HEADER_SIZE..);
        let mut glued = one.to_vec();
        glued.extend_from_slice(&record);
        let len = (glued.len() - 12) as i32;
        glued[8..12].copy_from_slice(&len.to_be_bytes());
        let glued = with_count(&Bytes::from(glued), 2);
        let Err(Error::InvalidRecords(errors)) = validate_records(&glued, &policy()) else {
            panic!("a repeated offset delta must be refused");
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].batch_index, 1);
    }

    proptest::proptest! {
        /// Whatever the record bytes say, the walk ends with an answer and never panics.
        #[test]
        fn the_walk_survives_any_record_bytes(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            count in proptest::prop_oneof![0..8i32, proptest::num::i32::ANY],
        ) {
            let good = batch(&[Some("a")], &[NOW], Compression::None);
            let mut out = good[..HEADER_SIZE].to_vec();
            out.extend_from_slice(&body);
            let len = (out.len() - 12) as i32;
            out[8..12].copy_from_slice(&len.to_be_bytes());
            let count = count.max(1);
            let bad = with_count(&Bytes::from(out), count);
            let _ = validate_records(&bad, &policy());
        }
    }
}
