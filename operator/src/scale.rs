//! Scaling a Cluster's brokers down safely: the brokers that go (the highest
//! ordinals, as a StatefulSet removes them) are drained through reassignment
//! first, and the StatefulSet shrinks only once the admin API shows them
//! holding no replica. A scale-down that would remove a metadata quorum voter
//! or leave fewer brokers than a topic's replication factor is refused, with
//! the reason, and the StatefulSet keeps its size. Pure: the cluster
//! controller observes, asks here, and applies.

/// A broker as the admin API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedReplicas {
    pub id: i32,
    /// Replicas it hosts (partitions being moved off it count until they are gone).
    pub replicas: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScalePlan {
    /// Run this many broker pods.
    Size(i32),
    /// Keep `keep` pods while these brokers are drained.
    Drain { brokers: Vec<i32>, keep: i32 },
    /// The asked size is refused; `keep` pods stay.
    Refused { keep: i32, refusal: ScaleRefusal },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleRefusal {
    #[error(
        "scaling to {asked} brokers would remove metadata quorum voters (brokers 0..{voters} vote); \
         the voters are fixed when the cluster is created, so a cluster keeps at least {voters} brokers"
    )]
    WouldRemoveVoters { asked: i32, voters: i32 },
    #[error("scaling to {asked} brokers would leave fewer brokers than topic {topic}'s {replication_factor} replicas")]
    ReplicationFactor {
        asked: i32,
        topic: String,
        replication_factor: i32,
    },
    #[error("the admin API is unreachable, so the brokers to remove cannot be drained: {0}")]
    AdminUnreachable(String),
}

impl ScaleRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            ScaleRefusal::WouldRemoveVoters { .. } => "WouldRemoveVoters",
            ScaleRefusal::ReplicationFactor { .. } => "ReplicationFactorTooHigh",
            ScaleRefusal::AdminUnreachable(_) => "AdminUnreachable",
        }
    }
}

/// What to do about the broker count. `running`: the StatefulSet's size now;
/// `asked`: the Cluster's `spec.replicas`; `topics`: (name, replication
/// factor); `brokers`: what each broker hosts (Err when the admin API did not
/// answer).
pub fn scale_plan(
    running: i32,
    asked: i32,
    voters: i32,
    topics: &[(String, i32)],
    brokers: Result<&[HostedReplicas], String>,
) -> ScalePlan {
    if asked >= running {
        return ScalePlan::Size(asked);
    }
    let refuse = |refusal| ScalePlan::Refused { keep: running, refusal };
    if asked < voters {
        return refuse(ScaleRefusal::WouldRemoveVoters { asked, voters });
    }
    if let Some((topic, rf)) = topics.iter().filter(|(_, rf)| *rf > asked).max_by_key(|(_, rf)| *rf) {
        return refuse(ScaleRefusal::ReplicationFactor {
            asked,
            topic: topic.clone(),
            replication_factor: *rf,
        });
    }
    let brokers = match brokers {
        Ok(b) => b,
        Err(e) => return refuse(ScaleRefusal::AdminUnreachable(e)),
    };
    let leaving: Vec<i32> = (asked..running)
        .filter(|id| brokers.iter().any(|b| b.id == *id && b.replicas > 0))
        .collect();
    if leaving.is_empty() {
        ScalePlan::Size(asked)
    } else {
        ScalePlan::Drain {
            brokers: leaving,
            keep: running,
        }
    }
}

/// A partition's replicas as the admin API reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReplicas {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<i32>,
    /// A reassignment is already moving it: left alone until it finishes.
    pub moving: bool,
}

