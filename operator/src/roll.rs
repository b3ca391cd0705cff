//! The rolling-restart gate: which broker pod may be restarted next, if any,
//! so that a roll never takes a partition below its `min.insync.replicas`
//! nor the metadata quorum below a majority. Pure: the cluster controller
//! observes pods and the admin API, asks here, and evicts what this allows.
//!
//! Kafka's own rule (and Strimzi's KafkaRoller's): a broker may restart when
//! every partition it hosts keeps at least `min.insync.replicas` in-sync
//! replicas without it. On top of that the gate waits for the cluster to be
//! whole again between brokers (every pod ready, every broker registered,
//! unfenced and caught up on the metadata log, no partition
//! under-replicated), so a restarted broker is back in
//! every ISR before the next goes; it restarts a broker whose pod is not
//! ready first (it serves nothing), and the active controller last.

use std::collections::BTreeSet;

/// A broker as the roll sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollBroker {
    pub id: i32,
    /// Its pod runs the current template (image, config, resources...).
    pub current: bool,
    /// Its pod is Ready.
    pub ready: bool,
    /// Registered with the controller and unfenced.
    pub registered: bool,
    /// Its copy of the metadata log is close to the active controller's
    /// (see [`metadata_caught_up`]).
    pub caught_up: bool,
    pub voter: bool,
}

/// Metadata records a broker's copy of the quorum log may be behind the
/// active controller's and still count as caught up: a few moments of
/// metadata changes in flight, where a restarted broker replaying the log is
/// behind by its whole tail.
pub const MAX_METADATA_LAG: i64 = 100;

/// Whether a broker's metadata lag (the admin API's `metadata_lag`) is caught
/// up. An unknown lag (-1: the active controller could not say) counts as
/// caught up: the broker unfenced, so it had applied the log as far as the
/// controller when it registered.
pub fn metadata_caught_up(lag: i64) -> bool {
    lag <= MAX_METADATA_LAG
}

/// A partition as the admin API reports it, with its topic's min ISR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollPartition {
    pub topic: String,
    pub partition: i32,
    /// -1 when offline.
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub min_isr: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollStep {
    /// Every broker runs the current template.
    Done,
    /// Restart this broker's pod now.
    Restart(i32),
    /// A restart is due but would not be safe yet; says why.
    Wait(Blocked),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The last restarted broker (or another) has not come back yet; the
    /// partitions with a replica on them.
    BrokersNotBack { brokers: Vec<i32>, partitions: Vec<String> },
    /// Partitions not yet fully in sync (a broker catching up).
    UnderReplicated { partitions: Vec<String> },
    /// Leadership has not come back to the restarted brokers: clients that
    /// connect only to leaders (librdkafka's sparse connections) would lose
    /// every connection when the broker holding them all restarts. The
    /// controller asks for a preferred leader election.
    LeadersNotPreferred { partitions: Vec<String> },
    /// Restarting the next broker would take these below their min ISR.
    MinIsr { broker: i32, partitions: Vec<String> },
    /// Restarting the next broker would leave the quorum without a majority.
    Quorum {
        broker: i32,
        live_voters: usize,
        voters: usize,
    },
    /// The admin API did not answer: no broker's partitions can be checked.
    AdminUnreachable { error: String },
}

impl Blocked {
    pub fn reason(&self) -> &'static str {
        match self {
            Blocked::BrokersNotBack { .. } => "WaitingForBrokers",
            Blocked::UnderReplicated { .. } => "WaitingForIsr",
            Blocked::LeadersNotPreferred { .. } => "WaitingForPreferredLeaders",
            Blocked::MinIsr { .. } => "BlockedByMinIsr",
            Blocked::Quorum { .. } => "BlockedByQuorum",
            Blocked::AdminUnreachable { .. } => "AdminUnreachable",
        }
    }

    pub fn message(&self) -> String {
        fn list(items: &[String]) -> String {
            let shown: Vec<&str> = items.iter().take(10).map(String::as_str).collect();
            let more = items.len().saturating_sub(shown.len());
            if more > 0 {
                format!("{} and {more} more", shown.join(", "))
            } else {
                shown.join(", ")
            }
        }
        match self {
            Blocked::BrokersNotBack { brokers, partitions } if partitions.is_empty() => {
                format!("rolling restart waits for brokers {brokers:?} to be ready, registered, unfenced and caught up on metadata")
            }
            Blocked::BrokersNotBack { brokers, partitions } => format!(
                "rolling restart waits for brokers {brokers:?} to be ready, registered, unfenced and caught up on metadata; \
                 their partitions {} are short of replicas until then",
                list(partitions)
            ),
            Blocked::UnderReplicated { partitions } => format!(
                "rolling restart waits for every replica to be back in sync: {} under-replicated",
                list(partitions)
            ),
            Blocked::LeadersNotPreferred { partitions } => format!(
                "rolling restart moves leadership back to preferred replicas before the next broker: {}",
                list(partitions)
            ),
            Blocked::MinIsr { broker, partitions } => format!(
                "restarting broker {broker} would take {} below min.insync.replicas; waiting for their ISRs to grow",
                list(partitions)
            ),
            Blocked::Quorum {
                broker,
                live_voters,
                voters,
            } => format!(
                "restarting broker {broker} would leave {} of {voters} metadata quorum voters live, no majority",
                live_voters.saturating_sub(1)
            ),
            Blocked::AdminUnreachable { error } => {
                format!("rolling restart waits: the admin API is unreachable ({error}), so no restart can be checked")
            }
        }
    }
}

