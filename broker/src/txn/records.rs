//! Records of the internal `__transaction_state` topic, in Kafka's formats:
//! TransactionLogKey v0 (the transactional id) and TransactionLogValue v0
//! (producer id and epoch, timeout, state, partitions, timestamps). A null
//! value is a tombstone.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

use super::metadata::{TxnMetadata, TxnState};
use crate::group::records::{put_str, Reader, RecordError, StringTooLong};

/// Kafka's TransactionState ids, as stored in TransactionLogValue.
fn state_id(state: TxnState) -> i8 {
    match state {
        TxnState::Empty => 0,
        TxnState::Ongoing => 1,
        TxnState::PrepareCommit => 2,
        TxnState::PrepareAbort => 3,
        TxnState::CompleteCommit => 4,
        TxnState::CompleteAbort => 5,
    }
}

fn state_from_id(id: i8) -> Result<TxnState, RecordError> {
    Ok(match id {
        0 => TxnState::Empty,
        1 => TxnState::Ongoing,
        2 => TxnState::PrepareCommit,
        // PrepareEpochFence (7) is an abort under a bumped epoch, as Fjord writes it.
        3 | 7 => TxnState::PrepareAbort,
        4 => TxnState::CompleteCommit,
        5 => TxnState::CompleteAbort,
        other => return Err(RecordError(format!("unknown transaction state {other}"))),
    })
}

pub fn encode_key(transactional_id: &str) -> Result<Bytes, StringTooLong> {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    put_str(&mut buf, "transactional id", transactional_id)?;
    Ok(buf.freeze())
}

pub fn decode_key(bytes: Bytes) -> Result<String, RecordError> {
    let mut r = Reader(bytes);
    match r.i16()? {
        0 => r.str(),
        v => Err(RecordError(format!("unknown transaction log key version {v}"))),
    }
}

pub fn encode_value(m: &TxnMetadata) -> Result<Bytes, StringTooLong> {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    buf.put_i64(m.producer_id);
    buf.put_i16(m.producer_epoch);
    buf.put_i32(m.timeout_ms);
    buf.put_i8(state_id(m.state));
    // Partitions grouped by topic, as Kafka writes them.
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, partition) in &m.partitions {
        match topics.last_mut() {
            Some((t, ps)) if *t == topic.as_str() => ps.push(*partition),
            _ => topics.push((topic.as_str(), vec![*partition])),
        }
    }
    buf.put_i32(topics.len() as i32);
    for (topic, partitions) in topics {
        put_str(&mut buf, "topic", topic)?;
        buf.put_i32(partitions.len() as i32);
        for p in partitions {
            buf.put_i32(p);
        }
    }
    buf.put_i64(m.updated_ms);
    buf.put_i64(m.started_ms);
    Ok(buf.freeze())
}

pub fn decode_value(bytes: Bytes) -> Result<TxnMetadata, RecordError> {
    let mut r = Reader(bytes);
    let version = r.i16()?;
    if version != 0 {
        return Err(RecordError(format!("unknown transaction log value version {version}")));
    }
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let state = state_from_id(r.i8()?)?;
    let mut partitions = BTreeSet::new();
    let topics = r.i32()?;
    for _ in 0..topics.max(0) {
        let topic = r.str()?;
        let count = r.i32()?;
        // Each partition takes four bytes: a count beyond the record is malformed.
        r.need(count.max(0) as usize * 4)?;
        for _ in 0..count.max(0) {
            partitions.insert((topic.clone(), r.i32()?));
        }
    }
    let updated_ms = r.i64()?;
    let started_ms = r.i64()?;
    Ok(TxnMetadata {
        producer_id,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        started_ms,
        updated_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_value_round_trip() {
        let m = TxnMetadata {
            producer_id: 7,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: [("a".to_string(), 0), ("a".to_string(), 2), ("b".to_string(), 1)].into(),
            started_ms: 100,
            updated_ms: 200,
        };
        assert_eq!(decode_value(encode_value(&m).unwrap()).unwrap(), m);
        assert_eq!(decode_key(encode_key("tx-1").unwrap()).unwrap(), "tx-1");
    }

    #[test]
    fn malformed_values_are_errors() {
        let m = TxnMetadata {
            producer_id: 7,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: [("a".to_string(), 0)].into(),
            started_ms: 100,
            updated_ms: 200,
        };
        let full = encode_value(&m).unwrap();
        for cut in 0..full.len() {
            assert!(decode_value(full.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut huge = BytesMut::from(&full[..17]);
        huge.put_i32(1);
        huge.put_i16(1);
        huge.put_slice(b"a");
        huge.put_i32(i32::MAX);
        assert!(decode_value(huge.freeze()).is_err());
    }
}
