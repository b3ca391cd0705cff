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

/// A minimal-movement rebalance over `brokers` (say after a scale-up left
/// new brokers empty): while the fullest broker holds two replicas more than
/// the emptiest, one replica of a partition on the fullest moves to the
/// emptiest (a partition already on it is skipped), preferring a partition
/// whose other replicas do not use the emptiest broker's rack. Every move
/// takes from a broker above its share (total / brokers) or gives to one
/// below it, so the plan moves no more replicas than balance needs. A move
/// never narrows the racks a partition spans. The moved replica keeps its
/// place in the list; then, among the moved partitions only, the preferred
/// leader goes to the replica leading the fewest partitions where that evens
/// leadership out. Partitions already moving are left alone.
pub fn rebalance_moves(partitions: &[PartitionReplicas], brokers: &[Candidate]) -> Vec<(String, i32, Vec<i32>)> {
    if brokers.is_empty() {
        return Vec::new();
    }
    let rack: BTreeMap<i32, &str> = brokers.iter().map(|b| (b.id, b.rack.as_str())).collect();
    let mut targets: Vec<Vec<i32>> = partitions.iter().map(|p| p.replicas.clone()).collect();
    let mut load: BTreeMap<i32, usize> = brokers.iter().map(|b| (b.id, 0)).collect();
    for t in &targets {
        for r in t {
            if let Some(n) = load.get_mut(r) {
                *n += 1;
            }
        }
    }
    let mut moved = vec![false; partitions.len()];
    while let Some((&from, &high)) = load.iter().max_by_key(|(b, n)| (**n, std::cmp::Reverse(**b))) {
        let Some((&to, &low)) = load.iter().min_by_key(|(b, n)| (**n, **b)) else {
            break;
        };
        // Each move from the fullest to the emptiest lowers the spread.
        if high - low <= 1 {
            break;
        }
        // A partition on `from` without `to`, not moving, whose racks the move
        // does not narrow; one whose other replicas do not use `to`'s rack first.
        let others_racks = |i: usize| -> Vec<&str> {
            targets[i]
                .iter()
                .filter(|r| **r != from)
                .filter_map(|r| rack.get(r).copied())
                .collect()
        };
        let rack_of = |b: i32| rack.get(&b).copied().unwrap_or("");
        let candidate = (0..partitions.len())
            .filter(|i| !partitions[*i].moving && targets[*i].contains(&from) && !targets[*i].contains(&to))
            .filter(|i| {
                let others = others_racks(*i);
                // Moving to a rack it already has from one it has no other copy on narrows it.
                !others.contains(&rack_of(to)) || others.contains(&rack_of(from))
            })
            .min_by_key(|i| (others_racks(*i).contains(&rack_of(to)), moved[*i], *i));
        let Some(i) = candidate else { break };
        let slot = targets[i].iter().position(|r| *r == from).expect("contains from");
        targets[i][slot] = to;
        moved[i] = true;
        *load.get_mut(&from).expect("a broker") -= 1;
        *load.get_mut(&to).expect("a broker") += 1;
    }
    spread_preferred_leaders(&mut targets, &moved);
    partitions
        .iter()
        .zip(targets)
        .filter(|(p, t)| p.replicas != *t)
        .map(|(p, t)| (p.topic.clone(), p.partition, t))
        .collect()
}

