//! The replica manager's side of Produce (Kafka's `appendRecords` and
//! `DelayedProduce`): one partition's append as leader, and what its answer
//! still waits for. The API layer decodes the request and builds the answer.

use std::sync::Arc;

use bytes::Bytes;

use super::{Partition, ReplicaManager};
use crate::error::{Error, Result};
use crate::log::AppendInfo;

/// What a partition's produce answer waits for after the append: the
/// records on disk (flush.messages), then in the ISR (acks=all).
pub struct DelayedProduce {
    part: Arc<Partition>,
    /// Everything below this offset on disk, at the log's truncation count
    /// of the append.
    durable: Option<(i64, u64)>,
    /// The high watermark past this offset, in the leader epoch appended in.
    replicated: Option<(i64, i32)>,
}

impl ReplicaManager {
    /// Appends one partition's record set on this broker as its leader
    /// (`acks` as in the Produce request). Answers the append and what its
    /// answer still waits for. Blocking disk work runs in place, the
    /// worker's other tasks handed on meanwhile.
    pub fn append_records(
        &self,
        topic: &str,
        partition: i32,
        records: &Bytes,
        acks: i16,
    ) -> Result<(AppendInfo, DelayedProduce)> {
        let part = self.get(topic, partition)?;
        let (info, leader_epoch) = crate::blocking::blocking(|| part.append(records, acks))?;
        // A retried batch answers once its original is on disk too.
        let pending_flush = info.duplicate
            && part.log.config().flush_messages < i64::MAX
            && part.log.recovery_point() <= info.last_offset;
        let durable = (info.flush_due || pending_flush).then_some((info.last_offset + 1, info.truncations));
        let replicated =
            (acks == -1 && part.high_watermark() <= info.last_offset).then_some((info.last_offset, leader_epoch));
        Ok((
            info,
            DelayedProduce {
                part,
                durable,
                replicated,
            },
        ))
    }
}

impl DelayedProduce {
    /// Nothing to wait for: the answer is final now.
    pub fn is_done(&self) -> bool {
        self.durable.is_none() && self.replicated.is_none()
    }

    /// Resolves once the append is durable and replicated as asked, or with
    /// why not by `deadline`: REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND
    /// when the ISR fell below min.insync.replicas meanwhile, or
    /// NOT_LEADER_OR_FOLLOWER when this broker stopped leading.
    pub async fn wait(self, deadline: tokio::time::Instant) -> Result<()> {
        let part = self.part;
        if let Some((offset, truncations)) = self.durable {
            let flushed = tokio::time::timeout_at(deadline, part.make_durable(offset, truncations))
                .await
                .unwrap_or(Err(Error::RequestTimedOut));
            if let Err(e) = flushed {
                tracing::error!(tp = %part.tp, error = %e, "flush failed");
                return Err(e);
            }
        }
        if let Some((last, epoch)) = self.replicated {
            return match tokio::time::timeout_at(deadline, part.wait_for_high_watermark(last, epoch)).await {
                Ok(answer) => answer,
                Err(_) if part.is_under_min_isr() => Err(Error::NotEnoughReplicasAfterAppend),
                Err(_) => Err(Error::RequestTimedOut),
            };
        }
        Ok(())
    }
}