/// Reassignments that empty the `leaving` brokers: each of their replicas
/// goes to a staying broker the partition does not already have, first one
/// whose rack (`racks`; none: no rack) none of the partition's other
/// replicas is in, so a partition's racks never narrow when they need not;
/// then the one with the fewest replicas (ties to the lowest id). The rest
/// of the replica list (and so the preferred leader, unless it leaves) is
/// unchanged. Every staying broker in `staying` may take replicas.
pub fn drain_moves(
    leaving: &[i32],
    staying: &[i32],
    racks: &std::collections::BTreeMap<i32, String>,
    partitions: &[PartitionReplicas],
) -> Vec<(String, i32, Vec<i32>)> {
    let rack = |b: &i32| racks.get(b).filter(|r| !r.is_empty());
    let mut load: std::collections::BTreeMap<i32, usize> = staying.iter().map(|b| (*b, 0)).collect();
    for p in partitions {
        for r in &p.replicas {
            if let Some(n) = load.get_mut(r) {
                *n += 1;
            }
        }
    }
    let mut moves = Vec::new();
    for p in partitions.iter().filter(|p| !p.moving) {
        if !p.replicas.iter().any(|r| leaving.contains(r)) {
            continue;
        }
        let mut target = p.replicas.clone();
        for slot in 0..target.len() {
            if !leaving.contains(&target[slot]) {
                continue;
            }
            let other_racks: Vec<&String> = target
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != slot)
                .filter_map(|(_, b)| rack(b))
                .collect();
            let Some(to) = load
                .iter()
                .filter(|(b, _)| !target.contains(b))
                .min_by_key(|(b, n)| (rack(b).is_some_and(|r| other_racks.contains(&r)), **n, **b))
                .map(|(b, _)| *b)
            else {
                break;
            };
            target[slot] = to;
            *load.entry(to).or_default() += 1;
        }
        if target.iter().all(|r| !leaving.contains(r)) {
            moves.push((p.topic.clone(), p.partition, target));
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hosted(counts: &[i32]) -> Vec<HostedReplicas> {
        counts
            .iter()
            .enumerate()
            .map(|(id, n)| HostedReplicas {
                id: id as i32,
                replicas: *n,
            })
            .collect()
    }

    #[test]
    fn the_highest_ordinals_are_drained_before_the_set_shrinks() {
        let topics = [("orders".to_string(), 3)];
        let b = hosted(&[4, 4, 4, 2, 0]);
        assert_eq!(
            scale_plan(5, 3, 3, &topics, Ok(&b)),
            ScalePlan::Drain {
                brokers: vec![3],
                keep: 5
            }
        );
        let drained = hosted(&[5, 5, 5, 0, 0]);
        assert_eq!(scale_plan(5, 3, 3, &topics, Ok(&drained)), ScalePlan::Size(3));
        assert_eq!(scale_plan(3, 5, 3, &topics, Err("down".into())), ScalePlan::Size(5));
    }

    #[test]
    fn voters_and_replication_factors_refuse_a_scale_down() {
        let b = hosted(&[1, 1, 1]);
        let refused = scale_plan(3, 2, 3, &[], Ok(&b));
        assert!(
            matches!(
                refused,
                ScalePlan::Refused {
                    keep: 3,
                    refusal: ScaleRefusal::WouldRemoveVoters { .. }
                }
            ),
            "{refused:?}"
        );
        let topics = [("a".to_string(), 2), ("b".to_string(), 4)];
        let b = hosted(&[1, 1, 1, 1, 1]);
        assert_eq!(
            scale_plan(5, 3, 3, &topics, Ok(&b)),
            ScalePlan::Refused {
                keep: 5,
                refusal: ScaleRefusal::ReplicationFactor {
                    asked: 3,
                    topic: "b".into(),
                    replication_factor: 4
                }
            }
        );
    }

    #[test]
    fn a_drain_spreads_the_leaving_replicas_over_the_least_loaded() {
        let p = |n: i32, replicas: &[i32]| PartitionReplicas {
            topic: "t".into(),
            partition: n,
            replicas: replicas.to_vec(),
            moving: false,
        };
        let parts = [p(0, &[3, 0, 1]), p(1, &[4, 3, 2]), p(2, &[0, 1, 2])];
        let moves = drain_moves(&[3, 4], &[0, 1, 2], &Default::default(), &parts);
        assert_eq!(
            moves,
            vec![("t".into(), 0, vec![2, 0, 1]), ("t".into(), 1, vec![0, 1, 2])]
        );
    }

    /// A leaving replica goes to a rack the partition's other replicas are
    /// not in, even onto a fuller broker.
    #[test]
    fn a_drain_keeps_a_partitions_racks() {
        let racks: std::collections::BTreeMap<i32, String> = [(0, "a"), (1, "b"), (2, "b"), (3, "c"), (4, "a")]
            .map(|(b, r)| (b, r.to_string()))
            .into();
        let p = |n: i32, replicas: &[i32]| PartitionReplicas {
            topic: "t".into(),
            partition: n,
            replicas: replicas.to_vec(),
            moving: false,
        };
        // Broker 3 (rack c) leaves t-0 = [3, 1]; broker 2 is emptiest but
        // shares rack b with 1: broker 0 (rack a) takes it.
        let parts = [p(0, &[3, 1]), p(1, &[0, 4]), p(2, &[0, 1]), p(3, &[4, 1])];
        let moves = drain_moves(&[3], &[0, 1, 2, 4], &racks, &parts);
        assert_eq!(moves.len(), 1);
        let target = &moves[0].2;
        assert_eq!(target[1], 1);
        assert_eq!(racks[&target[0]], "a", "{target:?}");
    }

    fn partitions(brokers: i32) -> impl Strategy<Value = Vec<PartitionReplicas>> {
        proptest::collection::vec(
            (
                proptest::sample::subsequence((0..brokers).collect::<Vec<_>>(), 1..=3),
                any::<bool>(),
            ),
            0..20,
        )
        .prop_map(|ps| {
            ps.into_iter()
                .enumerate()
                .map(|(i, (mut replicas, moving))| {
                    let n = replicas.len();
                    replicas.rotate_left(i % n);
                    PartitionReplicas {
                        topic: "t".into(),
                        partition: i as i32,
                        replicas,
                        moving,
                    }
                })
                .collect()
        })
    }

    proptest! {
        /// A drain plan empties the leaving brokers of every partition it
        /// moves, onto distinct staying brokers, and touches nothing else.
        #[test]
        fn a_drain_plan_empties_the_drained_brokers(
            parts in partitions(6), staying in 3i32..6, rack_of in proptest::collection::vec(0u8..3, 6),
        ) {
            let leaving: Vec<i32> = (staying..6).collect();
            let stay: Vec<i32> = (0..staying).collect();
            let racks: std::collections::BTreeMap<i32, String> =
                rack_of.iter().enumerate().map(|(b, r)| (b as i32, format!("rack-{r}"))).collect();
            let moves = drain_moves(&leaving, &stay, &racks, &parts);
            for p in &parts {
                let moved = moves.iter().find(|(_, n, _)| *n == p.partition);
                let needs = !p.moving && p.replicas.iter().any(|r| leaving.contains(r));
                prop_assert_eq!(moved.is_some(), needs, "{:?}", p);
                if let Some((_, _, target)) = moved {
                    prop_assert_eq!(target.len(), p.replicas.len());
                    prop_assert!(target.iter().all(|r| stay.contains(r)));
                    let mut distinct = target.clone();
                    distinct.sort_unstable();
                    distinct.dedup();
                    prop_assert_eq!(distinct.len(), target.len());
                    // Staying replicas keep their places.
                    for (a, b) in p.replicas.iter().zip(target) {
                        prop_assert!(leaving.contains(a) || a == b);
                    }
                    // Racks never narrow while each rack of a leaving replica
                    // has enough staying brokers outside the partition to
                    // take its place.
                    let enough = leaving.iter().filter(|b| p.replicas.contains(b)).all(|l| {
                        let same = |b: &&i32| racks[b] == racks[l];
                        let spare = stay.iter().filter(|b| !p.replicas.contains(b)).filter(same).count();
                        let gone = leaving.iter().filter(|b| p.replicas.contains(b)).filter(same).count();
                        spare >= gone
                    });
                    let count = |rs: &[i32]| rs.iter().map(|b| &racks[b]).collect::<std::collections::BTreeSet<_>>().len();
                    if enough {
                        prop_assert!(count(target) >= count(&p.replicas), "{:?} -> {:?} over {:?}", p.replicas, target, racks);
                    }
                }
            }
        }
    }

    proptest! {
        /// The StatefulSet never shrinks below a voter, below a topic's RF, or
        /// past a broker that still hosts a replica.
        #[test]
        fn a_shrink_only_removes_empty_brokers(
            running in 1i32..8, asked in 1i32..8, voters in 1i32..4,
            counts in proptest::collection::vec(0i32..3, 8), rfs in proptest::collection::vec(1i32..5, 0..4),
        ) {
            let topics: Vec<(String, i32)> = rfs.iter().enumerate().map(|(i, rf)| (format!("t{i}"), *rf)).collect();
            let b = hosted(&counts[..running as usize]);
            let size = match scale_plan(running, asked, voters, &topics, Ok(&b)) {
                ScalePlan::Size(n) => n,
                ScalePlan::Drain { brokers, keep } => {
                    prop_assert!(brokers.iter().all(|id| *id >= asked && counts[*id as usize] > 0));
                    keep
                }
                ScalePlan::Refused { keep, .. } => keep,
            };
            if size < running {
                prop_assert!(size >= voters);
                prop_assert!(rfs.iter().all(|rf| *rf <= size));
                prop_assert!((size..running).all(|id| counts[id as usize] == 0));
            }
            prop_assert!(size == asked || size == running);
        }
    }
}
