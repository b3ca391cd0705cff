//! The replica manager's side of Fetch (Kafka's `fetchMessages` /
//! `readFromLocalLog`): what one partition serves to a consumer or a
//! follower. The API layer decodes the request and encodes the answer; the
//! follower's bookkeeping (its progress, the throttle, divergence) lives here
//! with the partition it concerns.

use std::sync::Arc;

use tokio::sync::Notify;

use super::purgatory::Event;
use super::ReplicaManager;
use crate::error::Result;
use crate::log::producer_state::AbortedTxn;
use crate::log::SliceInfo;

/// What a fetch asks of one partition.
#[derive(Debug, Clone, Copy)]
pub struct PartitionFetch {
    pub partition: i32,
    pub fetch_offset: i64,
    /// The leader epoch the fetcher believes current (-1: unchecked, KIP-320).
    pub current_leader_epoch: i32,
    /// A follower's: the epoch of its last batch (-1: none).
    pub last_fetched_epoch: i32,
    /// A follower's: where its log starts.
    pub log_start_offset: i64,
    pub max_bytes: usize,
    /// A consumer's isolation level is read_committed: it reads below the
    /// last stable offset and learns the aborted transactions there.
    pub read_committed: bool,
}

/// One partition's share of a fetch.
#[derive(Debug)]
pub enum PartitionRead {
    /// A file region up to the high watermark (consumers) or the log end
    /// (followers). `news`: answer without waiting, although it may be
    /// empty (the follower must learn a moved log start).
    Records {
        info: SliceInfo,
        high_watermark: i64,
        last_stable_offset: i64,
        /// For read_committed consumers: the aborted transactions in the region.
        aborted: Vec<AbortedTxn>,
        news: bool,
    },
    /// A follower whose last epoch ends earlier here, or that this log
    /// never had: it cuts its log at `end_offset` before fetching on (KIP-101).
    Diverging {
        epoch: i32,
        end_offset: i64,
        high_watermark: i64,
    },
}

impl ReplicaManager {
    /// Reads one partition this broker leads for a fetch by `replica` (-1: a
    /// consumer). A follower's fetch records its progress (fetch offset and
    /// log start, which move the high and low watermarks) and, while a
    /// reassignment is adding it, falls under the replication throttle.
    /// `waker` is registered before the read, so an append in between wakes
    /// it. `first`: nothing read yet for this response, so a consumer gets at
    /// least one batch (KIP-74).
    pub fn read_for_fetch(
        &self,
        replica: i32,
        topic: &str,
        p: &PartitionFetch,
        first: bool,
        waker: Option<&Arc<Notify>>,
        now_ms: i64,
    ) -> Result<PartitionRead> {
        let part = self.get(topic, p.partition)?;
        if replica >= 0 && p.last_fetched_epoch >= 0 && p.last_fetched_epoch < part.leader_epoch() {
            let (epoch, end_offset) = match part.log.end_offset_for_epoch(p.last_fetched_epoch) {
                // No epoch here at all: all of the follower's log diverges.
                (-1, _) => (-1, part.log.log_start_offset()),
                found => found,
            };
            if epoch < p.last_fetched_epoch || end_offset < p.fetch_offset {
                return Ok(PartitionRead::Diverging {
                    epoch,
                    end_offset,
                    high_watermark: part.high_watermark(),
                });
            }
        }
        part.check_leader_epoch(p.current_leader_epoch)?;
        match waker {
            Some(w) if replica >= 0 => part.watch(Event::Append, w),
            Some(w) => part.watch(Event::HighWatermark, w),
            None => {}
        }
        if replica < 0 {
            let (info, aborted) = if p.read_committed {
                part.read_slice_committed(p.fetch_offset, p.max_bytes, first)?
            } else {
                (part.read_slice(p.fetch_offset, p.max_bytes, first)?, Vec::new())
            };
            return Ok(PartitionRead::Records {
                info,
                high_watermark: part.high_watermark(),
                last_stable_offset: part.last_stable_offset(),
                aborted,
                news: false,
            });
        }
        part.record_follower_fetch(replica, p.fetch_offset, p.log_start_offset, now_ms);
        // A DeleteRecords moved the log start: the follower learns it now,
        // not at max.wait.ms.
        let news = p.log_start_offset < part.log.log_start_offset();
        let info = if part.is_throttled_for(replica) {
            // A reassignment's new replica: within the replication throttle.
            let limit = if self.throttle().exhausted(now_ms) {
                0
            } else {
                p.max_bytes
            };
            let info = part.read_slice_for_follower(p.fetch_offset, limit)?;
            self.throttle().record(info.slice.as_ref().map_or(0, |s| s.len), now_ms);
            info
        } else {
            part.read_slice_for_follower(p.fetch_offset, p.max_bytes)?
        };
        Ok(PartitionRead::Records {
            info,
            high_watermark: part.high_watermark(),
            last_stable_offset: part.last_stable_offset(),
            aborted: Vec::new(),
            news,
        })
    }
}
