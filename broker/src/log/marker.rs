//! Transaction markers: the control batch a transaction coordinator writes
//! into each partition of a transaction to end it there (Kafka's
//! EndTransactionMarker). One record: key = version 0 and the marker type
//! (0 abort, 1 commit), value = version 0 and the coordinator's epoch.

use bytes::Bytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, TimestampType};

use crate::log::batch::encode_records;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Abort,
    Commit,
}

impl Marker {
    fn code(self) -> i16 {
        match self {
            Marker::Abort => 0,
            Marker::Commit => 1,
        }
    }
}

/// The control batch ending `producer_id`'s transaction (offset 0: the log
/// assigns the real one).
pub fn encode(
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    marker: Marker,
    timestamp: i64,
) -> Result<Bytes, String> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&marker.code().to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let mut records = [Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        headers: Default::default(),
    }];
    encode_records(&mut records, Compression::None, producer_id, producer_epoch, -1)
}

/// The marker a stored control batch carries; `None` for any other batch or
/// one whose control record does not parse (an unknown control type is not
/// a transaction's end).
pub fn decode(batch: &[u8]) -> Option<Marker> {
    decode_with_epoch(batch).map(|(marker, _)| marker)
}

/// The marker and the coordinator epoch it was written in (-1 when its
/// value carries none).
pub fn decode_with_epoch(batch: &[u8]) -> Option<(Marker, i32)> {
    let mut bytes = Bytes::copy_from_slice(batch);
    let set = RecordBatchDecoder::decode(&mut bytes).ok()?;
    let record = set.records.first().filter(|r| r.control)?;
    let key = record.key.as_ref()?;
    if key.len() < 4 || i16::from_be_bytes([key[0], key[1]]) != 0 {
        return None;
    }
    let marker = match i16::from_be_bytes([key[2], key[3]]) {
        0 => Marker::Abort,
        1 => Marker::Commit,
        _ => return None,
    };
    let coordinator_epoch = record
        .value
        .as_ref()
        .filter(|v| v.len() >= 6)
        .map_or(-1, |v| i32::from_be_bytes([v[2], v[3], v[4], v[5]]));
    Some((marker, coordinator_epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::BatchHeader;

    #[test]
    fn a_marker_round_trips_as_a_control_batch() {
        for marker in [Marker::Abort, Marker::Commit] {
            let batch = encode(42, 3, 7, marker, 1_000).unwrap();
            let h = BatchHeader::parse(&batch).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id(), h.producer_epoch(), h.base_sequence()), (42, 3, -1));
            assert_eq!(decode(&batch), Some(marker));
            assert_eq!(decode_with_epoch(&batch), Some((marker, 7)));
        }
    }

    #[test]
    fn other_batches_are_no_markers() {
        let batch = crate::log::batch::tests::encode_batch(0, &[b"a"], 1);
        assert_eq!(decode(&batch), None);
        assert_eq!(decode(b"garbage"), None);
    }
}
