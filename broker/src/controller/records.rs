//! The metadata log's typed records and the controller operations that make
//! them.
//!
//! The active controller runs an operation against its image with the pure
//! changes of [`MetadataImage`], then appends the difference as records. Every
//! node applies the records to its own image in log order. A record states a
//! fact (it sets, never increments), so applying it twice is harmless.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::image::{BrokerRegistration, ConfigOp, MetadataImage, TopicImage};
use super::leadership::PartitionState;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// Chosen once, by the first active controller.
    ClusterId(String),
    /// A broker registered, or its fencing changed.
    Broker(BrokerRegistration),
    /// A topic created or changed (partitions, configs).
    Topic(TopicImage),
    /// One partition's leader, epochs or ISR changed (the rest of its topic did not).
    PartitionChange {
        topic: String,
        partition: i32,
        state: PartitionState,
    },
    RemoveTopic(String),
    BrokerOverrides {
        overrides: BTreeMap<String, String>,
        kafka_only: BTreeMap<String, String>,
    },
    /// The first producer id not yet handed out in a block.
    ProducerIdBlock(i64),
}

/// The records that turn `prev` into `next`.
pub fn diff(prev: &MetadataImage, next: &MetadataImage) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    if prev.cluster_id != next.cluster_id {
        records.push(MetadataRecord::ClusterId(next.cluster_id.clone()));
    }
    for (id, broker) in &next.brokers {
        if prev.brokers.get(id) != Some(broker) {
            records.push(MetadataRecord::Broker(broker.clone()));
        }
    }
    for name in prev.topics.keys().filter(|n| !next.topics.contains_key(*n)) {
        records.push(MetadataRecord::RemoveTopic(name.clone()));
    }
    for (name, topic) in &next.topics {
        match prev.topics.get(name) {
            Some(old) if old == topic => {}
            // Only leadership moved: a record per partition, not the whole topic.
            Some(old) if same_but_states(old, topic) => {
                for (p, state) in topic.states.iter().enumerate() {
                    if old.states.get(p) != Some(state) {
                        records.push(MetadataRecord::PartitionChange {
                            topic: name.clone(),
                            partition: p as i32,
                            state: state.clone(),
                        });
                    }
                }
            }
            _ => records.push(MetadataRecord::Topic(topic.clone())),
        }
    }
    if prev.broker_overrides != next.broker_overrides
        || prev.kafka_only_broker_overrides != next.kafka_only_broker_overrides
    {
        records.push(MetadataRecord::BrokerOverrides {
            overrides: next.broker_overrides.clone(),
            kafka_only: next.kafka_only_broker_overrides.clone(),
        });
    }
    if prev.next_producer_id_block != next.next_producer_id_block {
        records.push(MetadataRecord::ProducerIdBlock(next.next_producer_id_block));
    }
    records
}

fn same_but_states(a: &TopicImage, b: &TopicImage) -> bool {
    a.states.len() == b.states.len()
        && a.name == b.name
        && a.id == b.id
        && a.partitions == b.partitions
        && a.replication_factor == b.replication_factor
        && a.configs == b.configs
        && a.assignments == b.assignments
        && a.reassigning == b.reassigning
}

pub fn apply(image: &mut MetadataImage, record: &MetadataRecord) {
    match record {
        MetadataRecord::ClusterId(id) => image.cluster_id = id.clone(),
        MetadataRecord::Broker(b) => {
            image.brokers.insert(b.id, b.clone());
        }
        MetadataRecord::Topic(topic) => {
            image.topics.insert(topic.name.clone(), topic.clone());
        }
        MetadataRecord::PartitionChange {
            topic,
            partition,
            state,
        } => {
            if let Some(slot) = image
                .topics
                .get_mut(topic)
                .and_then(|t| t.states.get_mut(usize::try_from(*partition).ok()?))
            {
                *slot = state.clone();
            }
        }
        MetadataRecord::RemoveTopic(name) => {
            image.topics.remove(name);
        }
        MetadataRecord::BrokerOverrides { overrides, kafka_only } => {
            image.broker_overrides = overrides.clone();
            image.kafka_only_broker_overrides = kafka_only.clone();
        }
        MetadataRecord::ProducerIdBlock(next) => image.next_producer_id_block = *next,
    }
}

