//! One partition this broker holds a replica of: its log, and as the
//! controller last set them its replica set, ISR, leader epoch and whether
//! this broker leads it; and the high watermark.
//!
//! Until followers replicate, the ISR is the leader alone, so the high
//! watermark follows the log end offset after every append; fetches never
//! read past it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::log::manager::TopicPartition;
use crate::log::{AppendInfo, Log, ReadInfo, SliceInfo};

pub struct Partition {
    pub tp: TopicPartition,
    pub topic_id: Uuid,
    pub log: Arc<Log>,
    leadership: RwLock<Leadership>,
    high_watermark: AtomicI64,
}

/// The partition's replicas, ISR and leader epoch as the controller last set
/// them, and whether this broker leads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    pub leading: bool,
    /// -1 when the partition is offline.
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl Partition {
    /// A partition not led here until [`Partition::set_leadership`] says so.
    pub fn new(tp: TopicPartition, topic_id: Uuid, log: Arc<Log>) -> Partition {
        let hw = log.log_end_offset();
        Partition {
            tp,
            topic_id,
            log,
            leadership: RwLock::new(Leadership::default()),
            high_watermark: AtomicI64::new(hw),
        }
    }

    pub fn is_leading(&self) -> bool {
        self.leadership.read().leading
    }

    pub fn set_leadership(&self, leadership: Leadership) {
        let mut current = self.leadership.write();
        if *current != leadership {
            if leadership.leading && !current.leading {
                tracing::info!(tp = %self.tp, leader_epoch = leadership.leader_epoch, "leading");
            } else if current.leading && !leadership.leading {
                tracing::info!(tp = %self.tp, "no longer leading");
            }
            *current = leadership;
        }
    }

    /// The epoch stamped into batches appended as leader.
    pub fn leader_epoch(&self) -> i32 {
        self.leadership.read().leader_epoch
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    pub fn replicas(&self) -> Vec<i32> {
        self.leadership.read().replicas.clone()
    }

    pub fn isr(&self) -> Vec<i32> {
        self.leadership.read().isr.clone()
    }

    /// No leader anywhere: no in-sync replica is live.
    pub fn is_offline(&self) -> bool {
        self.leadership.read().leader < 0
    }

    pub fn is_under_replicated(&self) -> bool {
        let l = self.leadership.read();
        l.isr.len() < l.replicas.len()
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
        ((self.leadership.read().isr.len() as i64) < i64::from(min)).then_some(min)
    }

    /// Appends as leader (`acks` as in the Produce request). With the ISR being
    /// this broker, the write is committed at once (acks=all behaves as acks=1
    /// on one node, unless min.insync.replicas asks for more replicas).
    pub fn append(&self, records: &Bytes, acks: i16) -> Result<AppendInfo> {
        let (isr, leader_epoch) = {
            let l = self.leadership.read();
            (l.isr.len(), l.leader_epoch)
        };
        if acks == -1 {
            if let Some(min) = self.min_isr_not_met() {
                return Err(Error::NotEnoughReplicas { isr, min });
            }
        }
        let info = self.log.append_as_leader(records, leader_epoch)?;
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
