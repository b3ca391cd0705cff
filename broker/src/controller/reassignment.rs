//! Partition reassignment (KIP-455), as pure changes to the image.
//!
//! A reassignment of a partition to `target` first makes its replicas the
//! union `target ++ (original - target)`: the adding replicas start fetching
//! from the leader while every original replica keeps serving. Once every
//! target replica is in the ISR the controller completes it: the replicas
//! become `target`, the removing ones leave the ISR, and when the leader is
//! among them leadership moves to the first in-sync target replica. Until
//! then it can be cancelled, which restores the original replicas.
//!
//! A drain is a reassignment of every partition off one broker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::image::{MetadataImage, TopicImage};
use super::leadership::{PartitionState, NO_LEADER};
use crate::error::{Error, Result};

/// One partition's reassignment in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The replicas before it started, in their order.
    pub original: Vec<i32>,
    /// The replicas it ends with; the first is the preferred leader.
    pub target: Vec<i32>,
}

impl Reassignment {
    /// Target replicas that were not replicas before: they copy the log.
    pub fn adding(&self) -> Vec<i32> {
        self.target
            .iter()
            .copied()
            .filter(|r| !self.original.contains(r))
            .collect()
    }

    /// Original replicas the target drops: they go once it completes.
    pub fn removing(&self) -> Vec<i32> {
        self.original
            .iter()
            .copied()
            .filter(|r| !self.target.contains(r))
            .collect()
    }

    /// The replicas while it runs: the target, then the removing ones.
    pub fn replicas(&self) -> Vec<i32> {
        let mut all = self.target.clone();
        all.extend(self.removing());
        all
    }
}

/// A partition's state once its replicas become `replicas`: the ISR keeps
/// only them, and a leader outside them hands over to the first live one in
/// sync (a new leader epoch). The partition epoch moves: the replica set did.
fn narrowed(state: &PartitionState, replicas: &[i32], live: impl Fn(i32) -> bool) -> PartitionState {
    let mut isr: Vec<i32> = state.isr.iter().copied().filter(|r| replicas.contains(r)).collect();
    let leader = if replicas.contains(&state.leader) {
        state.leader
    } else {
        replicas
            .iter()
            .copied()
            .find(|r| isr.contains(r) && live(*r))
            .unwrap_or(NO_LEADER)
    };
    if isr.is_empty() {
        // Never an empty ISR: the replica that will hold every record leads.
        isr = replicas.first().copied().into_iter().collect();
    }
    PartitionState {
        leader_epoch: if leader == state.leader {
            state.leader_epoch
        } else {
            state.leader_epoch + 1
        },
        partition_epoch: state.partition_epoch + 1,
        leader,
        isr,
    }
}

fn slot(topic: &TopicImage, partition: i32) -> Result<usize> {
    usize::try_from(partition)
        .ok()
        .filter(|p| *p < topic.assignments.len() && *p < topic.states.len())
        .ok_or(Error::UnknownTopicOrPartition)
}