/// A metadata change asked of the active controller (possibly forwarded from
/// another broker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerOp {
    SetClusterId(String),
    /// A broker (re)registers at start, with its listeners; fenced until it
    /// has caught up with the metadata log.
    RegisterBroker(BrokerRegistration),
    /// Its heartbeat shows it caught up.
    UnfenceBroker {
        id: i32,
        incarnation_id: uuid::Uuid,
    },
    /// Missed heartbeats or a controlled shutdown: its partitions get new
    /// leaders from their ISR.
    FenceBroker {
        id: i32,
        incarnation_id: uuid::Uuid,
    },
    /// A leader's change of its partition's ISR (Kafka's AlterPartition),
    /// refused unless it names the current leader, leader epoch and
    /// partition epoch: a stale leader cannot overwrite a newer ISR.
    AlterPartition {
        topic: String,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    /// Preferred replicas lead again where they are live and in sync: the
    /// named partitions, or all that auto.leader.rebalance finds imbalanced.
    ElectPreferredLeaders {
        partitions: Option<Vec<(String, i32)>>,
    },
    CreateTopic {
        name: String,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        /// Replicas per partition as the client named them.
        assignments: Option<Vec<Vec<i32>>>,
    },
    DeleteTopic(String),
    CreatePartitions {
        name: String,
        count: i32,
        /// Replicas per new partition as the client named them.
        #[serde(default)]
        assignments: Option<Vec<Vec<i32>>>,
    },
    AlterTopicConfigs {
        name: String,
        ops: Vec<ConfigOp>,
    },
    AlterBrokerConfigs {
        ops: Vec<ConfigOp>,
        default_entity: bool,
    },
    /// AlterPartitionReassignments: per partition, a target to move to, or
    /// `None` to cancel the reassignment in progress.
    AlterReassignments {
        changes: Vec<(String, i32, Option<Vec<i32>>)>,
        allow_rf_change: bool,
    },
    /// Reassigns every replica of one broker to others.
    DrainBroker {
        id: i32,
    },
    /// Reserves a block of producer ids; answers its first id.
    AllocateProducerIds {
        block: i64,
    },
}

/// What an operation answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Done,
    /// How many partitions an election changed.
    Elected(usize),
    Topic(TopicImage),
    ProducerIdBlock(i64),
    /// How many partitions a drain started moving.
    Moved(usize),
    /// Per change asked, in order: whether it was taken.
    Reassigned(Vec<std::result::Result<(), ControllerError>>),
}

/// The errors a controller operation can answer, in a form that crosses the
/// wire between brokers; each maps to one [`Error`] kind and back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerError {
    InvalidTopic(String),
    TopicAlreadyExists(String),
    InvalidPartitions(String),
    InvalidReplicationFactor(String),
    InvalidReplicaAssignment(String),
    InvalidConfig(String),
    InvalidRequest(String),
    UnknownTopicOrPartition,
    NotController(String),
    FencedLeaderEpoch(String),
    InvalidUpdateVersion(String),
    NoReassignmentInProgress(String),
    Storage(String),
}

impl From<Error> for ControllerError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidTopic(m) => ControllerError::InvalidTopic(m),
            Error::TopicAlreadyExists(m) => ControllerError::TopicAlreadyExists(m),
            Error::InvalidPartitions(m) => ControllerError::InvalidPartitions(m),
            Error::InvalidReplicationFactor(m) => ControllerError::InvalidReplicationFactor(m),
            Error::InvalidReplicaAssignment(m) => ControllerError::InvalidReplicaAssignment(m),
            Error::InvalidConfig(m) => ControllerError::InvalidConfig(m),
            Error::InvalidRequest(m) => ControllerError::InvalidRequest(m),
            Error::UnknownTopicOrPartition => ControllerError::UnknownTopicOrPartition,
            Error::NotController(m) => ControllerError::NotController(m),
            Error::FencedLeaderEpoch(m) => ControllerError::FencedLeaderEpoch(m),
            Error::InvalidUpdateVersion(m) => ControllerError::InvalidUpdateVersion(m),
            Error::NoReassignmentInProgress(m) => ControllerError::NoReassignmentInProgress(m),
            other => ControllerError::Storage(other.to_string()),
        }
    }
}

