//! Records of the internal `__consumer_offsets` topic, in Kafka's formats:
//! offset commit key v1 (group, topic, partition) with value v3, and group
//! metadata key v2 (group) with value v3. A null value is a tombstone.

use bytes::{Buf, BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<MemberValue>,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed coordinator record: {0}")]
pub struct RecordError(pub(crate) String);

/// A string longer than the record format's i16 length allows: the write is
/// refused, never stored truncated.
#[derive(Debug, thiserror::Error)]
#[error("{field} of {len} bytes does not fit a coordinator record (at most 32767)")]
pub struct StringTooLong {
    pub field: &'static str,
    pub len: usize,
}

pub(crate) fn put_str(buf: &mut BytesMut, field: &'static str, s: &str) -> Result<(), StringTooLong> {
    let len = i16::try_from(s.len()).map_err(|_| StringTooLong { field, len: s.len() })?;
    buf.put_i16(len);
    buf.put_slice(s.as_bytes());
    Ok(())
}

pub(crate) fn put_nullable_str(buf: &mut BytesMut, field: &'static str, s: Option<&str>) -> Result<(), StringTooLong> {
    match s {
        Some(s) => put_str(buf, field, s),
        None => {
            buf.put_i16(-1);
            Ok(())
        }
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

/// A bounds-checked reader: malformed records are errors, never panics.
/// (The transaction coordinator's records use it too.)
pub(crate) struct Reader(pub(crate) Bytes);

impl Reader {
    pub(crate) fn need(&self, n: usize) -> Result<(), RecordError> {
        if self.0.remaining() < n {
            return Err(RecordError(format!("needs {n} more bytes, has {}", self.0.remaining())));
        }
        Ok(())
    }
    pub(crate) fn i8(&mut self) -> Result<i8, RecordError> {
        self.need(1)?;
        Ok(self.0.get_i8())
    }
    pub(crate) fn i16(&mut self) -> Result<i16, RecordError> {
        self.need(2)?;
        Ok(self.0.get_i16())
    }
    pub(crate) fn i32(&mut self) -> Result<i32, RecordError> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    pub(crate) fn i64(&mut self) -> Result<i64, RecordError> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    pub(crate) fn nullable_str(&mut self) -> Result<Option<String>, RecordError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        self.need(len as usize)?;
        let b = self.0.split_to(len as usize);
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|e| RecordError(e.to_string()))
    }
    pub(crate) fn str(&mut self) -> Result<String, RecordError> {
        self.nullable_str().map(Option::unwrap_or_default)
    }
    pub(crate) fn bytes(&mut self) -> Result<Bytes, RecordError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(Bytes::new());
        }
        self.need(len as usize)?;
        Ok(self.0.split_to(len as usize))
    }
}

impl RecordKey {
    /// The group the record belongs to.
    pub fn group(&self) -> &str {
        match self {
            RecordKey::Offset { group, .. } | RecordKey::Group { group } => group,
        }
    }

    pub fn encode(&self) -> Result<Bytes, StringTooLong> {
        let mut buf = BytesMut::new();
        match self {
            RecordKey::Offset {
                group,
                topic,
                partition,
            } => {
                buf.put_i16(1);
                put_str(&mut buf, "group id", group)?;
                put_str(&mut buf, "topic", topic)?;
                buf.put_i32(*partition);
            }
            RecordKey::Group { group } => {
                buf.put_i16(2);
                put_str(&mut buf, "group id", group)?;
            }
        }
        Ok(buf.freeze())
    }

    pub fn decode(bytes: Bytes) -> Result<RecordKey, RecordError> {
        let mut r = Reader(bytes);
        match r.i16()? {
            0 | 1 => Ok(RecordKey::Offset {
                group: r.str()?,
                topic: r.str()?,
                partition: r.i32()?,
            }),
            2 => Ok(RecordKey::Group { group: r.str()? }),
            v => Err(RecordError(format!("unknown key version {v}"))),
        }
    }
}

impl OffsetValue {
    pub fn encode(&self) -> Result<Bytes, StringTooLong> {
        let mut buf = BytesMut::new();
        buf.put_i16(3);
        buf.put_i64(self.offset);
        buf.put_i32(self.leader_epoch);
        put_str(&mut buf, "offset metadata", &self.metadata)?;
        buf.put_i64(self.commit_timestamp);
        Ok(buf.freeze())
    }

    pub fn decode(bytes: Bytes) -> Result<OffsetValue, RecordError> {
        let mut r = Reader(bytes);
        let version = r.i16()?;
        let offset = r.i64()?;
        let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
        let metadata = r.str()?;
        let commit_timestamp = r.i64()?;
        if version == 1 {
            r.i64()?; // expire timestamp, unused since Kafka 2.1
        }
        Ok(OffsetValue {
            offset,
            leader_epoch,
            metadata,
            commit_timestamp,
        })
    }
}

