//! Controller operations as pure functions: an operation read against the
//! image answers its result and the records that make it so (Kafka's
//! `ControllerResult`). Nothing here copies the whole image: an ISR change
//! reads one partition and writes one record, an election writes a record per
//! partition it moves, a topic operation works on a copy of its topics only.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::image::MetadataImage;
use super::leadership::{Election, PartitionState};
use super::records::{ControllerError, ControllerOp, IsrChange, MetadataRecord, OpResult};
use crate::config::BrokerConfig;
use crate::error::Error;

/// The result of an operation and the records to append for it; no records
/// when it changes nothing.
pub type Outcome = (OpResult, Vec<MetadataRecord>);

/// An operation against `image` (on the active controller).
pub fn run(broker: &BrokerConfig, op: &ControllerOp, image: &MetadataImage) -> Result<Outcome, ControllerError> {
    let config = super::effective(broker, image);
    Ok(match op {
        ControllerOp::SetClusterId(id) => {
            let records = if image.cluster_id.is_empty() {
                vec![MetadataRecord::ClusterId(id.clone())]
            } else {
                Vec::new()
            };
            (OpResult::Done, records)
        }
        ControllerOp::RegisterBroker(registration) => {
            // Fenced until its heartbeat shows it caught up with the log.
            let mut registration = registration.clone();
            registration.fenced = true;
            let mut brokers = image.brokers.clone();
            brokers.insert(registration.id, registration.clone());
            // A new incarnation replaces a live one: its partitions move now.
            let mut records = Vec::new();
            if image.brokers.get(&registration.id) != Some(&registration) {
                records.push(MetadataRecord::Broker(registration));
            }
            records.extend(partition_changes(image.elections(
                &config,
                Election::Failover,
                None,
                &brokers,
            )));
            (OpResult::Done, records)
        }
        ControllerOp::UnfenceBroker { id, incarnation_id } | ControllerOp::FenceBroker { id, incarnation_id } => {
            let fenced = matches!(op, ControllerOp::FenceBroker { .. });
            let mut brokers = image.brokers.clone();
            let mut records = Vec::new();
            if let Some(b) = brokers
                .get_mut(id)
                .filter(|b| b.incarnation_id == *incarnation_id && b.fenced != fenced)
            {
                b.fenced = fenced;
                records.push(MetadataRecord::Broker(b.clone()));
            }
            // A fenced broker's partitions move; offline partitions whose
            // last in-sync replica is back lead again.
            records.extend(partition_changes(image.elections(
                &config,
                Election::Failover,
                None,
                &brokers,
            )));
            (OpResult::Done, records)
        }
        ControllerOp::AlterPartition { leader, changes } => alter_partitions(image, *leader, changes),
        ControllerOp::ElectPreferredLeaders { partitions } => {
            let moves = match partitions {
                Some(named) => named.clone(),
                None => image.preferred_leader_moves(config.leader_imbalance_per_broker_percentage),
            };
            let elected = image.elections(&config, Election::Preferred, Some(&moves), &image.brokers);
            (OpResult::Elected(elected.len()), partition_changes(elected))
        }
        ControllerOp::CreateTopic {
            name,
            partitions,
            replication_factor,
            configs,
            assignments,
        } => {
            let topic = image.new_topic(
                &config,
                name,
                *partitions,
                *replication_factor,
                configs.clone(),
                assignments.clone(),
            )?;
            let records = vec![MetadataRecord::Topic(topic.clone())];
            (OpResult::Topic(topic), records)
        }
        ControllerOp::DeleteTopic(name) => {
            let topic = image.topics.get(name).ok_or(Error::UnknownTopicOrPartition)?;
            let records = vec![MetadataRecord::RemoveTopic(name.clone())];
            (OpResult::Topic((**topic).clone()), records)
        }
        ControllerOp::CreatePartitions {
            name,
            count,
            assignments,
        } => {
            let mut scoped = image.scoped_to([name.as_str()]);
            scoped.create_partitions_with(&config, name, *count, assignments.clone())?;
            (OpResult::Done, topic_changes(image, &scoped))
        }
        ControllerOp::AlterTopicConfigs { name, ops } => {
            let mut scoped = image.scoped_to([name.as_str()]);
            scoped.alter_topic_configs(&config, name, ops)?;
            (OpResult::Done, topic_changes(image, &scoped))
        }
        ControllerOp::AlterBrokerConfigs { ops, default_entity } => {
            let mut scoped = image.scoped_to([]);
            scoped.alter_broker_configs(broker, ops, *default_entity)?;
            let changed = scoped.broker_overrides != image.broker_overrides
                || scoped.kafka_only_broker_overrides != image.kafka_only_broker_overrides;
            let records = if changed {
                vec![MetadataRecord::BrokerOverrides {
                    overrides: scoped.broker_overrides,
                    kafka_only: scoped.kafka_only_broker_overrides,
                }]
            } else {
                Vec::new()
            };
            (OpResult::Done, records)
        }
        ControllerOp::AlterReassignments {
            changes,
            allow_rf_change,
        } => {
            let mut scoped = image.scoped_to(changes.iter().map(|(topic, _, _)| topic.as_str()));
            let results = changes
                .iter()
                .map(|(topic, partition, target)| {
                    scoped
                        .alter_reassignment(topic, *partition, target.as_deref(), *allow_rf_change)
                        .map_err(ControllerError::from)
                })
                .collect();
            (OpResult::Reassigned(results), topic_changes(image, &scoped))
        }
        ControllerOp::DrainBroker { id } => {
            if !image.brokers.contains_key(id) {
                return Err(Error::InvalidReplicaAssignment(format!("broker {id} is not registered")).into());
            }
            let plan = image.drain_plan(*id)?;
            let mut scoped = image.scoped_to(plan.iter().map(|(topic, _, _)| topic.as_str()));
            for (topic, partition, target) in &plan {
                // The target keeps the size of the one in progress, if any.
                scoped.alter_reassignment(topic, *partition, Some(target), true)?;
            }
            (OpResult::Moved(plan.len()), topic_changes(image, &scoped))
        }
        ControllerOp::AllocateProducerIds { block } => {
            let start = image.next_producer_id_block;
            let next = start + (*block).clamp(1, 1_000_000);
            (
                OpResult::ProducerIdBlock(start),
                vec![MetadataRecord::ProducerIdBlock(next)],
            )
        }
    })
}

