//! One partition this broker leads: its log, replica set and ISR, leader
//! epoch and high watermark.
//!
//! On a single node the replica set and the ISR are this broker alone, so the
//! high watermark follows the log end offset after every append; fetches never
//! read past it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::log::manager::TopicPartition;
use crate::log::{AppendInfo, Log, ReadInfo, SliceInfo};

pub struct Partition {
    pub tp: TopicPartition,
    pub topic_id: Uuid,
    pub log: Arc<Log>,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    leader_epoch: i32,
    high_watermark: AtomicI64,
    /// Whether this broker leads the partition now (set from each metadata image).
    leading: AtomicBool,
}

impl Partition {
    /// A partition led by `leader`, the only replica until replication arrives.
    pub fn new(tp: TopicPartition, topic_id: Uuid, log: Arc<Log>, leader: i32) -> Partition {
        let hw = log.log_end_offset();
        Partition {
            tp,
            topic_id,
            log,
            replicas: vec![leader],
            isr: vec![leader],
            leader_epoch: 0,
            high_watermark: AtomicI64::new(hw),
            leading: AtomicBool::new(false),
        }
    }

    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    pub fn replicas(&self) -> &[i32] {
        &self.replicas
    }

    pub fn isr(&self) -> &[i32] {
        &self.isr
    }

    pub fn is_under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }

    /// Fewer in-sync replicas than the topic's `min.insync.replicas`: acks=all
    /// produces are refused, as Kafka does, rather than acknowledged with less
    /// durability than the topic promises.
    pub fn is_under_min_isr(&self) -> bool {
        self.min_isr_not_met().is_some()
    }

    /// The topic's min.insync.replicas, when the ISR is smaller than it.
    fn min_isr_not_met(&self) -> Option<i32> {
        let min = self.log.config().min_insync_replicas;
        ((self.isr.len() as i64) < i64::from(min)).then_some(min)
    }

    /// Appends as leader (`acks` as in the Produce request). With the ISR being
    /// this broker, the write is committed at once (acks=all behaves as acks=1
    /// on one node, unless min.insync.replicas asks for more replicas).
    pub fn append(&self, records: &Bytes, acks: i16) -> Result<AppendInfo> {
        if acks == -1 {
            if let Some(min) = self.min_isr_not_met() {
                return Err(Error::NotEnoughReplicas {
                    isr: self.isr.len(),
                    min,
                });
            }
        }
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