/// Among the partitions a plan moves anyway (reordering their replicas costs
/// no copy), puts first (the preferred leader) the replica whose broker is
/// the preferred leader of the fewest partitions, where that evens leadership
/// out: a new broker then leads its share, not whatever the moved slots held.
fn spread_preferred_leaders(targets: &mut [Vec<i32>], moved: &[bool]) {
    let mut leads: BTreeMap<i32, usize> = BTreeMap::new();
    for t in targets.iter() {
        if let Some(first) = t.first() {
            *leads.entry(*first).or_default() += 1;
        }
    }
    // Each swap lowers the sum of squared leader counts, so this ends; it
    // ends when no moved partition's leader leads two more than one of its
    // other replicas.
    let mut swapped = true;
    while swapped {
        swapped = false;
        for (t, _) in targets.iter_mut().zip(moved).filter(|(_, m)| **m) {
            let Some(&leader) = t.first() else { continue };
            let count = |b: &i32| leads.get(b).copied().unwrap_or(0);
            let Some((slot, &fewest)) = t.iter().enumerate().min_by_key(|(_, b)| (count(b), **b)) else {
                continue;
            };
            if count(&fewest) + 1 < count(&leader) {
                t.swap(0, slot);
                *leads.entry(leader).or_default() -= 1;
                *leads.entry(fewest).or_default() += 1;
                swapped = true;
            }
        }
    }
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

    #[test]
    fn a_scale_up_fills_the_new_brokers_with_their_share() {
        let brokers = candidates(&["", "", "", "", ""]);
        let parts: Vec<PartitionReplicas> = (0..10).map(|i| part(i, &[i % 3, (i + 1) % 3, (i + 2) % 3])).collect();
        let moves = rebalance_moves(&parts, &brokers);
        let mut load = [0usize; 5];
        for p in &parts {
            let t = moves.iter().find(|m| m.1 == p.partition).map_or(&p.replicas, |m| &m.2);
            t.iter().for_each(|r| load[*r as usize] += 1);
        }
        assert_eq!(load, [6, 6, 6, 6, 6], "{moves:?}");
        let changed: usize = moves
            .iter()
            .map(|(_, p, t)| t.iter().filter(|r| !parts[*p as usize].replicas.contains(r)).count())
            .sum();
        assert_eq!(changed, 12, "twelve replicas to the new brokers, nothing else");
    }

    proptest! {
        /// A rebalance moves exactly the replicas above the brokers' share
        /// (no more), leaves the spread at most one where partitions allow it,
        /// keeps replicas distinct, and never moves a partition already moving.
        #[test]
        fn a_rebalance_moves_only_what_balance_needs(
            n in 2usize..7,
            parts in proptest::collection::vec((proptest::sample::subsequence((0..3).collect::<Vec<i32>>(), 1..=3), any::<bool>()), 1..16),
        ) {
            let brokers: Vec<Candidate> = (0..n).map(|id| Candidate { id: id as i32, rack: String::new(), load: 0 }).collect();
            let partitions: Vec<PartitionReplicas> = parts.iter().enumerate().map(|(i, (replicas, moving))| PartitionReplicas {
                topic: "t".into(), partition: i as i32, replicas: replicas.iter().map(|r| r % n as i32).collect(), moving: *moving }).collect();
            let partitions: Vec<PartitionReplicas> = partitions.into_iter().filter(|p| { let mut d = p.replicas.clone(); d.sort_unstable(); d.dedup(); d.len() == p.replicas.len() }).collect();
            let moves = rebalance_moves(&partitions, &brokers);
            let total: usize = partitions.iter().map(|p| p.replicas.len()).sum();
            let ceil = total.div_ceil(n);
            let mut before = vec![0usize; n];
            let mut after = vec![0usize; n];
            let mut changed = 0;
            for p in &partitions {
                p.replicas.iter().for_each(|r| before[*r as usize] += 1);
                let t = moves.iter().find(|m| m.1 == p.partition).map_or(&p.replicas, |m| &m.2);
                if t != &p.replicas { prop_assert!(!p.moving); }
                changed += t.iter().filter(|r| !p.replicas.contains(r)).count();
                let mut d = t.clone(); d.sort_unstable(); d.dedup();
                prop_assert_eq!(d.len(), t.len());
                t.iter().for_each(|r| after[*r as usize] += 1);
            }
            let floor = total / n;
            let excess: usize = before.iter().map(|l| l.saturating_sub(ceil)).sum();
            let deficit: usize = before.iter().map(|l| floor.saturating_sub(*l)).sum();
            prop_assert!(changed <= excess.max(deficit), "{} replicas moved; {} above, {} below the share", changed, excess, deficit);
            prop_assert!(after.iter().max() <= before.iter().max());
        }

        /// With racks: no moved partition spans fewer racks than before, and
        /// no moved partition's preferred leader leads two more partitions
        /// than another of its replicas (leadership evened where it is free).
        #[test]
        fn a_rebalance_keeps_rack_spread_and_spreads_leaders(
            racks in proptest::collection::vec(0u8..3, 2..7),
            parts in proptest::collection::vec(proptest::sample::subsequence((0..3).collect::<Vec<i32>>(), 1..=3), 1..20),
            shuffle in any::<u64>(),
        ) {
            let n = racks.len();
            let brokers: Vec<Candidate> = racks.iter().enumerate().map(|(id, r)| Candidate { id: id as i32, rack: format!("r{r}"), load: 0 }).collect();
            let partitions: Vec<PartitionReplicas> = parts.iter().enumerate().map(|(i, replicas)| {
                let mut replicas: Vec<i32> = replicas.iter().map(|r| r % n as i32).collect();
                replicas.sort_unstable(); replicas.dedup();
                let k = replicas.len();
                replicas.rotate_left((shuffle as usize >> (i % 32)) % k);
                PartitionReplicas { topic: "t".into(), partition: i as i32, replicas, moving: false }
            }).collect();
            let moves = rebalance_moves(&partitions, &brokers);
            let rack_count = |rs: &[i32]| { let mut r: Vec<u8> = rs.iter().map(|b| racks[*b as usize]).collect(); r.sort_unstable(); r.dedup(); r.len() };
            let mut leads = vec![0usize; n];
            for p in &partitions {
                let t = moves.iter().find(|m| m.1 == p.partition).map_or(&p.replicas, |m| &m.2);
                prop_assert!(rack_count(t) >= rack_count(&p.replicas), "{:?} -> {:?} narrows its racks", p.replicas, t);
                leads[t[0] as usize] += 1;
            }
            for (_, _, t) in &moves {
                prop_assert!(t.iter().all(|r| leads[t[0] as usize] <= leads[*r as usize] + 1), "{:?} with leaders {:?}", t, leads);
            }
        }
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