impl GroupValue {
    pub fn encode(&self) -> Result<Bytes, StringTooLong> {
        let mut buf = BytesMut::new();
        buf.put_i16(3);
        put_str(&mut buf, "protocol type", &self.protocol_type)?;
        buf.put_i32(self.generation);
        put_nullable_str(&mut buf, "protocol", self.protocol.as_deref())?;
        put_nullable_str(&mut buf, "leader", self.leader.as_deref())?;
        buf.put_i64(self.state_timestamp);
        buf.put_i32(self.members.len() as i32);
        for m in &self.members {
            put_str(&mut buf, "member id", &m.member_id)?;
            put_nullable_str(&mut buf, "group instance id", m.group_instance_id.as_deref())?;
            put_str(&mut buf, "client id", &m.client_id)?;
            put_str(&mut buf, "client host", &m.client_host)?;
            buf.put_i32(m.rebalance_timeout_ms);
            buf.put_i32(m.session_timeout_ms);
            put_bytes(&mut buf, &m.subscription);
            put_bytes(&mut buf, &m.assignment);
        }
        Ok(buf.freeze())
    }

    pub fn decode(bytes: Bytes) -> Result<GroupValue, RecordError> {
        let mut r = Reader(bytes);
        let version = r.i16()?;
        let protocol_type = r.str()?;
        let generation = r.i32()?;
        let protocol = r.nullable_str()?;
        let leader = r.nullable_str()?;
        let state_timestamp = if version >= 2 { r.i64()? } else { -1 };
        let count = r.i32()?.max(0) as usize;
        let mut members = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let member_id = r.str()?;
            let group_instance_id = if version >= 3 { r.nullable_str()? } else { None };
            let client_id = r.str()?;
            let client_host = r.str()?;
            let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { 0 };
            let session_timeout_ms = r.i32()?;
            let rebalance_timeout_ms = if version >= 1 {
                rebalance_timeout_ms
            } else {
                session_timeout_ms
            };
            members.push(MemberValue {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                rebalance_timeout_ms,
                session_timeout_ms,
                subscription: r.bytes()?,
                assignment: r.bytes()?,
            });
        }
        Ok(GroupValue {
            protocol_type,
            generation,
            protocol,
            leader,
            state_timestamp,
            members,
        })
    }
}

/// Kafka's partition for a group: `abs(groupId.hashCode) % partitions`, with
/// Java's String.hashCode over UTF-16 code units.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    // Kafka's Utils.abs: Math.abs, with Integer.MIN_VALUE mapped to 0.
    hash.checked_abs().unwrap_or(0) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        for key in [
            RecordKey::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
            },
            RecordKey::Group { group: "g".into() },
        ] {
            assert_eq!(RecordKey::decode(key.encode().unwrap()).unwrap(), key);
        }
        let offset = OffsetValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "meta".into(),
            commit_timestamp: 99,
        };
        assert_eq!(OffsetValue::decode(offset.encode().unwrap()).unwrap(), offset);
        let group = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            state_timestamp: 1,
            members: vec![MemberValue {
                member_id: "m1".into(),
                group_instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 45_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        assert_eq!(GroupValue::decode(group.encode().unwrap()).unwrap(), group);
    }

    #[test]
    fn strings_longer_than_i16_are_refused_not_truncated() {
        let long = "g".repeat(40_000);
        let key = RecordKey::Group { group: long.clone() };
        assert!(matches!(
            key.encode(),
            Err(StringTooLong {
                field: "group id",
                len: 40_000
            })
        ));
        let ok = RecordKey::Group {
            group: "g".repeat(32_767),
        };
        assert_eq!(RecordKey::decode(ok.encode().unwrap()).unwrap(), ok);
        let value = OffsetValue {
            offset: 1,
            leader_epoch: -1,
            metadata: long,
            commit_timestamp: 0,
        };
        assert!(value.encode().is_err());
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(RecordKey::decode(Bytes::from_static(&[0, 1, 0, 9, b'x'])).is_err());
        assert!(OffsetValue::decode(Bytes::from_static(&[0, 3, 0])).is_err());
        assert!(RecordKey::decode(Bytes::from_static(&[0, 9])).is_err());
    }

    #[test]
    fn partition_matches_java_hash_code() {
        // "my-group".hashCode() == -1906497762 in Java; Kafka: abs -> 1906497762 % 50 == 12.
        assert_eq!(partition_for("my-group", 50), 12);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE, which Utils.abs maps to 0.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        // Positive hash codes map as before: "g".hashCode() == 103.
        assert_eq!(partition_for("g", 50), 3);
    }
}