impl MetadataImage {
    /// AlterPartitionReassignments for one partition: start (or replace) a
    /// reassignment to `target`, or cancel the one in progress (`None`).
    /// `allow_rf_change` false refuses a target of another size (KIP-860).
    pub fn alter_reassignment(
        &mut self,
        topic: &str,
        partition: i32,
        target: Option<&[i32]>,
        allow_rf_change: bool,
    ) -> Result<()> {
        let registered: Vec<i32> = self.brokers.keys().copied().collect();
        let live = |id: i32| self.is_live(id);
        let live: Vec<i32> = registered.iter().copied().filter(|id| live(*id)).collect();
        let t = self.topics.get_mut(topic).ok_or(Error::UnknownTopicOrPartition)?;
        let p = slot(t, partition)?;
        let is_live = |id: i32| live.contains(&id);
        let Some(target) = target else {
            let Some(r) = t.reassigning.remove(&partition) else {
                return Err(Error::NoReassignmentInProgress(format!(
                    "{topic}-{partition} is not being reassigned"
                )));
            };
            t.states[p] = narrowed(&t.states[p], &r.original, is_live);
            t.assignments[p] = r.original;
            return Ok(());
        };
        validate_target(target, &registered)?;
        let original = t
            .reassigning
            .get(&partition)
            .map_or_else(|| t.assignments[p].clone(), |r| r.original.clone());
        if !allow_rf_change && target.len() != original.len() {
            return Err(Error::InvalidReplicationFactor(format!(
                "{topic}-{partition}: the target has {} replicas, the partition {}",
                target.len(),
                original.len()
            )));
        }
        let r = Reassignment {
            original,
            target: target.to_vec(),
        };
        let replicas = r.replicas();
        if replicas != t.assignments[p] {
            // Replicas that are neither target nor original (a replaced
            // reassignment's adding ones) leave the ISR too.
            t.states[p] = narrowed(&t.states[p], &replicas, is_live);
            t.assignments[p] = replicas;
        }
        if r.target == r.original {
            t.reassigning.remove(&partition);
        } else {
            t.reassigning.insert(partition, r);
        }
        self.maybe_complete_reassignment(topic, partition);
        Ok(())
    }

    /// Completes the partition's reassignment once every target replica is
    /// in sync. Answers whether it did.
    pub fn maybe_complete_reassignment(&mut self, topic: &str, partition: i32) -> bool {
        let live: Vec<i32> = self.brokers.keys().copied().filter(|id| self.is_live(*id)).collect();
        let anyone = self.brokers.is_empty();
        let Some(t) = self.topics.get_mut(topic) else {
            return false;
        };
        let Ok(p) = slot(t, partition) else {
            return false;
        };
        let Some(r) = t.reassigning.get(&partition) else {
            return false;
        };
        if !r.target.iter().all(|x| t.states[p].isr.contains(x)) {
            return false;
        }
        let r = t.reassigning.remove(&partition).expect("present");
        t.states[p] = narrowed(&t.states[p], &r.target, |id| anyone || live.contains(&id));
        t.assignments[p] = r.target;
        t.replication_factor = t.assignments.iter().map(Vec::len).max().unwrap_or(0) as i16;
        true
    }

    /// Reassignments in progress: (topic, partition, reassignment).
    pub fn reassignments(&self) -> Vec<(&str, i32, &Reassignment)> {
        self.topics
            .values()
            .flat_map(|t| t.reassigning.iter().map(move |(p, r)| (t.name.as_str(), *p, r)))
            .collect()
    }

    /// Targets that move every replica off `broker`: each replica goes to
    /// a live broker the partition does not use, from the same rack when
    /// one can take it, the one holding fewest replicas first (counting the
    /// moves planned so far). The drained broker's position is kept, so
    /// preferred leadership moves with it.
    pub fn drain_plan(&self, broker: i32) -> Result<Vec<(String, i32, Vec<i32>)>> {
        let rack_of = |id: i32| self.brokers.get(&id).map(|b| b.rack.as_str()).unwrap_or("");
        let mut load: BTreeMap<i32, usize> = self
            .brokers
            .values()
            .filter(|b| !b.fenced && b.id != broker)
            .map(|b| (b.id, self.replica_count(b.id)))
            .collect();
        let mut plan = Vec::new();
        for t in self.topics.values() {
            for (p, replicas) in t.assignments.iter().enumerate() {
                let p = p as i32;
                let current = t
                    .reassigning
                    .get(&p)
                    .map_or(replicas.as_slice(), |r| r.target.as_slice());
                let Some(pos) = current.iter().position(|r| *r == broker) else {
                    continue;
                };
                let chosen = load
                    .iter()
                    .filter(|(id, _)| !replicas.contains(id))
                    .min_by_key(|(id, n)| (rack_of(**id) != rack_of(broker), **n, **id))
                    .map(|(id, _)| *id)
                    .ok_or_else(|| {
                        Error::InvalidReplicaAssignment(format!(
                            "no live broker can take {}-{p} from broker {broker}",
                            t.name
                        ))
                    })?;
                *load.entry(chosen).or_default() += 1;
                let mut target = current.to_vec();
                target[pos] = chosen;
                plan.push((t.name.clone(), p, target));
            }
        }
        Ok(plan)
    }
}

