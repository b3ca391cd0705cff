//! Where a topic's replicas go when its replication factor changes: the
//! reassignment targets, rack-aware (racks are the brokers' `broker.rack`,
//! from the nodes' topology labels) and spreading load. Pure.

use std::collections::BTreeMap;

use crate::scale::PartitionReplicas;

/// A broker that may hold replicas, with its rack ("" when it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: i32,
    pub rack: String,
    /// Replicas it holds now, over every topic.
    pub load: usize,
}

/// Targets that bring every partition not already moving to `rf` replicas.
/// Growing keeps the current replicas in their order (so the preferred
/// leader) and adds, one at a time, the broker on a rack the partition does
/// not use yet if any, then the least loaded, then the lowest id. Shrinking
/// keeps the first replica (the preferred leader) and drops, from the end,
/// replicas whose rack is used twice before any other. Partitions that
/// already have `rf` replicas are left alone.
pub fn replication_targets(
    partitions: &[PartitionReplicas],
    rf: usize,
    brokers: &[Candidate],
) -> Vec<(String, i32, Vec<i32>)> {
    let rack: BTreeMap<i32, &str> = brokers.iter().map(|b| (b.id, b.rack.as_str())).collect();
    let mut load: BTreeMap<i32, usize> = brokers.iter().map(|b| (b.id, b.load)).collect();
    let mut out = Vec::new();
    for p in partitions.iter().filter(|p| !p.moving && p.replicas.len() != rf) {
        let mut target = p.replicas.clone();
        while target.len() < rf {
            let used: Vec<&str> = target.iter().filter_map(|r| rack.get(r).copied()).collect();
            let Some(next) = load
                .iter()
                .filter(|(b, _)| !target.contains(b))
                .min_by_key(|(b, n)| (used.contains(&rack.get(b).copied().unwrap_or("")), **n, **b))
                .map(|(b, _)| *b)
            else {
                break;
            };
            target.push(next);
            *load.entry(next).or_default() += 1;
        }
        while target.len() > rf.max(1) {
            let rack_of = |r: &i32| rack.get(r).copied().unwrap_or("");
            let doubled = (1..target.len())
                .rev()
                .find(|i| target.iter().filter(|r| rack_of(r) == rack_of(&target[*i])).count() > 1);
            let drop = doubled.unwrap_or(target.len() - 1);
            let gone = target.remove(drop);
            if let Some(n) = load.get_mut(&gone) {
                *n = n.saturating_sub(1);
            }
        }
        if target.len() == rf {
            out.push((p.topic.clone(), p.partition, target));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn part(n: i32, replicas: &[i32]) -> PartitionReplicas {
        PartitionReplicas {
            topic: "t".into(),
            partition: n,
            replicas: replicas.to_vec(),
            moving: false,
        }
    }

    fn candidates(racks: &[&str]) -> Vec<Candidate> {
        racks
            .iter()
            .enumerate()
            .map(|(id, rack)| Candidate {
                id: id as i32,
                rack: rack.to_string(),
                load: 0,
            })
            .collect()
    }

    #[test]
    fn growing_adds_new_racks_first_and_keeps_the_leader() {
        let brokers = candidates(&["a", "a", "b", "c"]);
        let t = replication_targets(&[part(0, &[1])], 3, &brokers);
        assert_eq!(t, vec![("t".into(), 0, vec![1, 2, 3])]);
    }

    #[test]
    fn shrinking_drops_a_doubled_rack_and_never_the_leader() {
        let brokers = candidates(&["a", "a", "b"]);
        let t = replication_targets(&[part(0, &[0, 1, 2]), part(1, &[2, 0, 1])], 2, &brokers);
        assert_eq!(t, vec![("t".into(), 0, vec![0, 2]), ("t".into(), 1, vec![2, 0])]);
    }

    proptest! {
        /// Every partition not moving ends at the asked RF on distinct live
        /// brokers, keeps its preferred leader, and spans as many racks as it can.
        #[test]
        fn targets_have_the_asked_rf_the_leader_and_the_racks(
            racks in proptest::collection::vec(0u8..3, 3..7),
            parts in proptest::collection::vec((proptest::sample::subsequence((0..3).collect::<Vec<i32>>(), 1..=3), any::<bool>()), 1..10),
            rf in 1usize..4,
        ) {
            let brokers: Vec<Candidate> = racks.iter().enumerate().map(|(id, r)| Candidate { id: id as i32, rack: format!("r{r}"), load: 0 }).collect();
            let partitions: Vec<PartitionReplicas> = parts.iter().enumerate().map(|(i, (replicas, moving))| PartitionReplicas {
                topic: "t".into(), partition: i as i32, replicas: replicas.clone(), moving: *moving }).collect();
            let targets = replication_targets(&partitions, rf, &brokers);
            let distinct_racks = { let mut r = racks.clone(); r.sort_unstable(); r.dedup(); r.len() };
            for p in &partitions {
                let t = targets.iter().find(|(_, n, _)| *n == p.partition);
                prop_assert_eq!(t.is_some(), !p.moving && p.replicas.len() != rf, "{:?}", p);
                if let Some((_, _, target)) = t {
                    prop_assert_eq!(target.len(), rf);
                    prop_assert_eq!(target[0], p.replicas[0], "the preferred leader stays");
                    let mut d = target.clone(); d.sort_unstable(); d.dedup();
                    prop_assert_eq!(d.len(), rf);
                    if rf > p.replicas.len() {
                        prop_assert!(p.replicas.iter().all(|r| target.contains(r)), "growing keeps every replica");
                        let mut used: Vec<u8> = target.iter().map(|r| racks[*r as usize]).collect();
                        used.sort_unstable(); used.dedup();
                        let had: Vec<u8> = { let mut h: Vec<u8> = p.replicas.iter().map(|r| racks[*r as usize]).collect(); h.sort_unstable(); h.dedup(); h };
                        // Each added replica takes a rack the partition lacked while one is left.
                        let wanted = (had.len() + rf - p.replicas.len()).min(distinct_racks);
                        prop_assert!(used.len() >= wanted, "racks {:?} for {:?}", used, target);
                    } else {
                        prop_assert!(target.iter().all(|r| p.replicas.contains(r)), "shrinking only drops");
                    }
                }
            }
        }
    }
}