/// AlterPartition: a record per ISR taken. A change that completes the
/// partition's reassignment (every target replica in sync) rewrites its topic.
fn alter_partitions(image: &MetadataImage, leader: i32, changes: &[IsrChange]) -> Outcome {
    // Topics whose reassignment an ISR change completes, as changed so far.
    let mut reassigned: BTreeMap<String, MetadataImage> = BTreeMap::new();
    let mut states: BTreeMap<(String, i32), PartitionState> = BTreeMap::new();
    let results = changes
        .iter()
        .map(|c| {
            let state =
                image.altered_partition(&c.topic, c.partition, leader, c.leader_epoch, c.partition_epoch, &c.isr)?;
            if image.topics.get(&c.topic).and_then(|t| t.state(c.partition)) == Some(&state) {
                return Ok(());
            }
            let moving = image
                .topics
                .get(&c.topic)
                .is_some_and(|t| t.reassigning.contains_key(&c.partition));
            if moving {
                let scoped = reassigned
                    .entry(c.topic.clone())
                    .or_insert_with(|| image.scoped_to([c.topic.as_str()]));
                scoped.set_partition_state(&c.topic, c.partition, state.clone());
                if scoped.maybe_complete_reassignment(&c.topic, c.partition) {
                    return Ok(());
                }
            }
            states.insert((c.topic.clone(), c.partition), state);
            Ok(())
        })
        .collect();
    let mut records = Vec::new();
    for ((topic, partition), state) in states {
        match reassigned.get_mut(&topic) {
            // Its topic is rewritten whole: the record holds the new state.
            Some(scoped) => scoped.set_partition_state(&topic, partition, state),
            None => records.push(MetadataRecord::PartitionChange {
                topic,
                partition,
                state,
            }),
        }
    }
    records.extend(reassigned.values().flat_map(|scoped| topic_changes(image, scoped)));
    (OpResult::Altered(results), records)
}

fn partition_changes(elected: Vec<(String, i32, PartitionState)>) -> Vec<MetadataRecord> {
    elected
        .into_iter()
        .map(|(topic, partition, state)| MetadataRecord::PartitionChange {
            topic,
            partition,
            state,
        })
        .collect()
}