/// A target names registered brokers, each once, at least one.
fn validate_target(target: &[i32], registered: &[i32]) -> Result<()> {
    if target.is_empty() {
        return Err(Error::InvalidReplicaAssignment(
            "a target needs at least one replica".into(),
        ));
    }
    for (i, id) in target.iter().enumerate() {
        if target[..i].contains(id) {
            return Err(Error::InvalidReplicaAssignment(format!("broker {id} named twice")));
        }
        if !registered.contains(id) {
            return Err(Error::InvalidReplicaAssignment(format!(
                "broker {id} is not registered"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::config::BrokerConfig;
    use crate::controller::image::BrokerRegistration;

    fn cluster(brokers: &[i32]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in brokers {
            image.brokers.insert(
                *id,
                BrokerRegistration {
                    id: *id,
                    incarnation_id: uuid::Uuid::new_v4(),
                    host: "127.0.0.1".into(),
                    port: 9092,
                    admin: String::new(),
                    rack: String::new(),
                    fenced: false,
                },
            );
        }
        image
            .create_topic(
                &BrokerConfig::default(),
                "t",
                2,
                3,
                BTreeMap::new(),
                Some(vec![vec![1, 2, 3], vec![2, 3, 1]]),
            )
            .unwrap();
        image
    }

    fn isr_becomes(image: &mut MetadataImage, isr: &[i32]) -> bool {
        let s = image.topics["t"].states[0].clone();
        image
            .alter_partition("t", 0, s.leader, s.leader_epoch, s.partition_epoch, isr)
            .unwrap();
        image.maybe_complete_reassignment("t", 0)
    }

    #[test]
    fn a_reassignment_adds_waits_for_sync_then_drops_and_moves_leadership() {
        let mut image = cluster(&[1, 2, 3, 4]);
        image.alter_reassignment("t", 0, Some(&[2, 3, 4]), true).unwrap();
        let t = &image.topics["t"];
        assert_eq!(t.assignments[0], vec![2, 3, 4, 1], "target, then the removing replica");
        assert_eq!((t.states[0].leader, &t.states[0].isr), (1, &vec![1, 2, 3]));
        let r = &t.reassigning[&0];
        assert_eq!((r.adding(), r.removing()), (vec![4], vec![1]));
        assert_eq!(image.reassignments().len(), 1);

        assert!(!isr_becomes(&mut image, &[1, 2, 3]), "4 not in sync yet");
        let epoch = image.topics["t"].states[0].leader_epoch;
        assert!(isr_becomes(&mut image, &[1, 2, 3, 4]));
        let t = &image.topics["t"];
        assert_eq!(t.assignments[0], vec![2, 3, 4]);
        assert_eq!(t.states[0].isr, vec![2, 3, 4]);
        assert_eq!(t.states[0].leader, 2, "the first in-sync target replica");
        assert_eq!(t.states[0].leader_epoch, epoch + 1);
        assert!(t.reassigning.is_empty());
        assert_eq!(image.replica_count(1), 1);
    }

    #[test]
    fn cancel_restores_the_original_and_bad_targets_are_refused() {
        let mut image = cluster(&[1, 2, 3, 4]);
        assert!(matches!(
            image.alter_reassignment("t", 0, None, true),
            Err(Error::NoReassignmentInProgress(_))
        ));
        image.alter_reassignment("t", 0, Some(&[4, 2, 3]), true).unwrap();
        isr_becomes(&mut image, &[1, 2, 3]);
        image.alter_reassignment("t", 0, None, true).unwrap();
        let t = &image.topics["t"];
        assert_eq!(t.assignments[0], vec![1, 2, 3]);
        assert_eq!((t.states[0].leader, &t.states[0].isr), (1, &vec![1, 2, 3]));
        assert!(t.reassigning.is_empty());

        for bad in [&[][..], &[1, 1, 2], &[1, 2, 9]] {
            assert!(matches!(
                image.alter_reassignment("t", 0, Some(bad), true),
                Err(Error::InvalidReplicaAssignment(_))
            ));
        }
        assert!(matches!(
            image.alter_reassignment("t", 0, Some(&[1, 2]), false),
            Err(Error::InvalidReplicationFactor(_))
        ));
        assert!(matches!(
            image.alter_reassignment("t", 7, Some(&[1, 2, 3]), true),
            Err(Error::UnknownTopicOrPartition)
        ));
        // A shrink to replicas already in sync completes at once.
        image.alter_reassignment("t", 0, Some(&[2, 3]), true).unwrap();
        assert_eq!(image.topics["t"].assignments[0], vec![2, 3]);
        assert_eq!(image.topics["t"].states[0].leader, 2);
    }

    #[test]
    fn a_drain_replaces_the_broker_everywhere() {
        let mut image = cluster(&[1, 2, 3, 4]);
        let plan = image.drain_plan(1).unwrap();
        assert_eq!(
            plan,
            vec![("t".to_string(), 0, vec![4, 2, 3]), ("t".to_string(), 1, vec![2, 3, 4])]
        );
        let three = cluster(&[1, 2, 3]);
        assert!(matches!(three.drain_plan(1), Err(Error::InvalidReplicaAssignment(_))));
        for (topic, p, target) in plan {
            image.alter_reassignment(&topic, p, Some(&target), false).unwrap();
        }
        assert_eq!(image.drain_plan(1).unwrap(), vec![], "nothing left to move");
    }

    proptest! {
        /// Whatever the ISR does, a reassignment only completes with every
        /// target replica in sync, never leaves the ISR empty or outside the
        /// replicas, and leader epochs only go forward.
        #[test]
        fn reassignment_invariants(
            target in proptest::sample::subsequence(vec![1, 2, 3, 4, 5], 1..=5).prop_shuffle(),
            isrs in proptest::collection::vec(proptest::sample::subsequence(vec![2, 3, 4, 5], 0..=4), 0..6),
            cancel in any::<bool>(),
        ) {
            let mut image = cluster(&[1, 2, 3, 4, 5]);
            image.alter_reassignment("t", 0, Some(&target), true).unwrap();
            let mut epoch = image.topics["t"].states[0].leader_epoch;
            for extra in isrs {
                let s = image.topics["t"].states[0].clone();
                let replicas = image.topics["t"].assignments[0].clone();
                if s.leader < 0 { break; }
                let mut isr = vec![s.leader];
                isr.extend(extra.into_iter().filter(|r| replicas.contains(r) && *r != s.leader));
                let reassigning = image.topics["t"].reassigning.contains_key(&0);
                image.alter_partition("t", 0, s.leader, s.leader_epoch, s.partition_epoch, &isr).unwrap();
                let done = image.maybe_complete_reassignment("t", 0);
                prop_assert!(!done || (reassigning && target.iter().all(|r| isr.contains(r))));
                let t = &image.topics["t"];
                prop_assert!(!t.states[0].isr.is_empty());
                prop_assert!(t.states[0].isr.iter().all(|r| t.assignments[0].contains(r)));
                prop_assert!(t.states[0].leader_epoch >= epoch);
                epoch = t.states[0].leader_epoch;
            }
            if cancel && image.topics["t"].reassigning.contains_key(&0) {
                image.alter_reassignment("t", 0, None, true).unwrap();
                prop_assert_eq!(&image.topics["t"].assignments[0], &vec![1, 2, 3]);
            }
            if !image.topics["t"].reassigning.contains_key(&0) {
                let a = &image.topics["t"].assignments[0];
                prop_assert!(a == &target || a == &vec![1, 2, 3]);
            }
        }
    }
}