/// The next step of a roll over `brokers` (every expected broker, one per pod).
pub fn next_restart(brokers: &[RollBroker], partitions: &[RollPartition], active_controller: i32) -> RollStep {
    let stale: Vec<&RollBroker> = brokers.iter().filter(|b| !b.current).collect();
    if stale.is_empty() {
        // The roll ends once the last broker is back too, in every ISR, with
        // leadership on the preferred replicas again.
        return settling(brokers, partitions).map_or(RollStep::Done, RollStep::Wait);
    }
    let up = |b: &RollBroker| b.ready && b.registered && b.caught_up;
    let live: BTreeSet<i32> = brokers.iter().filter(|b| up(b)).map(|b| b.id).collect();
    let voters: Vec<&RollBroker> = brokers.iter().filter(|b| b.voter).collect();
    let live_voters = voters.iter().filter(|b| up(b)).count();
    let majority = voters.len() / 2 + 1;

    // A stale broker that is not up goes first: restarting it may be what
    // brings it back. Free when it is fenced (it leads nothing and is in no
    // ISR); a registered broker whose pod is merely not Ready still serves
    // its replicas and its quorum vote, so it goes only when the partitions
    // and the quorum keep enough without it.
    let serving: BTreeSet<i32> = brokers.iter().filter(|b| b.registered).map(|b| b.id).collect();
    let safe_without = |b: &RollBroker| {
        if !b.registered {
            return true;
        }
        let partitions_keep = partitions.iter().all(|p| {
            p.replicas.len() <= p.min_isr
                || !p.isr.contains(&b.id)
                || p.isr.iter().filter(|r| **r != b.id && serving.contains(r)).count() >= p.min_isr
        });
        let voters_left = voters
            .iter()
            .filter(|v| v.id != b.id && v.caught_up && serving.contains(&v.id))
            .count();
        partitions_keep && (!b.voter || voters_left >= majority)
    };
    if let Some(down) = stale.iter().filter(|b| !up(b) && safe_without(b)).min_by_key(|b| b.id) {
        return RollStep::Restart(down.id);
    }
    // The active controller last, then by id.
    let next = stale
        .iter()
        .min_by_key(|b| (b.id == active_controller, b.id))
        .expect("stale is not empty");
    // In sync and live: a replica on a broker that is gone (not among
    // `brokers`) may still be listed in the ISR until the controller fences it.
    let in_sync_without = |p: &RollPartition| p.isr.iter().filter(|r| **r != next.id && live.contains(r)).count();
    // A partition with no more replicas than its min ISR is unavailable to
    // acks=all through any restart; holding every roll for it would not help
    // it (Strimzi's KafkaRoller lets it pass too).
    let below: Vec<String> = partitions
        .iter()
        .filter(|p| p.replicas.len() > p.min_isr && p.replicas.contains(&next.id) && in_sync_without(p) < p.min_isr)
        .map(name)
        .collect();
    // The cluster whole again before the next broker goes. While a broker is
    // down, the partitions it leaves at their min ISR are what hold the roll:
    // they are named first.
    let not_back: Vec<i32> = brokers.iter().filter(|b| !up(b)).map(|b| b.id).collect();
    if !not_back.is_empty() && !below.is_empty() {
        return RollStep::Wait(Blocked::MinIsr {
            broker: next.id,
            partitions: below,
        });
    }
    if let Some(blocked) = settling(brokers, partitions) {
        return RollStep::Wait(blocked);
    }
    if next.voter && live_voters.saturating_sub(1) < majority {
        return RollStep::Wait(Blocked::Quorum {
            broker: next.id,
            live_voters,
            voters: voters.len(),
        });
    }
    if !below.is_empty() {
        return RollStep::Wait(Blocked::MinIsr {
            broker: next.id,
            partitions: below,
        });
    }
    RollStep::Restart(next.id)
}

