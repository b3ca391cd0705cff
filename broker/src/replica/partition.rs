//! One partition this broker leads: its log, leader epoch and high watermark.
//!
//! On a single node the ISR is this broker alone, so the high watermark
//! follows the log end offset after every append; fetches never read past it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::error::Result;
use crate::log::manager::TopicPartition;
use crate::log::{AppendInfo, Log, ReadInfo, SliceInfo};

pub struct Partition {
    pub tp: TopicPartition,
    pub topic_id: Uuid,
    pub log: Arc<Log>,
    leader_epoch: i32,
    high_watermark: AtomicI64,
}

impl Partition {
    pub fn new(tp: TopicPartition, topic_id: Uuid, log: Arc<Log>) -> Partition {
        let hw = log.log_end_offset();
        Partition {
            tp,
            topic_id,
            log,
            leader_epoch: 0,
            high_watermark: AtomicI64::new(hw),
        }
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Appends as leader. With the ISR being this broker, the write is
    /// committed at once (acks=all behaves as acks=1 on one node).
    pub fn append(&self, records: &Bytes) -> Result<AppendInfo> {
        let info = self.log.append_as_leader(records, self.leader_epoch)?;
        self.high_watermark.fetch_max(info.last_offset + 1, Ordering::AcqRel);
        Ok(info)
    }

    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<ReadInfo> {
        self.log.read(offset, max_bytes, self.high_watermark(), min_one)
    }

    /// The file region a fetch serves (zero-copy path).
    pub fn read_slice(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<SliceInfo> {
        self.log.read_slice(offset, max_bytes, self.high_watermark(), min_one)
    }

    pub fn delete_records_before(&self, offset: i64) -> Result<i64> {
        self.log.delete_records_before(offset, self.high_watermark())
    }
}