/// A record for each topic of `scoped` that differs from the image's.
fn topic_changes(image: &MetadataImage, scoped: &MetadataImage) -> Vec<MetadataRecord> {
    scoped
        .topics
        .iter()
        .filter(|(name, topic)| {
            image
                .topics
                .get(*name)
                .is_none_or(|old| !Arc::ptr_eq(old, topic) && old != *topic)
        })
        .map(|(_, topic)| MetadataRecord::Topic((**topic).clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::controller::image::BrokerRegistration;
    use crate::controller::records::{self, ImageChanges};

    fn registration(id: i32) -> BrokerRegistration {
        BrokerRegistration {
            id,
            incarnation_id: uuid::Uuid::from_u128(id as u128),
            host: "127.0.0.1".into(),
            port: 9092 + id,
            admin: format!("127.0.0.1:{}", 19092 + id),
            rack: String::new(),
            fenced: false,
        }
    }

    /// The image an operation's records make of `image`.
    fn replay(image: &MetadataImage, records: &[MetadataRecord]) -> MetadataImage {
        let mut next = image.clone();
        for r in records {
            records::apply(&mut next, r, &mut ImageChanges::default());
        }
        next
    }

    /// The operation done directly on the image with its in-place changes:
    /// the model the records must agree with.
    fn model(broker: &BrokerConfig, op: &ControllerOp, image: &mut MetadataImage) -> Result<(), Error> {
        let config = crate::controller::effective(broker, image);
        match op {
            ControllerOp::RegisterBroker(r) => {
                image.brokers.insert(
                    r.id,
                    BrokerRegistration {
                        fenced: true,
                        ..r.clone()
                    },
                );
                image.elect_leaders(&config, Election::Failover, None);
            }
            ControllerOp::UnfenceBroker { id, incarnation_id } | ControllerOp::FenceBroker { id, incarnation_id } => {
                let fenced = matches!(op, ControllerOp::FenceBroker { .. });
                if let Some(b) = image
                    .brokers
                    .get_mut(id)
                    .filter(|b| b.incarnation_id == *incarnation_id)
                {
                    b.fenced = fenced;
                }
                image.elect_leaders(&config, Election::Failover, None);
            }
            ControllerOp::AlterPartition { leader, changes } => {
                for c in changes {
                    if image
                        .alter_partition(
                            &c.topic,
                            c.partition,
                            *leader,
                            c.leader_epoch,
                            c.partition_epoch,
                            &c.isr,
                        )
                        .is_ok()
                    {
                        image.maybe_complete_reassignment(&c.topic, c.partition);
                    }
                }
            }
            ControllerOp::ElectPreferredLeaders { partitions: None } => {
                let moves = image.preferred_leader_moves(config.leader_imbalance_per_broker_percentage);
                image.elect_leaders(&config, Election::Preferred, Some(&moves));
            }
            ControllerOp::CreateTopic {
                name,
                partitions,
                replication_factor,
                ..
            } => {
                image.create_topic(&config, name, *partitions, *replication_factor, BTreeMap::new(), None)?;
            }
            ControllerOp::DeleteTopic(name) => {
                image.delete_topic(name)?;
            }
            ControllerOp::CreatePartitions { name, count, .. } => image.create_partitions(&config, name, *count)?,
            ControllerOp::AlterReassignments { changes, .. } => {
                for (topic, partition, target) in changes {
                    let _ = image.alter_reassignment(topic, *partition, target.as_deref(), true);
                }
            }
            ControllerOp::AllocateProducerIds { block } => image.next_producer_id_block += block,
            other => unreachable!("not generated: {other:?}"),
        }
        Ok(())
    }

    fn op() -> impl proptest::strategy::Strategy<Value = ControllerOp> {
        use proptest::prelude::*;
        let topic = prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
        prop_oneof![
            (1i32..5).prop_map(|id| ControllerOp::RegisterBroker(registration(id))),
            (1i32..5).prop_map(|id| ControllerOp::FenceBroker {
                id,
                incarnation_id: registration(id).incarnation_id
            }),
            (1i32..5).prop_map(|id| ControllerOp::UnfenceBroker {
                id,
                incarnation_id: registration(id).incarnation_id
            }),
            (topic.clone(), 1i32..6, 1i16..4).prop_map(|(name, partitions, replication_factor)| {
                ControllerOp::CreateTopic {
                    name,
                    partitions,
                    replication_factor,
                    configs: BTreeMap::new(),
                    assignments: None,
                }
            }),
            topic.clone().prop_map(ControllerOp::DeleteTopic),
            (topic.clone(), 1i32..8).prop_map(|(name, count)| ControllerOp::CreatePartitions {
                name,
                count,
                assignments: None
            }),
            Just(ControllerOp::ElectPreferredLeaders { partitions: None }),
            (topic.clone(), 0i32..6, prop::collection::vec(1i32..5, 1..4)).prop_map(|(t, p, target)| {
                let mut target = target;
                target.dedup();
                ControllerOp::AlterReassignments {
                    changes: vec![(t, p, Some(target))],
                    allow_rf_change: true,
                }
            }),
            // The leader drops its followers, or takes them all back.
            (topic, 0i32..6, any::<bool>()).prop_map(|(topic, partition, shrink)| ControllerOp::AlterPartition {
                // Filled from the image below.
                leader: i32::from(shrink),
                changes: vec![IsrChange {
                    topic,
                    partition,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    isr: Vec::new(),
                }],
            }),
            Just(ControllerOp::AllocateProducerIds { block: 1000 }),
        ]
    }

    /// AlterPartition as the current leader would send it.
    fn from_the_leader(image: &MetadataImage, op: ControllerOp) -> ControllerOp {
        let ControllerOp::AlterPartition {
            leader: shrink,
            mut changes,
        } = op
        else {
            return op;
        };
        let c = &mut changes[0];
        let Some((replicas, state)) = image
            .topics
            .get(&c.topic)
            .and_then(|t| Some((t.replicas(c.partition).to_vec(), t.state(c.partition)?.clone())))
        else {
            return ControllerOp::AlterPartition { leader: -1, changes };
        };
        c.leader_epoch = state.leader_epoch;
        c.partition_epoch = state.partition_epoch;
        c.isr = if shrink == 1 { vec![state.leader] } else { replicas };
        ControllerOp::AlterPartition {
            leader: state.leader,
            changes,
        }
    }

    /// The image with every topic id nil (a created topic's id is random).
    fn without_ids(image: &MetadataImage) -> MetadataImage {
        let mut image = image.clone();
        for t in image.topics.values_mut() {
            Arc::make_mut(t).id = uuid::Uuid::nil();
        }
        image
    }

    proptest::proptest! {
        /// Over random sequences of operations (registration, fencing,
        /// topics created, deleted and grown, elections, reassignments, ISR
        /// changes, producer id blocks): the records an operation answers
        /// turn the image into what the operation does to the image in
        /// place, applying them twice changes nothing, and an operation that
        /// changes nothing writes no record.
        #[test]
        fn records_make_what_the_operation_does(ops in proptest::collection::vec(op(), 1..40)) {
            let broker = BrokerConfig::default();
            let mut image = MetadataImage::default();
            for op in ops {
                let op = from_the_leader(&image, op);
                let mut expected = image.clone();
                let modelled = model(&broker, &op, &mut expected);
                match run(&broker, &op, &image) {
                    Ok((_, records)) => {
                        proptest::prop_assert!(modelled.is_ok(), "{:?}: {:?}", op, modelled);
                        let next = replay(&image, &records);
                        proptest::prop_assert_eq!(without_ids(&next), without_ids(&expected), "{:?}", op);
                        proptest::prop_assert_eq!(&replay(&next, &records), &next);
                        if next == image {
                            proptest::prop_assert!(records.is_empty(), "{:?} wrote {:?}", op, records);
                        }
                        image = next;
                    }
                    Err(e) => proptest::prop_assert!(modelled.is_err(), "{:?}: {:?}", op, e),
                }
            }
        }
    }

    /// One ISR change is one record of one partition, however large its topic.
    #[test]
    fn an_isr_change_writes_one_partition() {
        let broker = BrokerConfig::default();
        let mut image = MetadataImage::default();
        for id in 1..=3 {
            image.brokers.insert(id, registration(id));
        }
        image
            .create_topic(&broker, "t", 3000, 3, BTreeMap::new(), None)
            .unwrap();
        let op = from_the_leader(
            &image,
            ControllerOp::AlterPartition {
                leader: 1,
                changes: vec![IsrChange {
                    topic: "t".into(),
                    partition: 1234,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    isr: Vec::new(),
                }],
            },
        );
        let (result, records) = run(&broker, &op, &image).unwrap();
        assert_eq!(result, OpResult::Altered(vec![Ok(())]));
        assert!(matches!(
            &records[..],
            [MetadataRecord::PartitionChange { partition: 1234, state, .. }] if state.isr.len() == 1
        ));
        // A stale epoch is refused for that partition alone.
        let (result, records) = run(&broker, &op, &replay(&image, &records)).unwrap();
        assert!(matches!(&result, OpResult::Altered(r) if r[0].is_err()));
        assert!(records.is_empty());
    }
}
