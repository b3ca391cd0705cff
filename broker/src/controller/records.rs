//! The metadata log's typed records and the controller operations that make
//! them.
//!
//! The active controller turns an operation into records against its image
//! (`ops.rs`) and appends them. Every node applies the records to its own
//! image in log order. A record states a fact (it sets, never increments), so
//! applying it twice is harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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

/// What applied records changed, for those who act on parts of the image (a
/// broker's replicas, the coordinators): the cost of acting on a change
/// follows its size, not the cluster's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageChanges {
    /// Brokers, cluster-wide configs or the cluster id changed: every
    /// partition may be affected (liveness, effective configs).
    pub everything: bool,
    /// Topics created, changed as a whole, or removed.
    pub topics: BTreeSet<String>,
    /// Partitions whose leader, epochs or ISR changed.
    pub partitions: BTreeSet<(String, i32)>,
}

impl ImageChanges {
    /// Everything: a whole image taken in (a subscription, a snapshot).
    pub fn everything() -> ImageChanges {
        ImageChanges {
            everything: true,
            ..ImageChanges::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.everything && self.topics.is_empty() && self.partitions.is_empty()
    }

    /// Whether the change may affect this partition.
    pub fn touches(&self, topic: &str, partition: i32) -> bool {
        self.everything || self.topics.contains(topic) || self.partitions.contains(&(topic.to_string(), partition))
    }

    /// Whether the change may affect some partition of this topic.
    pub fn touches_topic(&self, topic: &str) -> bool {
        self.everything || self.topics.contains(topic) || self.partitions.iter().any(|(t, _)| t == topic)
    }

    /// Both changes, as one.
    pub fn merge(&mut self, other: ImageChanges) {
        self.everything |= other.everything;
        self.topics.extend(other.topics);
        self.partitions.extend(other.partitions);
    }
}

/// Applies one record to the image, noting what it changed. Copies only what
/// the record touches (one topic at most).
pub fn apply(image: &mut MetadataImage, record: &MetadataRecord, changes: &mut ImageChanges) {
    match record {
        MetadataRecord::ClusterId(id) => {
            image.cluster_id = id.clone();
            changes.everything = true;
        }
        MetadataRecord::Broker(b) => {
            image.brokers.insert(b.id, b.clone());
            changes.everything = true;
        }
        MetadataRecord::Topic(topic) => {
            image.topics.insert(topic.name.clone(), Arc::new(topic.clone()));
            changes.topics.insert(topic.name.clone());
        }
        MetadataRecord::PartitionChange {
            topic,
            partition,
            state,
        } => {
            image.set_partition_state(topic, *partition, state.clone());
            changes.partitions.insert((topic.clone(), *partition));
        }
        MetadataRecord::RemoveTopic(name) => {
            image.topics.remove(name);
            changes.topics.insert(name.clone());
        }
        MetadataRecord::BrokerOverrides { overrides, kafka_only } => {
            image.broker_overrides = overrides.clone();
            image.kafka_only_broker_overrides = kafka_only.clone();
            changes.everything = true;
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
    /// A leader's changes of its partitions' ISRs, all it has in one
    /// request (Kafka's AlterPartition). Each is refused unless it names the
    /// current leader, leader epoch and partition epoch: a stale leader
    /// cannot overwrite a newer ISR.
    AlterPartition {
        leader: i32,
        changes: Vec<IsrChange>,
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

/// One partition's ISR as its leader wants it (an item of AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrChange {
    pub topic: String,
    pub partition: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
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
    /// Per ISR change asked, in order: whether it was taken.
    Altered(Vec<std::result::Result<(), ControllerError>>),
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
    fn records_are_facts_and_say_what_they_changed() {
        let broker = BrokerConfig::default();
        let mut image = MetadataImage::default();
        image.create_topic(&broker, "t", 50, 1, BTreeMap::new(), None).unwrap();
        let mut state = image.topics["t"].states[7].clone();
        state.leader_epoch += 1;
        let record = MetadataRecord::PartitionChange {
            topic: "t".into(),
            partition: 7,
            state: state.clone(),
        };
        let before = image.clone();
        let mut changes = ImageChanges::default();
        apply(&mut image, &record, &mut changes);
        assert_eq!(image.topics["t"].states[7], state);
        assert_eq!(changes.partitions, BTreeSet::from([("t".to_string(), 7)]));
        assert!(!changes.everything && changes.topics.is_empty());
        assert!(changes.touches("t", 7) && !changes.touches("t", 8));
        // The image it was applied to shares nothing it changed.
        assert_eq!(before.topics["t"].states[7].leader_epoch + 1, state.leader_epoch);
        // Applying it again changes nothing.
        let once = image.clone();
        apply(&mut image, &record, &mut changes);
        assert_eq!(image, once);
        // A change for a partition that no longer exists is ignored.
        let mut gone = before.clone();
        gone.delete_topic("t").unwrap();
        apply(&mut gone, &record, &mut ImageChanges::default());
        assert!(gone.topics.is_empty());
        // A broker's change may touch every partition.
        let mut changes = ImageChanges::default();
        apply(&mut image, &MetadataRecord::ClusterId("c".into()), &mut changes);
        assert!(changes.everything && changes.touches("any", 3));
    }
}
