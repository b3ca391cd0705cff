//! Loading the coordinator's shards from `__transaction_state`: each
//! partition this broker comes to lead is read into its shard (the last
//! state of each transactional id), and the shard of each partition it
//! stops leading is dropped, as Kafka's TransactionStateManager follows the
//! leadership of its partitions.

use std::collections::HashMap;
use std::time::Instant;

use kafka_protocol::records::RecordBatchDecoder;

use super::coordinator::{Shard, TransactionCoordinator, TRANSACTION_STATE_TOPIC};
use super::metadata::TxnMetadata;
use super::records;
use crate::error::Result;
use crate::log::batch;
use crate::replica::Partition;

impl TransactionCoordinator {
    /// Loads newly led partitions and drops the ones no longer led. Called
    /// a few times a second; cheap when nothing moved. A partition is read
    /// once its high watermark reached its log end (a new leader's last
    /// states are all replicated), so no state is loaded that could vanish.
    pub fn follow_leadership(&self) {
        if !self.controller.image().topics.contains_key(TRANSACTION_STATE_TOPIC) {
            return;
        }
        for p in 0..self.config.state_partitions {
            let led = self.replicas.get(TRANSACTION_STATE_TOPIC, p).ok();
            let (loaded, epoch) = {
                let shard = self.shards[p as usize].lock();
                (shard.loaded, shard.epoch)
            };
            match led {
                Some(part)
                    if (!loaded || epoch != part.leader_epoch()) && part.high_watermark() >= part.log_end_offset() =>
                {
                    self.load_shard(p, &part);
                }
                None if loaded => {
                    *self.shards[p as usize].lock() = Shard::default();
                    tracing::info!(
                        partition = p,
                        "no longer coordinator for the transactions of {TRANSACTION_STATE_TOPIC}-{p}"
                    );
                }
                _ => {}
            }
        }
    }

    fn load_shard(&self, p: i32, part: &Partition) {
        let started = Instant::now();
        let epoch = part.leader_epoch();
        match read_states(part) {
            Ok((txns, records)) => {
                let mut shard = self.shards[p as usize].lock();
                *shard = Shard {
                    loaded: true,
                    epoch,
                    txns,
                    ..Shard::default()
                };
                tracing::info!(
                    partition = p,
                    records,
                    transactional_ids = shard.txns.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "became coordinator for the transactions of {TRANSACTION_STATE_TOPIC}-{p}"
                );
            }
            Err(e) => tracing::warn!(partition = p, error = %e, "loading transactions failed; retrying"),
        }
    }
}

/// The last state of each transactional id in a partition, read up to its
/// high watermark (a tombstone removes the id), and the records read.
fn read_states(part: &Partition) -> Result<(HashMap<String, TxnMetadata>, usize)> {
    let mut txns = HashMap::new();
    let mut read_count = 0;
    let mut next = part.log_start_offset();
    let end = part.high_watermark();
    while next < end {
        let read = part.read(next, 4 << 20, true)?;
        if read.records.is_empty() {
            break;
        }
        for (at, h) in batch::complete_batches(&read.records) {
            next = h.next_offset();
            if h.is_control() {
                continue;
            }
            let mut one = read.records.slice(at..at + h.total_size());
            let set = match RecordBatchDecoder::decode(&mut one) {
                Ok(set) => set,
                Err(e) => {
                    tracing::warn!(offset = h.base_offset(), error = %e, "skipping undecodable batch");
                    continue;
                }
            };
            for r in set.records {
                read_count += 1;
                let Some(key) = r.key else { continue };
                let id = match records::decode_key(key) {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping transaction state record");
                        continue;
                    }
                };
                match r.value.map(records::decode_value) {
                    Some(Ok(m)) => {
                        txns.insert(id, m);
                    }
                    Some(Err(e)) => tracing::warn!(transactional_id = %id, error = %e, "skipping transaction state"),
                    None => {
                        txns.remove(&id);
                    }
                }
            }
        }
    }
    Ok((txns, read_count))
}