/// What the cluster lacks to be whole again after a restart: every broker
/// back (ready, registered, unfenced, caught up on metadata), every live
/// replica in its ISR, leaders on their preferred replicas (live and in
/// sync), so load and client connections spread again. None: whole.
pub fn settling(brokers: &[RollBroker], partitions: &[RollPartition]) -> Option<Blocked> {
    let up = |b: &RollBroker| b.ready && b.registered && b.caught_up;
    let live: BTreeSet<i32> = brokers.iter().filter(|b| up(b)).map(|b| b.id).collect();
    let not_back: Vec<i32> = brokers.iter().filter(|b| !up(b)).map(|b| b.id).collect();
    if !not_back.is_empty() {
        let partitions = partitions
            .iter()
            .filter(|p| p.replicas.iter().any(|r| not_back.contains(r)))
            .map(name)
            .collect();
        return Some(Blocked::BrokersNotBack {
            brokers: not_back,
            partitions,
        });
    }
    let lagging: Vec<String> = partitions
        .iter()
        .filter(|p| p.replicas.iter().any(|r| live.contains(r) && !p.isr.contains(r)))
        .map(name)
        .collect();
    if !lagging.is_empty() {
        return Some(Blocked::UnderReplicated { partitions: lagging });
    }
    let unpreferred: Vec<String> = partitions
        .iter()
        .filter(|p| {
            p.replicas
                .first()
                .is_some_and(|r| *r != p.leader && live.contains(r) && p.isr.contains(r))
        })
        .map(name)
        .collect();
    (!unpreferred.is_empty()).then_some(Blocked::LeadersNotPreferred {
        partitions: unpreferred,
    })
}

