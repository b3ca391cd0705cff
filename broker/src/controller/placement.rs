//! Replica placement for new partitions: a pure function over the live
//! brokers, in the shape of Kafka's assignment. Brokers are ordered so that
//! racks alternate; partition `p`'s replicas are `rf` consecutive brokers from
//! position `start + p` in that order. So no broker holds two replicas of a
//! partition, replicas span as many racks as there are (up to `rf`), and both
//! replicas and preferred leaders (the first replica) are spread evenly.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// A live broker as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: i32,
    /// Empty when the broker has no `broker.rack`.
    pub rack: String,
}

/// Brokers with racks interleaved: one from each rack in turn (racks and the
/// brokers within them by id), so neighbours sit in different racks.
fn rack_alternating(brokers: &[Candidate]) -> Vec<i32> {
    let mut by_rack: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for b in brokers {
        by_rack.entry(b.rack.as_str()).or_default().push(b.id);
    }
    for ids in by_rack.values_mut() {
        ids.sort_unstable();
    }
    let mut out = Vec::with_capacity(brokers.len());
    for i in 0.. {
        let before = out.len();
        out.extend(by_rack.values().filter_map(|ids| ids.get(i)));
        if out.len() == before {
            break;
        }
    }
    out
}

/// Replica lists for partitions `first..first + count` with `rf` replicas
/// each. `start` rotates where a topic's first leader falls (a hash of its
/// name), so many small topics do not all lead on one broker.
pub fn assign(brokers: &[Candidate], first: i32, count: i32, rf: i16, start: usize) -> Result<Vec<Vec<i32>>> {
    let order = rack_alternating(brokers);
    let n = order.len();
    if rf < 1 || rf as usize > n {
        return Err(Error::InvalidReplicationFactor(format!(
            "replication factor {rf} is larger than the {n} available broker{}",
            if n == 1 { "" } else { "s" }
        )));
    }
    Ok((first..first + count)
        .map(|p| (0..rf as usize).map(|j| order[(start + p as usize + j) % n]).collect())
        .collect())
}

/// Checks replica lists given by a client: every partition the same number of
/// replicas, no broker twice in one list, only registered brokers.
pub fn validate(assignments: &[Vec<i32>], registered: &[i32]) -> Result<()> {
    let Some(first) = assignments.first() else {
        return Err(Error::InvalidReplicaAssignment("no partitions assigned".into()));
    };
    for (p, replicas) in assignments.iter().enumerate() {
        if replicas.is_empty() || replicas.len() != first.len() {
            return Err(Error::InvalidReplicaAssignment(format!(
                "partition {p} has {} replicas; every partition needs the same number, at least one",
                replicas.len()
            )));
        }
        for (i, id) in replicas.iter().enumerate() {
            if replicas[..i].contains(id) {
                return Err(Error::InvalidReplicaAssignment(format!(
                    "partition {p} names broker {id} twice"
                )));
            }
            if !registered.contains(id) {
                return Err(Error::InvalidReplicaAssignment(format!(
                    "partition {p} names unknown broker {id}"
                )));
            }
        }
    }
    Ok(())
}

/// Where a topic's rotation starts: stable for a name.
pub fn start_for(topic: &str) -> usize {
    topic
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidates(racks: &[u8]) -> Vec<Candidate> {
        racks
            .iter()
            .enumerate()
            .map(|(i, r)| Candidate {
                id: i as i32 + 1,
                rack: if *r == 0 { String::new() } else { format!("rack-{r}") },
            })
            .collect()
    }

    #[test]
    fn too_few_brokers_is_an_invalid_replication_factor() {
        let e = assign(&candidates(&[0]), 0, 1, 3, 0).unwrap_err();
        assert!(matches!(e, Error::InvalidReplicationFactor(_)), "{e}");
    }

    #[test]
    fn client_assignments_are_checked() {
        assert!(validate(&[vec![1, 2], vec![2, 3]], &[1, 2, 3]).is_ok());
        for bad in [vec![vec![1, 1]], vec![vec![1, 9]], vec![vec![1, 2], vec![3]], vec![]] {
            assert!(matches!(
                validate(&bad, &[1, 2, 3]),
                Err(Error::InvalidReplicaAssignment(_))
            ));
        }
    }

    proptest! {
        /// Distinct replicas; replicas and preferred leaders balanced within
        /// one per broker; as many racks per partition as possible.
        #[test]
        fn placement_is_balanced_and_rack_spread(
            racks in proptest::collection::vec(0u8..4, 1..9),
            partitions in 1i32..60,
            rf in 1i16..4,
            start in 0usize..100,
        ) {
            let brokers = candidates(&racks);
            prop_assume!(rf as usize <= brokers.len());
            let plan = assign(&brokers, 0, partitions, rf, start).unwrap();
            prop_assert_eq!(plan.len(), partitions as usize);
            let mut replicas: BTreeMap<i32, usize> = brokers.iter().map(|b| (b.id, 0)).collect();
            let mut leaders = replicas.clone();
            let distinct_racks = {
                let mut r: Vec<&str> = brokers.iter().map(|b| b.rack.as_str()).collect();
                r.sort_unstable();
                r.dedup();
                r.len()
            };
            let per_rack = |rack: &str| brokers.iter().filter(|b| b.rack == rack).count();
            let even_racks = brokers.iter().all(|b| per_rack(&b.rack) == per_rack(&brokers[0].rack));
            for list in &plan {
                let mut sorted = list.clone();
                sorted.sort_unstable();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), list.len(), "no broker twice: {:?}", list);
                *leaders.get_mut(&list[0]).unwrap() += 1;
                for id in list {
                    *replicas.get_mut(id).unwrap() += 1;
                }
                let mut used: Vec<&str> = list
                    .iter()
                    .map(|id| brokers.iter().find(|b| b.id == *id).unwrap().rack.as_str())
                    .collect();
                used.sort_unstable();
                used.dedup();
                // With evenly sized racks, a partition spans min(rf, racks) racks.
                if even_racks {
                    prop_assert_eq!(used.len(), list.len().min(distinct_racks), "racks of {:?}", list);
                }
            }
            let spread = |m: &BTreeMap<i32, usize>| m.values().max().unwrap() - m.values().min().unwrap();
            prop_assert!(spread(&leaders) <= 1, "leaders {:?}", leaders);
            prop_assert!(spread(&replicas) <= rf as usize, "replicas {:?}", replicas);
        }
    }
}
