//! Partition leadership as the controller decides it: each partition's
//! leader, leader epoch, partition epoch and ISR, and the pure elections that
//! change them (KRaft's PartitionChangeBuilder, in small).
//!
//! A leader is only ever elected from the ISR, unless unclean election is
//! enabled for the topic. When the last ISR member goes away the partition
//! goes offline (leader -1) and keeps that member in its ISR, so that the
//! broker holding every committed record leads again when it returns.

use serde::{Deserialize, Serialize};

/// No leader: the partition is offline.
pub const NO_LEADER: i32 = -1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub leader: i32,
    /// Bumped with every leader change; stamped into the batches the leader
    /// appends, so replicas and clients can tell one leader's log from another's.
    pub leader_epoch: i32,
    /// Bumped with every change of this state (leader or ISR), so that a stale
    /// ISR change can be told from a current one.
    pub partition_epoch: i32,
    /// The in-sync replicas: the leader and the followers caught up with it.
    pub isr: Vec<i32>,
}

impl PartitionState {
    /// A new partition: led by its first live replica; every live replica is
    /// in sync (all their logs are empty).
    pub fn initial(replicas: &[i32], live: impl Fn(i32) -> bool) -> PartitionState {
        let leader = replicas.iter().copied().find(|r| live(*r)).unwrap_or(NO_LEADER);
        let isr: Vec<i32> = replicas.iter().copied().filter(|r| live(*r)).collect();
        PartitionState {
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
            isr: if isr.is_empty() {
                replicas.first().copied().into_iter().collect()
            } else {
                isr
            },
        }
    }

    /// A partition of an image from before partition states: led by its
    /// first replica, which held all its records, alone in sync.
    pub fn legacy(replicas: &[i32]) -> PartitionState {
        PartitionState {
            leader: replicas.first().copied().unwrap_or(NO_LEADER),
            leader_epoch: 0,
            partition_epoch: 0,
            isr: replicas.first().copied().into_iter().collect(),
        }
    }

    /// The leader, when there is one.
    pub fn leader(&self) -> Option<i32> {
        (self.leader != NO_LEADER).then_some(self.leader)
    }

    /// This state with a new leader and ISR: the leader epoch moves with
    /// the leader, the partition epoch with every change.
    pub(super) fn changed(&self, leader: i32, isr: Vec<i32>) -> PartitionState {
        PartitionState {
            leader,
            leader_epoch: if leader == self.leader {
                self.leader_epoch
            } else {
                self.leader_epoch + 1
            },
            partition_epoch: self.partition_epoch + 1,
            isr,
        }
    }
}

/// Why a partition's state changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    /// Replace a leader that is no longer live (fenced, shut down).
    Failover,
    /// Move leadership back to the preferred replica (the first), when it is
    /// live and in sync.
    Preferred,
}

/// The partition's next state when `live` brokers change or a preferred
/// election is asked for; `None` when nothing changes.
///
/// Brokers that are not live leave the ISR, except the last member, which
/// stays so that it can lead again. A new leader comes from the ISR in replica
/// order; with `unclean` and no live ISR member, any live replica may lead
/// (records the old ISR held beyond its log are then lost, as in Kafka).
pub fn elect(
    replicas: &[i32],
    state: &PartitionState,
    live: impl Fn(i32) -> bool,
    unclean: bool,
    election: Election,
) -> Option<PartitionState> {
    let mut isr: Vec<i32> = state.isr.iter().copied().filter(|r| live(*r)).collect();
    let leader_live = state.leader != NO_LEADER && live(state.leader);
    let leader = match election {
        Election::Preferred => match replicas.first() {
            Some(&preferred) if live(preferred) && isr.contains(&preferred) => preferred,
            _ if leader_live => state.leader,
            _ => pick(replicas, &isr, &live, unclean),
        },
        Election::Failover if leader_live => state.leader,
        Election::Failover => pick(replicas, &isr, &live, unclean),
    };
    if leader != NO_LEADER && !isr.contains(&leader) {
        // Unclean: the new leader's log is the truth from now on.
        isr = vec![leader];
    }
    if isr.is_empty() {
        // Keep the last in-sync replica: it alone holds every committed record.
        isr = state.isr.clone();
    }
    let next = state.changed(leader, isr);
    (next.leader != state.leader || next.isr != state.isr).then_some(next)
}

fn pick(replicas: &[i32], isr: &[i32], live: &impl Fn(i32) -> bool, unclean: bool) -> i32 {
    replicas
        .iter()
        .copied()
        .find(|r| isr.contains(r) && live(*r))
        .or_else(|| unclean.then(|| replicas.iter().copied().find(|r| live(*r))).flatten())
        .unwrap_or(NO_LEADER)
}

