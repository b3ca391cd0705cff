//! The leader's side of the ISR: which followers are in sync, as a pure
//! function of what their fetches showed, and the loop that asks the
//! controller to change the ISR (AlterPartition) when that differs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::partition::{FollowerState, Leadership};
use super::{Partition, ReplicaManager};
use crate::controller::{Controller, ControllerOp, IsrChange, OpResult};

/// The ISR the leader wants: a follower stays while it caught up with the
/// leader's log end within `lag_max_ms` (replica.lag.time.max.ms), and joins
/// once a fetch it made out of sync reached the high watermark of that
/// moment. Replica order is kept.
pub fn desired_isr(
    leadership: &Leadership,
    followers: &HashMap<i32, FollowerState>,
    now_ms: i64,
    lag_max_ms: i64,
) -> Vec<i32> {
    leadership
        .replicas
        .iter()
        .copied()
        .filter(|r| {
            if *r == leadership.leader {
                return true;
            }
            let in_sync = leadership.isr.contains(r);
            match followers.get(r) {
                Some(f) if in_sync => now_ms - f.last_caught_up_ms <= lag_max_ms,
                // Joining is earned by a fetch made while out of sync (Kafka
                // expands the ISR at fetch time): a stalled follower whose
                // old offset equals an idle partition's high watermark stays out.
                Some(f) => f.log_end_offset >= 0 && f.reached_high_watermark && !leadership.fenced.contains(r),
                None => in_sync,
            }
        })
        .collect()
}