fn name(p: &RollPartition) -> String {
    format!("{}-{}", p.topic, p.partition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn broker(id: i32, current: bool) -> RollBroker {
        RollBroker {
            id,
            current,
            ready: true,
            registered: true,
            caught_up: true,
            voter: id < 3,
        }
    }

    fn partition(p: i32, replicas: &[i32], isr: &[i32], min_isr: usize) -> RollPartition {
        RollPartition {
            topic: "t".into(),
            partition: p,
            leader: replicas[0],
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            min_isr,
        }
    }

    #[test]
    fn one_broker_at_a_time_the_controller_last() {
        let brokers: Vec<RollBroker> = (0..3).map(|id| broker(id, false)).collect();
        let parts = [partition(0, &[0, 1, 2], &[0, 1, 2], 2)];
        assert_eq!(next_restart(&brokers, &parts, 0), RollStep::Restart(1));
        assert_eq!(next_restart(&brokers, &parts, 1), RollStep::Restart(0));
        let mut done = brokers.clone();
        done.iter_mut().for_each(|b| b.current = true);
        assert_eq!(next_restart(&done, &parts, 0), RollStep::Done);
        // The last broker restarted but not back, then back but not leading
        // what it prefers: the roll is not over yet.
        done[2].ready = false;
        assert!(matches!(
            next_restart(&done, &parts, 0),
            RollStep::Wait(Blocked::BrokersNotBack { .. })
        ));
        done[2].ready = true;
        let moved = [RollPartition {
            leader: 1,
            ..partition(0, &[2, 0, 1], &[0, 1, 2], 2)
        }];
        assert!(matches!(
            next_restart(&done, &moved, 0),
            RollStep::Wait(Blocked::LeadersNotPreferred { .. })
        ));
    }

    #[test]
    fn a_partition_at_min_isr_blocks_its_brokers() {
        let brokers: Vec<RollBroker> = (0..3).map(|id| broker(id, id == 2)).collect();
        // Replica 5 is on a broker that is gone but still listed in the ISR.
        let parts = [
            partition(0, &[0, 1, 5], &[0, 1, 5], 2),
            partition(1, &[0, 2], &[0, 2], 2),
        ];
        assert_eq!(
            next_restart(&brokers, &parts, 2),
            RollStep::Wait(Blocked::MinIsr {
                broker: 0,
                partitions: vec!["t-0".into()]
            })
        );
        // RF 2 with min ISR 2 cannot stay available through any restart: it does not block.
        let parts = [partition(1, &[0, 2], &[0, 2], 2)];
        assert_eq!(next_restart(&brokers, &parts, 2), RollStep::Restart(0));
    }

    #[test]
    fn a_broker_not_back_holds_the_roll_and_names_its_partitions() {
        let mut brokers: Vec<RollBroker> = (0..3).map(|id| broker(id, id != 0)).collect();
        brokers[2].ready = false;
        let parts = [partition(0, &[0, 1, 2], &[0, 1], 2), partition(1, &[0, 1], &[0, 1], 1)];
        // t-0 is at its min ISR while broker 2 is down: it is what holds the roll.
        assert_eq!(
            next_restart(&brokers, &parts, 1),
            RollStep::Wait(Blocked::MinIsr {
                broker: 0,
                partitions: vec!["t-0".into()]
            })
        );
        // Nothing at its min ISR: the roll waits for the broker all the same.
        let parts = [partition(0, &[0, 1, 2], &[0, 1], 1), partition(1, &[0, 1], &[0, 1], 1)];
        assert_eq!(
            next_restart(&brokers, &parts, 1),
            RollStep::Wait(Blocked::BrokersNotBack {
                brokers: vec![2],
                partitions: vec!["t-0".into()]
            })
        );
    }

    #[test]
    fn an_under_replicated_partition_waits() {
        let brokers: Vec<RollBroker> = (0..3).map(|id| broker(id, id != 0)).collect();
        // Broker 2 is not in the ISR (a follower kept down would also be not ready).
        let parts = [partition(0, &[0, 1, 2], &[0, 1], 2), partition(1, &[0, 1], &[0, 1], 1)];
        let step = next_restart(&brokers, &parts, 1);
        assert_eq!(
            step,
            RollStep::Wait(Blocked::UnderReplicated {
                partitions: vec!["t-0".into()]
            })
        );
    }

    #[test]
    fn a_down_broker_restarts_first() {
        let mut brokers: Vec<RollBroker> = (0..3).map(|id| broker(id, false)).collect();
        brokers[2].ready = false;
        let parts = [partition(0, &[0, 1, 2], &[0, 1], 2)];
        assert_eq!(next_restart(&brokers, &parts, 0), RollStep::Restart(2));
        // Current, but not back: wait for it; t-0 at its min ISR holds the roll.
        brokers[2].current = true;
        assert_eq!(
            next_restart(&brokers, &parts, 0),
            RollStep::Wait(Blocked::MinIsr {
                broker: 1,
                partitions: vec!["t-0".into()]
            })
        );
    }

    /// A broker back (Ready, registered) but still replaying the metadata log
    /// holds the roll; a voter behind does not count toward the quorum.
    #[test]
    fn a_broker_behind_on_metadata_is_not_back() {
        let mut brokers: Vec<RollBroker> = (0..3).map(|id| broker(id, id == 2)).collect();
        brokers[2].caught_up = false;
        let parts = [partition(0, &[0, 1, 2], &[0, 1, 2], 1)];
        match next_restart(&brokers, &parts, 0) {
            RollStep::Wait(Blocked::BrokersNotBack { brokers, .. }) => assert_eq!(brokers, vec![2]),
            other => panic!("broker 2 is behind on metadata: {other:?}"),
        }
        assert!(metadata_caught_up(-1) && metadata_caught_up(MAX_METADATA_LAG));
        assert!(!metadata_caught_up(MAX_METADATA_LAG + 1));
    }

    /// A broker whose pod is not Ready but that is registered still serves:
    /// it is not restarted ahead of the gate while another broker is fenced
    /// and its partitions are at their min ISR; a fenced one is.
    #[test]
    fn a_registered_broker_that_is_not_ready_still_counts() {
        let mut brokers: Vec<RollBroker> = (0..3).map(|id| broker(id, false)).collect();
        brokers[1].ready = false; // stale, registered, in the ISR
        brokers[2].registered = false; // fenced, out of the ISR
        brokers[2].current = true;
        let parts = [partition(0, &[0, 1, 2], &[0, 1], 2)];
        match next_restart(&brokers, &parts, 0) {
            RollStep::Wait(Blocked::MinIsr { partitions, .. }) => assert_eq!(partitions, vec!["t-0"]),
            other => panic!("broker 1 serves t-0 at its min ISR: {other:?}"),
        }
        brokers[1].registered = false;
        brokers[2].registered = true;
        let parts = [partition(0, &[0, 1, 2], &[0, 2], 2)];
        assert_eq!(
            next_restart(&brokers, &parts, 0),
            RollStep::Restart(1),
            "a fenced broker goes first"
        );
    }

    fn cluster() -> impl Strategy<Value = (Vec<RollBroker>, Vec<RollPartition>, i32)> {
        (3usize..7).prop_flat_map(|n| {
            let brokers = proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()), n);
            let parts = proptest::collection::vec(
                (
                    proptest::sample::subsequence((0..n as i32 + 2).collect::<Vec<_>>(), 1..=n.min(3)),
                    any::<u8>(),
                    1usize..4,
                ),
                0..12,
            );
            (brokers, parts, 0..n as i32).prop_map(move |(bs, ps, controller)| {
                let brokers = bs
                    .into_iter()
                    .enumerate()
                    .map(|(id, (current, ready, registered, caught_up))| RollBroker {
                        id: id as i32,
                        current,
                        ready,
                        registered,
                        caught_up,
                        voter: id < 3,
                    })
                    .collect();
                let partitions = ps
                    .into_iter()
                    .enumerate()
                    .map(|(i, (replicas, mask, min_isr))| RollPartition {
                        topic: "t".into(),
                        partition: i as i32,
                        leader: replicas[(mask as usize) % replicas.len()],
                        isr: replicas
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| mask & (1 << j) != 0)
                            .map(|(_, r)| *r)
                            .collect(),
                        min_isr: min_isr.min(replicas.len()),
                        replicas,
                    })
                    .collect();
                (brokers, partitions, controller)
            })
        })
    }

    proptest! {
        /// A restart of a live broker never takes a partition below its min ISR
        /// nor the quorum below a majority; a restart only ever hits a stale broker.
        #[test]
        fn the_gate_never_allows_an_unsafe_restart((brokers, partitions, controller) in cluster()) {
            let step = next_restart(&brokers, &partitions, controller);
            if let RollStep::Restart(id) = step {
                let b = brokers.iter().find(|b| b.id == id).unwrap();
                prop_assert!(!b.current);
                // A broker that serves (registered, unfenced: in ISRs, voting),
                // ready or not, never goes where its partitions or the quorum
                // would be left short by its going.
                if b.registered {
                    let serving: Vec<i32> = brokers.iter().filter(|b| b.registered).map(|b| b.id).collect();
                    for p in &partitions {
                        if p.isr.contains(&id) && p.replicas.len() > p.min_isr {
                            let left = p.isr.iter().filter(|r| **r != id && serving.contains(r)).count();
                            prop_assert!(left >= p.min_isr, "{p:?} short of min ISR without serving broker {id}");
                        }
                    }
                    let voters = brokers.iter().filter(|b| b.voter).count();
                    let left = brokers.iter().filter(|o| o.voter && o.registered && o.caught_up && o.id != id).count();
                    prop_assert!(!b.voter || left > voters / 2, "no caught-up quorum without serving broker {id}");
                }
                let live = b.ready && b.registered && b.caught_up;
                if live {
                    let live: Vec<i32> = brokers.iter().filter(|b| b.ready && b.registered && b.caught_up).map(|b| b.id).collect();
                    for p in &partitions {
                        if p.replicas.contains(&id) && p.replicas.len() > p.min_isr {
                            let left = p.isr.iter().filter(|r| **r != id && live.contains(r)).count();
                            prop_assert!(left >= p.min_isr, "{p:?} below min ISR without {id}");
                        }
                    }
                    let voters = brokers.iter().filter(|b| b.voter).count();
                    let live_voters = brokers.iter().filter(|b| b.voter && b.ready && b.registered && b.caught_up && b.id != id).count();
                    prop_assert!(!b.voter || live_voters > voters / 2, "quorum without {id}");
                    // Never a second broker down at once.
                    prop_assert!(brokers.iter().all(|b| b.ready && b.registered && b.caught_up));
                    if brokers.iter().any(|o| !o.current && o.id != controller) {
                        prop_assert!(id != controller, "the controller before another stale broker");
                    }
                }
            }
            if brokers.iter().all(|b| b.current) {
                prop_assert_eq!(step == RollStep::Done, settling(&brokers, &partitions).is_none());
            }
        }
    }
}