/// Kafka's leader imbalance of one broker: the share of the partitions it is
/// the preferred leader of that it does not lead, in percent.
pub fn imbalance_percent(preferred_of: usize, leading_preferred: usize) -> usize {
    ((preferred_of - leading_preferred.min(preferred_of)) * 100)
        .checked_div(preferred_of)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(leader: i32, isr: &[i32]) -> PartitionState {
        PartitionState {
            leader,
            leader_epoch: 5,
            partition_epoch: 7,
            isr: isr.to_vec(),
        }
    }

    #[test]
    fn a_fenced_leader_is_replaced_from_the_isr_with_a_new_epoch() {
        let s = state(1, &[1, 2, 3]);
        let next = elect(&[1, 2, 3], &s, |b| b != 1, false, Election::Failover).unwrap();
        assert_eq!((next.leader, next.leader_epoch, next.partition_epoch), (2, 6, 8));
        assert_eq!(next.isr, vec![2, 3]);
        // A live leader stays; nothing changes.
        assert_eq!(elect(&[1, 2, 3], &s, |_| true, false, Election::Failover), None);
    }

    #[test]
    fn the_last_isr_member_stays_and_leads_again_when_it_returns() {
        let s = state(1, &[1]);
        let offline = elect(&[1, 2, 3], &s, |b| b != 1, false, Election::Failover).unwrap();
        assert_eq!((offline.leader, offline.isr.clone()), (NO_LEADER, vec![1]));
        assert_eq!(offline.leader_epoch, 6);
        // Replica 2 is live but out of sync: no clean election.
        let back = elect(&[1, 2, 3], &offline, |_| true, false, Election::Failover).unwrap();
        assert_eq!((back.leader, back.leader_epoch, back.isr), (1, 7, vec![1]));
    }

    #[test]
    fn unclean_election_takes_any_live_replica() {
        let s = state(1, &[1]);
        let next = elect(&[1, 2, 3], &s, |b| b != 1, true, Election::Failover).unwrap();
        assert_eq!((next.leader, next.isr), (2, vec![2]));
    }

    #[test]
    fn a_follower_leaving_shrinks_the_isr_without_a_new_leader_epoch() {
        let s = state(1, &[1, 2, 3]);
        let next = elect(&[1, 2, 3], &s, |b| b != 3, false, Election::Failover).unwrap();
        assert_eq!((next.leader, next.leader_epoch, next.partition_epoch), (1, 5, 8));
        assert_eq!(next.isr, vec![1, 2]);
    }

    #[test]
    fn preferred_election_moves_back_only_to_a_live_in_sync_preferred_replica() {
        let s = state(2, &[1, 2]);
        let next = elect(&[1, 2], &s, |_| true, false, Election::Preferred).unwrap();
        assert_eq!((next.leader, next.leader_epoch), (1, 6));
        let out_of_sync = state(2, &[2]);
        assert_eq!(elect(&[1, 2], &out_of_sync, |_| true, false, Election::Preferred), None);
        // The preferred replica is down: the leader stays, the ISR loses it.
        let down = elect(&[1, 2], &s, |b| b != 1, false, Election::Preferred).unwrap();
        assert_eq!((down.leader, down.leader_epoch, down.isr), (2, 5, vec![2]));
    }

    #[test]
    fn imbalance_is_the_share_of_preferred_partitions_led_elsewhere() {
        assert_eq!(imbalance_percent(0, 0), 0);
        assert_eq!(imbalance_percent(10, 9), 10);
        assert_eq!(imbalance_percent(4, 0), 100);
    }

    proptest! {
        /// Whatever brokers die or return, a clean election never picks a
        /// leader outside the ISR, never empties the ISR, only bumps epochs
        /// forward, and the leader is always in the ISR.
        #[test]
        fn clean_elections_stay_within_the_isr(
            rounds in prop::collection::vec((prop::collection::vec(any::<bool>(), 4), any::<bool>()), 1..30),
        ) {
            let replicas = [0, 1, 2, 3];
            let mut s = PartitionState::initial(&replicas, |_| true);
            for (alive, preferred) in rounds {
                let live = |b: i32| alive[b as usize];
                let election = if preferred { Election::Preferred } else { Election::Failover };
                if let Some(next) = elect(&replicas, &s, live, false, election) {
                    prop_assert!(next.partition_epoch > s.partition_epoch);
                    prop_assert!(next.leader_epoch >= s.leader_epoch);
                    if next.leader != s.leader {
                        prop_assert!(next.leader_epoch > s.leader_epoch);
                    }
                    if next.leader != NO_LEADER {
                        prop_assert!(s.isr.contains(&next.leader), "leader {} not from ISR {:?}", next.leader, s.isr);
                        prop_assert!(next.isr.contains(&next.leader));
                    }
                    prop_assert!(!next.isr.is_empty());
                    // An election never adds to the ISR: only followers catching up do.
                    prop_assert!(next.isr.iter().all(|b| s.isr.contains(b)));
                    s = next;
                }
            }
        }
    }
}