/// Every `interval`, sends the controller the ISR the followers have earned
/// for each partition this broker leads where it differs: all of them in one
/// AlterPartition, as Kafka's AlterPartitionManager batches them. Counts
/// shrinks and expands.
pub async fn run(
    replicas: Arc<ReplicaManager>,
    controller: Arc<Controller>,
    lag_max_ms: i64,
    counters: (prometheus::IntCounter, prometheus::IntCounter),
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (shrinks, expands) = counters;
    let interval = Duration::from_millis((lag_max_ms / 4).clamp(100, 1000) as u64);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            () = crate::shutdown::stopped(&mut shutdown) => return,
        }
        let now = crate::log::segment::now_ms();
        let wanted: Vec<(Arc<Partition>, Leadership, Vec<i32>)> = replicas
            .all()
            .into_iter()
            .filter_map(|part| {
                let l = part.leadership();
                let isr = desired_isr(&l, &part.followers(), now, lag_max_ms);
                (l.leading && isr != l.isr).then_some((part, l, isr))
            })
            .collect();
        let Some((_, first, _)) = wanted.first() else {
            continue;
        };
        let op = ControllerOp::AlterPartition {
            leader: first.leader,
            changes: wanted
                .iter()
                .map(|(part, l, isr)| IsrChange {
                    topic: part.tp.topic.clone(),
                    partition: part.tp.partition,
                    leader_epoch: l.leader_epoch,
                    partition_epoch: l.partition_epoch,
                    isr: isr.clone(),
                })
                .collect(),
        };
        let results = match controller.execute(op).await {
            Ok(OpResult::Altered(results)) => results,
            Ok(other) => {
                tracing::warn!(?other, "unexpected answer to AlterPartition");
                continue;
            }
            // The controller moved or is unreachable; the next round asks again.
            Err(e) => {
                tracing::debug!(error = %e, "AlterPartition failed");
                continue;
            }
        };
        for ((part, l, isr), result) in wanted.iter().zip(results) {
            match result {
                Ok(()) => {
                    let left = l.isr.iter().filter(|r| !isr.contains(r)).count();
                    let joined = isr.iter().filter(|r| !l.isr.contains(r)).count();
                    shrinks.inc_by(left as u64);
                    expands.inc_by(joined as u64);
                    tracing::info!(tp = %part.tp, from = ?l.isr, to = ?isr, "ISR changed");
                }
                // A newer state is on its way; the next round uses it.
                Err(e) => tracing::debug!(tp = %part.tp, error = ?e, "ISR change refused"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leadership(isr: &[i32]) -> Leadership {
        Leadership {
            leading: true,
            leader: 1,
            leader_epoch: 3,
            partition_epoch: 4,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            adding: Vec::new(),
            fenced: Vec::new(),
        }
    }

    fn follower(leo: i64, caught_up: i64) -> FollowerState {
        FollowerState {
            log_end_offset: leo,
            log_start_offset: 0,
            last_caught_up_ms: caught_up,
            reached_high_watermark: false,
        }
    }

    #[test]
    fn lagging_followers_leave_and_caught_up_ones_join() {
        let followers = HashMap::from([(2, follower(100, 1_000)), (3, follower(40, 0))]);
        // 3 has not caught up for 31 s: out. 2 is fine.
        assert_eq!(
            desired_isr(&leadership(&[1, 2, 3]), &followers, 31_000, 30_000),
            vec![1, 2]
        );
        // 3 out of the ISR fetched at the high watermark of that moment
        // (produce may have moved it on since): back in, in replica order.
        let reached = FollowerState {
            reached_high_watermark: true,
            ..follower(99, 0)
        };
        let followers = HashMap::from([(2, follower(100, 31_000)), (3, reached)]);
        assert_eq!(
            desired_isr(&leadership(&[1, 2]), &followers, 31_000, 30_000),
            vec![1, 2, 3]
        );
        // No such fetch since it left, even at the (idle) high watermark: stays out.
        let followers = HashMap::from([(2, follower(100, 31_000)), (3, follower(100, 0))]);
        assert_eq!(
            desired_isr(&leadership(&[1, 2]), &followers, 31_000, 30_000),
            vec![1, 2]
        );
        let followers = HashMap::from([(2, follower(-1, 31_000))]);
        assert_eq!(desired_isr(&leadership(&[1]), &followers, 31_000, 30_000), vec![1]);
    }

    proptest::proptest! {
        /// Over random replica sets, ISRs, fenced brokers and follower
        /// progress: the leader stays; the ISR keeps the replicas' order and
        /// holds nothing else; an in-sync follower leaves only after lagging
        /// past replica.lag.time.max.ms; an out-of-sync one joins only by a
        /// fetch that reached the high watermark, never from a fenced broker.
        #[test]
        fn the_desired_isr_follows_kafkas_rules(
            others in proptest::sample::subsequence(vec![2, 3, 4, 5], 0..=4),
            in_sync in proptest::collection::vec(proptest::bool::ANY, 4),
            fenced in proptest::collection::vec(proptest::bool::ANY, 4),
            progress in proptest::collection::vec((-1i64..100, 0i64..60_000, proptest::bool::ANY), 4),
            known in proptest::collection::vec(proptest::bool::ANY, 4),
        ) {
            let now = 60_000;
            let lag_max = 30_000;
            let mut replicas = vec![1];
            replicas.extend(&others);
            let pick = |flags: &[bool]| -> Vec<i32> {
                others.iter().zip(flags).filter(|(_, f)| **f).map(|(r, _)| *r).collect()
            };
            let mut isr = vec![1];
            isr.extend(pick(&in_sync));
            let l = Leadership {
                replicas: replicas.clone(),
                fenced: pick(&fenced),
                ..leadership(&isr)
            };
            let followers: HashMap<i32, FollowerState> = others
                .iter()
                .zip(progress.iter().zip(&known))
                .filter(|(_, (_, k))| **k)
                .map(|(r, ((leo, caught_up, reached), _))| {
                    (*r, FollowerState {
                        log_end_offset: *leo,
                        log_start_offset: 0,
                        last_caught_up_ms: *caught_up,
                        reached_high_watermark: *reached,
                    })
                })
                .collect();
            let out = desired_isr(&l, &followers, now, lag_max);
            proptest::prop_assert_eq!(out.first(), Some(&1));
            let order: Vec<i32> = replicas.iter().copied().filter(|r| out.contains(r)).collect();
            proptest::prop_assert_eq!(&order, &out);
            for r in &others {
                let f = followers.get(r);
                let was_in = l.isr.contains(r);
                let stays = out.contains(r);
                match f {
                    Some(f) if was_in => proptest::prop_assert_eq!(stays, now - f.last_caught_up_ms <= lag_max),
                    Some(f) => proptest::prop_assert_eq!(
                        stays,
                        f.reached_high_watermark && f.log_end_offset >= 0 && !l.fenced.contains(r)
                    ),
                    None => proptest::prop_assert_eq!(stays, was_in),
                }
            }
        }
    }
}
