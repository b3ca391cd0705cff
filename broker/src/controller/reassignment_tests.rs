//! Partition reassignment through the image: a move adds the target
//! replicas, completes once they are all in sync (leadership leaves a
//! removed leader), can be cancelled, and a drain empties a broker.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::image::{BrokerRegistration, MetadataImage};
use crate::config::BrokerConfig;
use crate::error::Error;

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

/// A cancel that would leave only out-of-sync replicas (the ISR failed
/// over to the new ones) is refused, and the move stays as it was.
#[test]
fn a_move_never_drops_every_in_sync_replica() {
    use super::leadership::PartitionState;
    use super::reassignment::{PartitionReplicas, Reassignment};
    let mut replicas = vec![4, 5, 1, 2, 3];
    let mut state = PartitionState {
        leader: 4,
        leader_epoch: 3,
        partition_epoch: 9,
        isr: vec![4, 5],
    };
    let mut moving = Some(Reassignment {
        original: vec![1, 2, 3],
        target: vec![4, 5],
    });
    let before = (replicas.clone(), state.clone(), moving.clone());
    let mut p = PartitionReplicas {
        replicas: &mut replicas,
        state: &mut state,
        moving: &mut moving,
    };
    assert!(matches!(
        p.alter(None, true, &[1, 2, 3, 4, 5], |_| true),
        Err(Error::InvalidReplicaAssignment(_))
    ));
    assert_eq!((replicas, state, moving), before);
}