impl From<ControllerError> for Error {
    fn from(e: ControllerError) -> Self {
        match e {
            ControllerError::InvalidTopic(m) => Error::InvalidTopic(m),
            ControllerError::TopicAlreadyExists(m) => Error::TopicAlreadyExists(m),
            ControllerError::InvalidPartitions(m) => Error::InvalidPartitions(m),
            ControllerError::InvalidReplicationFactor(m) => Error::InvalidReplicationFactor(m),
            ControllerError::InvalidReplicaAssignment(m) => Error::InvalidReplicaAssignment(m),
            ControllerError::InvalidConfig(m) => Error::InvalidConfig(m),
            ControllerError::InvalidRequest(m) => Error::InvalidRequest(m),
            ControllerError::UnknownTopicOrPartition => Error::UnknownTopicOrPartition,
            ControllerError::NotController(m) => Error::NotController(m),
            ControllerError::FencedLeaderEpoch(m) => Error::FencedLeaderEpoch(m),
            ControllerError::InvalidUpdateVersion(m) => Error::InvalidUpdateVersion(m),
            ControllerError::NoReassignmentInProgress(m) => Error::NoReassignmentInProgress(m),
            ControllerError::Storage(m) => Error::Storage(std::io::Error::other(m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;

    #[test]
    fn records_replay_the_change() {
        let broker = BrokerConfig::default();
        let mut prev = MetadataImage::default();
        prev.create_topic(&broker, "a", 2, 1, BTreeMap::new(), None).unwrap();
        prev.create_topic(&broker, "b", 1, 1, BTreeMap::new(), None).unwrap();
        let mut next = prev.clone();
        next.cluster_id = "c".into();
        next.delete_topic("a").unwrap();
        next.create_partitions(&broker, "b", 3).unwrap();
        next.create_topic(&broker, "c", 1, 1, BTreeMap::new(), None).unwrap();
        next.next_producer_id_block = 1000;
        next.topics.get_mut("b").unwrap().states[0].leader_epoch = 9;
        next.broker_overrides.insert("log.retention.ms".into(), "1".into());
        let records = diff(&prev, &next);
        let mut replayed = prev.clone();
        for r in &records {
            apply(&mut replayed, r);
        }
        assert_eq!(replayed, next);
        // Applying again changes nothing: records are facts.
        for r in &records {
            apply(&mut replayed, r);
        }
        assert_eq!(replayed, next);
        assert!(diff(&next, &next).is_empty());
    }

    #[test]
    fn a_leadership_change_is_one_record_per_partition() {
        let broker = BrokerConfig::default();
        let mut prev = MetadataImage::default();
        prev.create_topic(&broker, "t", 50, 1, BTreeMap::new(), None).unwrap();
        let mut next = prev.clone();
        next.topics.get_mut("t").unwrap().states[7].leader = -1;
        let records = diff(&prev, &next);
        assert!(matches!(
            &records[..],
            [MetadataRecord::PartitionChange { partition: 7, .. }]
        ));
        let mut replayed = prev.clone();
        apply(&mut replayed, &records[0]);
        assert_eq!(replayed, next);
        // A change for a partition that no longer exists is ignored.
        let mut gone = prev.clone();
        gone.delete_topic("t").unwrap();
        apply(&mut gone, &records[0]);
        assert!(gone.topics.is_empty());
    }

    /// One change an operation can make to the image.
    #[derive(Debug, Clone)]
    enum Change {
        Register(i32),
        Fence(i32),
        Create(usize, i32, i16),
        Delete(usize),
        Grow(usize, i32),
        Override(usize, u16),
        ProducerIds,
        Elect,
    }

    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        prop_oneof![
            (1i32..5).prop_map(Change::Register),
            (1i32..5).prop_map(Change::Fence),
            (0usize..3, 1i32..6, 1i16..4).prop_map(|(t, p, rf)| Change::Create(t, p, rf)),
            (0usize..3).prop_map(Change::Delete),
            (0usize..3, 1i32..8).prop_map(|(t, n)| Change::Grow(t, n)),
            (0usize..2, any::<u16>()).prop_map(|(k, v)| Change::Override(k, v)),
            Just(Change::ProducerIds),
            Just(Change::Elect),
        ]
    }

    proptest::proptest! {
        /// Over random sequences of registrations, fencing, topic creation,
        /// deletion and growth, config overrides, producer id blocks and
        /// elections: the records of each change turn the image before it
        /// into the image after it, applying them twice changes nothing, and
        /// an unchanged image makes no record.
        #[test]
        fn records_replay_any_change(changes in proptest::collection::vec(change(), 1..40)) {
            use super::super::image::BrokerRegistration;
            use super::super::leadership::Election;
            let broker = BrokerConfig::default();
            let topics = ["a", "b", "c"];
            let keys = ["log.retention.ms", "log.segment.bytes"];
            let mut image = MetadataImage::default();
            for change in changes {
                let mut next = image.clone();
                match change {
                    Change::Register(id) => {
                        next.brokers.insert(id, BrokerRegistration {
                            id,
                            incarnation_id: uuid::Uuid::new_v4(),
                            host: "127.0.0.1".into(),
                            port: 9092 + id,
                            admin: format!("127.0.0.1:{}", 9093 + id),
                            rack: String::new(),
                            fenced: false,
                        });
                        next.elect_leaders(&broker, Election::Failover, None);
                    }
                    Change::Fence(id) => {
                        if let Some(b) = next.brokers.get_mut(&id) {
                            b.fenced = true;
                        }
                        next.elect_leaders(&broker, Election::Failover, None);
                    }
                    Change::Create(t, partitions, rf) => {
                        let _ = next.create_topic(&broker, topics[t], partitions, rf, BTreeMap::new(), None);
                    }
                    Change::Delete(t) => {
                        let _ = next.delete_topic(topics[t]);
                    }
                    Change::Grow(t, count) => {
                        let _ = next.create_partitions(&broker, topics[t], count);
                    }
                    Change::Override(k, v) => {
                        next.broker_overrides.insert(keys[k].into(), v.to_string());
                    }
                    Change::ProducerIds => next.next_producer_id_block += 1000,
                    Change::Elect => {
                        next.elect_leaders(&broker, Election::Preferred, None);
                    }
                }
                let records = diff(&image, &next);
                let mut replayed = image.clone();
                for r in &records {
                    apply(&mut replayed, r);
                }
                proptest::prop_assert_eq!(&replayed, &next);
                for r in &records {
                    apply(&mut replayed, r);
                }
                proptest::prop_assert_eq!(&replayed, &next);
                proptest::prop_assert!(diff(&next, &next).is_empty());
                image = next;
            }
        }
    }
}
