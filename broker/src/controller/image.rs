//! The metadata image and the pure changes made to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::leadership::{self, Election, PartitionState};
use super::placement;
use super::reassignment::{self, DrainCandidate, PartitionReplicas, Reassignment};
use crate::config::{BrokerConfig, LogConfig};
use crate::error::{Error, Result};

/// Kafka's limit on topic name length.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Broker configs that may change at run time (Kafka's cluster-wide dynamic configs).
pub use fjord_proto::DYNAMIC_BROKER_CONFIGS;

/// Kafka's dynamic broker configs that Fjord accepts and stores but does not
/// act on yet (no TLS/SASL listeners, thread pools, quotas or replication
/// throttles), so Kafka's tools and operators that set them are not refused.
pub const KAFKA_DYNAMIC_BROKER_CONFIGS_NOT_ACTED_ON: &[&str] = &[
    "num.io.threads",
    "num.network.threads",
    "num.replica.fetchers",
    "num.recovery.threads.per.data.dir",
    "background.threads",
    "max.connections",
    "max.connections.per.ip",
    "max.connections.per.ip.overrides",
    "max.connection.creation.rate",
    "log.cleaner.threads",
    "log.cleaner.io.max.bytes.per.second",
    "log.cleaner.dedupe.buffer.size",
    "log.cleaner.io.buffer.size",
    "log.cleaner.io.buffer.load.factor",
    "log.cleaner.backoff.ms",
    "log.cleaner.min.cleanable.ratio",
    "log.cleaner.min.compaction.lag.ms",
    "log.cleaner.max.compaction.lag.ms",
    "log.preallocate",
    "replica.alter.log.dirs.io.max.bytes.per.second",
    "metric.reporters",
    "producer.id.expiration.ms",
    "transaction.partition.verification.enable",
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
];

/// Kafka's per-broker configs: refused at the cluster-wide default entity
/// ("broker id must be specified"), as Kafka does.
const PER_BROKER_ONLY: &[&str] = &["listeners", "advertised.listeners", "listener.security.protocol.map"];

/// Whether Kafka accepts `name` as a dynamic broker config that Fjord stores
/// without acting on it; Err for names Kafka would refuse at this entity.
pub fn kafka_only_broker_config(name: &str, default_entity: bool) -> Result<bool> {
    // Per-listener configs: listener.name.<listener>.<ssl.*|sasl.*|connection limits>.
    let listener_config = name.strip_prefix("listener.name.").map(|rest| {
        rest.split_once('.').is_some_and(|(listener, config)| {
            !listener.is_empty()
                && listener
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
                && (config.starts_with("ssl.")
                    || config.starts_with("sasl.")
                    || matches!(
                        config,
                        "max.connections" | "max.connection.creation.rate" | "connections.max.reauth.ms"
                    ))
        })
    });
    let security = name.starts_with("ssl.") || name.starts_with("sasl.");
    let known = match listener_config {
        Some(valid) => {
            if !valid {
                return Err(Error::InvalidConfig(format!(
                    "'{name}' is not a per-listener config (listener.name.<listener>.<ssl.*|sasl.*|max.connections|...>)"
                )));
            }
            true
        }
        None => security || KAFKA_DYNAMIC_BROKER_CONFIGS_NOT_ACTED_ON.contains(&name),
    };
    // Keystores and listeners belong to one broker, as in Kafka.
    let per_broker = PER_BROKER_ONLY.contains(&name)
        || name.contains("ssl.keystore.")
        || name.contains("ssl.truststore.")
        || name.contains("ssl.key.password");
    if known && default_entity && per_broker {
        return Err(Error::InvalidRequest(format!(
            "cannot update '{name}' at the default cluster level, broker id must be specified"
        )));
    }
    Ok(known)
}

/// Most partitions one topic may have (CreateTopics, CreatePartitions): a
/// count from the network must not make the broker open millions of logs.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Topic-level overrides only; defaults come from the broker.
    pub configs: BTreeMap<String, String>,
    /// Replicas of each partition, by index; the first is the preferred leader.
    #[serde(default)]
    pub assignments: Vec<Vec<i32>>,
    /// Leader, epochs and ISR of each partition, by index.
    #[serde(default)]
    pub states: Vec<PartitionState>,
    /// Reassignments in progress, by partition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reassigning: BTreeMap<i32, Reassignment>,
}

impl TopicImage {
    /// The replicas of a partition (empty for an unknown partition).
    pub fn replicas(&self, partition: i32) -> &[i32] {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.assignments.get(p))
            .map_or(&[], Vec::as_slice)
    }

    pub fn state(&self, partition: i32) -> Option<&PartitionState> {
        usize::try_from(partition).ok().and_then(|p| self.states.get(p))
    }
}

/// A broker as registered with the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub id: i32,
    /// New on every start of the broker process.
    pub incarnation_id: Uuid,
    /// The Kafka listener clients are told about.
    pub host: String,
    pub port: i32,
    /// The admin gRPC listener (also the quorum's).
    pub admin: String,
    #[serde(default)]
    pub rack: String,
    /// A fenced broker leads nothing: it missed its heartbeats or shut down.
    pub fenced: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub cluster_id: String,
    #[serde(default)]
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    /// Each topic behind its own `Arc`: an image is copied and changed per
    /// topic, never as a whole (Kafka's images share what did not change).
    pub topics: BTreeMap<String, Arc<TopicImage>>,
    pub next_producer_id_block: i64,
    pub broker_overrides: BTreeMap<String, String>,
    /// Kafka dynamic broker configs stored but not acted on (see
    /// [`KAFKA_DYNAMIC_BROKER_CONFIGS_NOT_ACTED_ON`]).
    #[serde(default)]
    pub kafka_only_broker_overrides: BTreeMap<String, String>,
}

/// One IncrementalAlterConfigs operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigOp {
    pub name: String,
    pub op: OpType,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpType {
    Set,
    Delete,
    Append,
    Subtract,
}

impl OpType {
    pub fn from_code(code: i8) -> Option<OpType> {
        Some(match code {
            0 => OpType::Set,
            1 => OpType::Delete,
            2 => OpType::Append,
            3 => OpType::Subtract,
            _ => return None,
        })
    }
}

/// Kafka's topic name rules: 1-249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidTopic("topic name is empty".into()));
    }
    if name == "." || name == ".." {
        return Err(Error::InvalidTopic(format!("topic name cannot be '{name}'")));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(Error::InvalidTopic(format!(
            "topic name is longer than {MAX_TOPIC_NAME_LEN} characters"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::InvalidTopic(format!(
            "topic name '{name}' contains illegal character '{c}'"
        )));
    }
    Ok(())
}

/// Applies list-valued APPEND/SUBTRACT like Kafka (comma-separated lists).
fn apply_op(current: Option<&String>, op: &ConfigOp) -> Option<String> {
    let value = op.value.clone().unwrap_or_default();
    let list = |s: Option<&String>| -> Vec<String> {
        s.map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default()
    };
    match op.op {
        OpType::Set => Some(value),
        OpType::Delete => None,
        OpType::Append => {
            let mut items = list(current);
            for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                if !items.iter().any(|i| i == v) {
                    items.push(v.to_string());
                }
            }
            Some(items.join(","))
        }
        OpType::Subtract => {
            let remove: Vec<&str> = value.split(',').map(str::trim).collect();
            Some(
                list(current)
                    .into_iter()
                    .filter(|i| !remove.contains(&i.as_str()))
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
    }
}

impl MetadataImage {
    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicImage> {
        self.topics.values().map(|t| &**t).find(|t| t.id == id)
    }

    /// CreateTopics on this image: the topic added (see [`Self::new_topic`]).
    pub fn create_topic(
        &mut self,
        broker: &BrokerConfig,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        assignments: Option<Vec<Vec<i32>>>,
    ) -> Result<TopicImage> {
        let topic = self.new_topic(broker, name, partitions, replication_factor, configs, assignments)?;
        self.topics.insert(name.to_string(), Arc::new(topic.clone()));
        Ok(topic)
    }

    /// A new topic, its replicas placed over the live brokers, or as
    /// `assignments` names them (then `partitions` and `replication_factor`
    /// follow from it). The image is left as it is.
    pub fn new_topic(
        &self,
        broker: &BrokerConfig,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        assignments: Option<Vec<Vec<i32>>>,
    ) -> Result<TopicImage> {
        validate_topic_name(name)?;
        if self.topics.contains_key(name) {
            return Err(Error::TopicAlreadyExists(name.to_string()));
        }
        // '.' and '_' collide in metric names, so Kafka refuses such pairs.
        let normalized = name.replace('.', "_");
        if let Some(other) = self.topics.keys().find(|t| t.replace('.', "_") == normalized) {
            return Err(Error::InvalidTopic(format!(
                "topic '{name}' collides with existing topic '{other}'"
            )));
        }
        if let Some(given) = &assignments {
            let registered: Vec<i32> = if self.brokers.is_empty() {
                vec![broker.node_id]
            } else {
                self.brokers.keys().copied().collect()
            };
            placement::validate(given, &registered)?;
        }
        let partitions = match (&assignments, partitions) {
            (Some(given), _) => given.len() as i32,
            (None, -1) => broker.num_partitions,
            (None, n) => n,
        };
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(Error::InvalidPartitions(format!(
                "number of partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, got {partitions}"
            )));
        }
        let (replication_factor, assignments) = match assignments {
            Some(given) => (given[0].len() as i16, given),
            None => {
                let rf = if replication_factor == -1 {
                    broker.default_replication_factor as i16
                } else {
                    replication_factor
                };
                let placed = placement::assign(
                    &self.placement_candidates(broker),
                    0,
                    partitions,
                    rf,
                    placement::start_for(name),
                )?;
                (rf, placed)
            }
        };
        LogConfig::with_overrides(broker, &configs)?;
        let states = assignments
            .iter()
            .map(|replicas| PartitionState::initial(replicas, |id| self.is_live(id)))
            .collect();
        let topic = TopicImage {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            replication_factor,
            configs,
            assignments,
            states,
            reassigning: BTreeMap::new(),
        };
        Ok(topic)
    }

    pub fn delete_topic(&mut self, name: &str) -> Result<TopicImage> {
        self.topics
            .remove(name)
            .map(Arc::unwrap_or_clone)
            .ok_or(Error::UnknownTopicOrPartition)
    }

    /// A copy holding the brokers, configs and counters but only the named
    /// topics: the part of the image an operation on those topics changes.
    pub fn scoped_to<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> MetadataImage {
        MetadataImage {
            cluster_id: self.cluster_id.clone(),
            brokers: self.brokers.clone(),
            topics: topics
                .into_iter()
                .filter_map(|name| Some((name.to_string(), self.topics.get(name)?.clone())))
                .collect(),
            next_producer_id_block: self.next_producer_id_block,
            broker_overrides: self.broker_overrides.clone(),
            kafka_only_broker_overrides: self.kafka_only_broker_overrides.clone(),
        }
    }

    /// The unfenced brokers new replicas may go to; before any broker has
    /// registered (the quorum's first moments), the node making the change.
    pub fn placement_candidates(&self, broker: &BrokerConfig) -> Vec<placement::Candidate> {
        let live: Vec<placement::Candidate> = self
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| placement::Candidate {
                id: b.id,
                rack: b.rack.clone(),
            })
            .collect();
        if live.is_empty() && self.brokers.is_empty() {
            return vec![placement::Candidate {
                id: broker.node_id,
                rack: broker.broker_rack.clone(),
            }];
        }
        live
    }

    /// The partition's leader, as the controller last elected it.
    /// Registered brokers not fenced, at least 1: the most replicas an
    /// internal topic is created with (a single node gets one).
    pub fn live_broker_count(&self) -> usize {
        self.brokers.values().filter(|b| !b.fenced).count().max(1)
    }

    pub fn leader(&self, topic: &TopicImage, partition: i32) -> Option<i32> {
        topic.state(partition)?.leader()
    }

    /// AlterPartition on this image: the partition's state replaced (see
    /// [`Self::altered_partition`]).
    pub fn alter_partition(
        &mut self,
        topic: &str,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: &[i32],
    ) -> Result<PartitionState> {
        let next = self.altered_partition(topic, partition, leader, leader_epoch, partition_epoch, isr)?;
        self.set_partition_state(topic, partition, next.clone());
        Ok(next)
    }

    /// Replaces one partition's state; copies only its topic.
    pub fn set_partition_state(&mut self, topic: &str, partition: i32, state: PartitionState) {
        if let Some(slot) = self
            .topics
            .get_mut(topic)
            .and_then(|t| Arc::make_mut(t).states.get_mut(usize::try_from(partition).ok()?))
        {
            *slot = state;
        }
    }

    /// AlterPartition: the leader's new ISR for a partition, when it names
    /// the current leader and epochs, keeps the leader, and adds only live
    /// replicas. Answers the partition's next state; the image is left as it is.
    pub fn altered_partition(
        &self,
        topic: &str,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: &[i32],
    ) -> Result<PartitionState> {
        let live: Vec<i32> = self.brokers.values().filter(|b| !b.fenced).map(|b| b.id).collect();
        let anyone = self.brokers.is_empty();
        let t = self.topics.get(topic).ok_or(Error::UnknownTopicOrPartition)?;
        let replicas = t.replicas(partition);
        let mut state = t.state(partition).ok_or(Error::UnknownTopicOrPartition)?.clone();
        if state.leader != leader || state.leader_epoch != leader_epoch {
            return Err(Error::FencedLeaderEpoch(format!(
                "{topic}-{partition}: leader {leader} epoch {leader_epoch} is not the current leader {} epoch {}",
                state.leader, state.leader_epoch
            )));
        }
        if state.partition_epoch != partition_epoch {
            return Err(Error::InvalidUpdateVersion(format!(
                "{topic}-{partition}: partition epoch {partition_epoch} is not the current {}",
                state.partition_epoch
            )));
        }
        if !isr.contains(&leader) || isr.iter().any(|r| !replicas.contains(r)) {
            return Err(Error::InvalidRequest(format!(
                "{topic}-{partition}: ISR {isr:?} must hold the leader and only replicas {replicas:?}"
            )));
        }
        if let Some(r) = isr
            .iter()
            .find(|r| !(state.isr.contains(r) || anyone || live.contains(r)))
        {
            return Err(Error::InvalidRequest(format!(
                "{topic}-{partition}: broker {r} is fenced and cannot join the ISR"
            )));
        }
        if state.isr != isr {
            state.isr = isr.to_vec();
            state.partition_epoch += 1;
        }
        Ok(state)
    }

    /// How many partitions broker `id` leads now.
    pub fn leader_count(&self, id: i32) -> usize {
        self.topics
            .values()
            .flat_map(|t| &t.states)
            .filter(|s| s.leader == id)
            .count()
    }

    /// How many partitions broker `id` holds a replica of.
    pub fn replica_count(&self, id: i32) -> usize {
        self.topics
            .values()
            .flat_map(|t| &t.assignments)
            .filter(|r| r.contains(&id))
            .count()
    }

    /// Whether a broker may lead or be in sync: registered and unfenced.
    /// Before any broker has registered (a quorum's first moments, or an image
    /// from a single node), every replica counts as live.
    pub fn is_live(&self, id: i32) -> bool {
        match self.brokers.get(&id) {
            Some(b) => !b.fenced,
            None => self.brokers.is_empty(),
        }
    }

    /// Runs an election on every partition (after brokers were fenced or
    /// unfenced, or to restore preferred leaders). `unclean` is the broker
    /// default of unclean.leader.election.enable; topics may override it.
    /// Answers how many partitions changed.
    pub fn elect_leaders(
        &mut self,
        broker: &BrokerConfig,
        election: Election,
        only: Option<&[(String, i32)]>,
    ) -> usize {
        let elected = self.elections(broker, election, only, &self.brokers);
        let changed = elected.len();
        for (topic, partition, state) in elected {
            self.set_partition_state(&topic, partition, state);
        }
        changed
    }

    /// The partitions an election changes, with their next states, were the
    /// brokers as `brokers` has them (a registration or fencing about to be
    /// written). The image is left as it is.
    pub fn elections(
        &self,
        broker: &BrokerConfig,
        election: Election,
        only: Option<&[(String, i32)]>,
        brokers: &BTreeMap<i32, BrokerRegistration>,
    ) -> Vec<(String, i32, PartitionState)> {
        let live: std::collections::BTreeSet<i32> = brokers.values().filter(|b| !b.fenced).map(|b| b.id).collect();
        let anyone = brokers.is_empty();
        let is_live = |id: i32| anyone || live.contains(&id);
        let only: Option<std::collections::BTreeSet<(&str, i32)>> =
            only.map(|only| only.iter().map(|(t, p)| (t.as_str(), *p)).collect());
        let mut changed = Vec::new();
        for topic in self.topics.values() {
            let unclean = LogConfig::with_overrides(broker, &topic.configs)
                .map_or(broker.unclean_leader_election_enable, |c| {
                    c.unclean_leader_election_enable
                });
            for p in 0..topic.partitions {
                if only
                    .as_ref()
                    .is_some_and(|only| !only.contains(&(topic.name.as_str(), p)))
                {
                    continue;
                }
                let (Some(replicas), Some(state)) = (topic.assignments.get(p as usize), topic.states.get(p as usize))
                else {
                    continue;
                };
                if let Some(next) = leadership::elect(replicas, state, is_live, unclean, election) {
                    changed.push((topic.name.clone(), p, next));
                }
            }
        }
        changed
    }

    /// The partitions whose preferred leader should lead again: those of every
    /// broker whose leader imbalance is above `percent` (Kafka's
    /// leader.imbalance.per.broker.percentage), where that broker is live and
    /// in sync.
    pub fn preferred_leader_moves(&self, percent: i32) -> Vec<(String, i32)> {
        // Per preferred broker: partitions it is preferred for, of those it
        // leads, and the ones it could take back.
        #[derive(Default)]
        struct Preferred {
            of: usize,
            leading: usize,
            movable: Vec<(String, i32)>,
        }
        let mut per_broker: BTreeMap<i32, Preferred> = BTreeMap::new();
        for topic in self.topics.values() {
            for p in 0..topic.partitions {
                let (Some(&preferred), Some(state)) = (topic.replicas(p).first(), topic.state(p)) else {
                    continue;
                };
                let entry = per_broker.entry(preferred).or_default();
                entry.of += 1;
                if state.leader == preferred {
                    entry.leading += 1;
                } else if self.is_live(preferred) && state.isr.contains(&preferred) {
                    entry.movable.push((topic.name.clone(), p));
                }
            }
        }
        per_broker
            .into_values()
            .filter(|b| leadership::imbalance_percent(b.of, b.leading) > percent.max(0) as usize)
            .flat_map(|b| b.movable)
            .collect()
    }

    /// AlterPartitionReassignments for one partition (see `reassignment.rs`):
    /// start or replace a reassignment to `target`, or cancel (`None`).
    pub fn alter_reassignment(
        &mut self,
        topic: &str,
        partition: i32,
        target: Option<&[i32]>,
        allow_rf_change: bool,
    ) -> Result<()> {
        let registered: Vec<i32> = self.brokers.keys().copied().collect();
        let live: Vec<i32> = registered.iter().copied().filter(|id| self.is_live(*id)).collect();
        self.with_partition_replicas(topic, partition, |p| {
            p.alter(target, allow_rf_change, &registered, |id| live.contains(&id))
        })
    }

    /// Completes the partition's reassignment once every target replica is
    /// in sync (after an ISR change). Answers whether it did.
    pub fn maybe_complete_reassignment(&mut self, topic: &str, partition: i32) -> bool {
        let live: Vec<i32> = self.brokers.keys().copied().filter(|id| self.is_live(*id)).collect();
        let anyone = self.brokers.is_empty();
        self.with_partition_replicas(topic, partition, |p| {
            Ok(p.maybe_complete(|id| anyone || live.contains(&id)))
        })
        .unwrap_or(false)
    }

    /// One partition's replicas, state and reassignment, changed by `f`.
    fn with_partition_replicas<T>(
        &mut self,
        topic: &str,
        partition: i32,
        f: impl FnOnce(&mut PartitionReplicas<'_>) -> Result<T>,
    ) -> Result<T> {
        let t = Arc::make_mut(self.topics.get_mut(topic).ok_or(Error::UnknownTopicOrPartition)?);
        let p = usize::try_from(partition)
            .ok()
            .filter(|p| *p < t.assignments.len() && *p < t.states.len())
            .ok_or(Error::UnknownTopicOrPartition)?;
        let mut moving = t.reassigning.remove(&partition);
        let result = f(&mut PartitionReplicas {
            replicas: &mut t.assignments[p],
            state: &mut t.states[p],
            moving: &mut moving,
        });
        if let Some(r) = moving {
            t.reassigning.insert(partition, r);
        }
        if t.reassigning.is_empty() {
            // Done moving: the factor is what the partitions now have.
            t.replication_factor = t.assignments.iter().map(Vec::len).max().unwrap_or(0) as i16;
        }
        result
    }

    /// Reassignments in progress: (topic, partition, reassignment).
    pub fn reassignments(&self) -> Vec<(&str, i32, &Reassignment)> {
        self.topics
            .values()
            .flat_map(|t| t.reassigning.iter().map(move |(p, r)| (t.name.as_str(), *p, r)))
            .collect()
    }

    /// Targets that move every replica off `broker` (see `reassignment::drain_plan`).
    pub fn drain_plan(&self, broker: i32) -> Result<Vec<(String, i32, Vec<i32>)>> {
        let rack = self.brokers.get(&broker).map(|b| b.rack.as_str()).unwrap_or("");
        let candidates: Vec<DrainCandidate> = self
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| DrainCandidate {
                id: b.id,
                rack: b.rack.clone(),
                load: self.replica_count(b.id),
            })
            .collect();
        let partitions = self.topics.values().flat_map(|t| {
            t.assignments.iter().enumerate().map(move |(p, replicas)| {
                let p = p as i32;
                let moving_to = t.reassigning.get(&p).map(|r| r.target.as_slice());
                (t.name.as_str(), p, replicas.as_slice(), moving_to)
            })
        });
        reassignment::drain_plan(broker, rack, &candidates, partitions)
    }

    /// Fills in partition states an older image lacks: each partition led by
    /// its first replica, which is its ISR.
    pub fn fill_partition_states(&mut self) {
        for topic in self
            .topics
            .values_mut()
            .filter(|t| t.states.len() < t.assignments.len())
        {
            let topic = Arc::make_mut(topic);
            let from = topic.states.len();
            for p in from..topic.assignments.len() {
                let state = PartitionState::legacy(&topic.assignments[p]);
                topic.states.push(state);
            }
        }
    }

    pub fn create_partitions(&mut self, broker: &BrokerConfig, name: &str, count: i32) -> Result<()> {
        self.create_partitions_with(broker, name, count, None)
    }

    /// CreatePartitions, the new partitions' replicas placed over the live
    /// brokers or as `assignments` names them (one list per new partition, as
    /// many replicas as the topic's partitions have).
    pub fn create_partitions_with(
        &mut self,
        broker: &BrokerConfig,
        name: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
    ) -> Result<()> {
        let registered: Vec<i32> = if self.brokers.is_empty() {
            vec![broker.node_id]
        } else {
            self.brokers.keys().copied().collect()
        };
        let candidates = self.placement_candidates(broker);
        let live: Vec<i32> = candidates.iter().map(|c| c.id).collect();
        let topic = Arc::make_mut(self.topics.get_mut(name).ok_or(Error::UnknownTopicOrPartition)?);
        if count < topic.partitions {
            return Err(Error::InvalidPartitions(format!(
                "topic currently has {} partitions, which is higher than the requested {count}",
                topic.partitions
            )));
        }
        if count > MAX_PARTITIONS_PER_TOPIC {
            return Err(Error::InvalidPartitions(format!(
                "a topic has at most {MAX_PARTITIONS_PER_TOPIC} partitions, asked for {count}"
            )));
        }
        if count == topic.partitions {
            return Err(Error::InvalidPartitions(format!(
                "topic already has {count} partitions"
            )));
        }
        let rf = topic
            .assignments
            .first()
            .map_or(topic.replication_factor, |r| r.len() as i16);
        let added = match assignments {
            Some(given) => {
                let adding = (count - topic.partitions) as usize;
                if given.len() != adding {
                    return Err(Error::InvalidReplicaAssignment(format!(
                        "increasing the partitions by {adding} needs {adding} assignments, got {}",
                        given.len()
                    )));
                }
                placement::validate(&given, &registered)?;
                if given[0].len() != rf as usize {
                    return Err(Error::InvalidReplicaAssignment(format!(
                        "the topic's partitions have {rf} replicas, the assignments {}",
                        given[0].len()
                    )));
                }
                given
            }
            None => placement::assign(
                &candidates,
                topic.partitions,
                count - topic.partitions,
                rf,
                placement::start_for(name),
            )?,
        };
        topic.states.extend(
            added
                .iter()
                .map(|replicas| PartitionState::initial(replicas, |id| live.contains(&id))),
        );
        topic.assignments.extend(added);
        topic.partitions = count;
        Ok(())
    }

    pub fn alter_topic_configs(&mut self, broker: &BrokerConfig, name: &str, ops: &[ConfigOp]) -> Result<()> {
        let topic = self.topics.get(name).ok_or(Error::UnknownTopicOrPartition)?;
        let mut configs = topic.configs.clone();
        for op in ops {
            if !LogConfig::NAMES.contains(&op.name.as_str()) {
                return Err(Error::InvalidConfig(format!("unknown topic config '{}'", op.name)));
            }
            match apply_op(configs.get(&op.name), op) {
                Some(v) => configs.insert(op.name.clone(), v),
                None => configs.remove(&op.name),
            };
        }
        LogConfig::with_overrides(broker, &configs)?;
        if let Some(topic) = self.topics.get_mut(name) {
            Arc::make_mut(topic).configs = configs;
        }
        Ok(())
    }

    /// IncrementalAlterConfigs on the broker resource (`default_entity`: the
    /// cluster-wide default rather than this broker's id).
    pub fn alter_broker_configs(
        &mut self,
        broker: &BrokerConfig,
        ops: &[ConfigOp],
        default_entity: bool,
    ) -> Result<()> {
        let mut overrides = self.broker_overrides.clone();
        let mut kafka_only = self.kafka_only_broker_overrides.clone();
        for op in ops {
            let target = if DYNAMIC_BROKER_CONFIGS.contains(&op.name.as_str()) {
                &mut overrides
            } else if kafka_only_broker_config(&op.name, default_entity)? {
                &mut kafka_only
            } else {
                return Err(Error::InvalidConfig(format!(
                    "broker config '{}' cannot be updated dynamically",
                    op.name
                )));
            };
            match apply_op(target.get(&op.name), op) {
                Some(v) => target.insert(op.name.clone(), v),
                None => target.remove(&op.name),
            };
        }
        self.kafka_only_broker_overrides = kafka_only;
        let mut effective = broker.clone();
        for (k, v) in &overrides {
            effective.set(k, v)?;
        }
        effective.validate()?;
        // Every topic must stay valid under the new defaults.
        for t in self.topics.values() {
            LogConfig::with_overrides(&effective, &t.configs)?;
        }
        self.broker_overrides = overrides;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, op: OpType, value: Option<&str>) -> ConfigOp {
        ConfigOp {
            name: name.into(),
            op,
            value: value.map(String::from),
        }
    }

    #[test]
    fn kafka_dynamic_broker_configs_are_accepted_and_validated_as_kafka_does() {
        let broker = BrokerConfig::default();
        let mut image = MetadataImage::default();
        let set = |name: &str| op(name, OpType::Set, Some("x"));
        for name in [
            "sasl.enabled.mechanisms",
            "listener.name.internal.sasl.enabled.mechanisms",
            "listener.name.external.ssl.cipher.suites",
            "listener.name.internal.max.connections",
            "num.io.threads",
            "max.connections.per.ip",
        ] {
            image.alter_broker_configs(&broker, &[set(name)], true).unwrap();
            assert_eq!(image.kafka_only_broker_overrides[name], "x", "{name}");
        }
        assert!(
            image.broker_overrides.is_empty(),
            "kept apart from the configs Fjord acts on"
        );
        // Kafka's refusals.
        assert!(matches!(
            image.alter_broker_configs(&broker, &[set("listener.name.internal.retention.ms")], true),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            image.alter_broker_configs(&broker, &[set("no.such.config")], true),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            image.alter_broker_configs(&broker, &[set("listener.name.external.ssl.keystore.location")], true),
            Err(Error::InvalidRequest(_))
        ));
        image
            .alter_broker_configs(&broker, &[set("listener.name.external.ssl.keystore.location")], false)
            .unwrap();
        image
            .alter_broker_configs(&broker, &[op("num.io.threads", OpType::Delete, None)], true)
            .unwrap();
        assert!(!image.kafka_only_broker_overrides.contains_key("num.io.threads"));
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        for bad in ["", ".", "..", "a b", "ä", &"x".repeat(250)] {
            assert!(matches!(validate_topic_name(bad), Err(Error::InvalidTopic(_))), "{bad}");
        }
    }

    #[test]
    fn create_validates_and_defaults() {
        let broker = BrokerConfig {
            num_partitions: 3,
            ..BrokerConfig::default()
        };
        let mut image = MetadataImage::default();
        let t = image
            .create_topic(&broker, "a.b", -1, -1, BTreeMap::new(), None)
            .unwrap();
        assert_eq!((t.partitions, t.replication_factor), (3, 1));
        assert!(matches!(
            image.create_topic(&broker, "a.b", 1, 1, BTreeMap::new(), None),
            Err(Error::TopicAlreadyExists(_))
        ));
        assert!(matches!(
            image.create_topic(&broker, "a_b", 1, 1, BTreeMap::new(), None),
            Err(Error::InvalidTopic(_))
        ));
        assert!(matches!(
            image.create_topic(&broker, "c", 0, 1, BTreeMap::new(), None),
            Err(Error::InvalidPartitions(_))
        ));
        // Counts from the network are bounded: no stall opening millions of logs.
        assert!(matches!(
            image.create_topic(&broker, "c", MAX_PARTITIONS_PER_TOPIC + 1, 1, BTreeMap::new(), None),
            Err(Error::InvalidPartitions(_))
        ));
        assert!(matches!(
            image.create_partitions(&broker, "a.b", i32::MAX),
            Err(Error::InvalidPartitions(_))
        ));
        assert!(matches!(
            image.create_topic(&broker, "c", 1, 3, BTreeMap::new(), None),
            Err(Error::InvalidReplicationFactor(_))
        ));
        let bad = BTreeMap::from([("retention.ms".to_string(), "soon".to_string())]);
        assert!(matches!(
            image.create_topic(&broker, "c", 1, 1, bad, None),
            Err(Error::InvalidConfig(_))
        ));
        assert_eq!(image.topics.len(), 1);
    }

    fn registered(id: i32) -> BrokerRegistration {
        BrokerRegistration {
            id,
            incarnation_id: Uuid::new_v4(),
            host: "127.0.0.1".into(),
            port: 9092,
            admin: String::new(),
            rack: String::new(),
            fenced: false,
        }
    }

    /// Fencing a leader elects from the ISR; the preferred replica takes its
    /// partitions back once it is live and in sync and the imbalance is high.
    #[test]
    fn elections_follow_liveness_and_preference() {
        let broker = BrokerConfig::default();
        let mut image = MetadataImage::default();
        for id in [1, 2, 3] {
            image.brokers.insert(id, registered(id));
        }
        image
            .create_topic(&broker, "t", 2, 2, BTreeMap::new(), Some(vec![vec![1, 2], vec![2, 1]]))
            .unwrap();
        assert_eq!(image.leader(&image.topics["t"], 0), Some(1));
        // As replication will: both replicas in sync.
        for s in &mut Arc::make_mut(image.topics.get_mut("t").unwrap()).states {
            s.isr = vec![1, 2];
        }
        image.brokers.get_mut(&1).unwrap().fenced = true;
        assert_eq!(
            image.elect_leaders(&broker, Election::Failover, None),
            2,
            "p0 moves, p1 shrinks"
        );
        let t = &image.topics["t"];
        assert_eq!(
            (t.states[0].leader, t.states[0].leader_epoch, t.states[0].isr.clone()),
            (2, 1, vec![2])
        );
        assert_eq!((image.leader_count(2), image.leader_count(1)), (2, 0));
        // Back and (as replication will report) in sync again: preferred election.
        image.brokers.get_mut(&1).unwrap().fenced = false;
        assert!(
            image.preferred_leader_moves(10).is_empty(),
            "out of sync: nothing to move"
        );
        for s in &mut Arc::make_mut(image.topics.get_mut("t").unwrap()).states {
            s.isr = vec![2, 1];
        }
        assert_eq!(image.preferred_leader_moves(10), vec![("t".to_string(), 0)]);
        assert!(
            image.preferred_leader_moves(100).is_empty(),
            "within the allowed imbalance"
        );
        let moves = image.preferred_leader_moves(10);
        assert_eq!(image.elect_leaders(&broker, Election::Preferred, Some(&moves)), 1);
        assert_eq!(image.leader(&image.topics["t"], 0), Some(1));
        assert_eq!(image.topics["t"].states[0].leader_epoch, 2);
    }

    /// AlterPartition takes the leader's ISR only with the current epochs:
    /// a stale leader cannot overwrite a newer ISR; fenced brokers cannot join.
    #[test]
    fn alter_partition_checks_epochs_and_members() {
        let broker = BrokerConfig::default();
        let mut image = MetadataImage::default();
        for id in [1, 2, 3] {
            image.brokers.insert(id, registered(id));
        }
        image.create_topic(&broker, "t", 1, 3, BTreeMap::new(), None).unwrap();
        let s = image.topics["t"].states[0].clone();
        assert_eq!(s.isr.len(), 3, "a new partition's live replicas are all in sync");
        let leader = s.leader;
        let shrunk: Vec<i32> = vec![leader];
        let next = image.alter_partition("t", 0, leader, 0, 0, &shrunk).unwrap();
        assert_eq!(
            (next.isr.clone(), next.partition_epoch, next.leader_epoch),
            (shrunk.clone(), 1, 0)
        );
        // The same request again is stale now.
        assert!(matches!(
            image.alter_partition("t", 0, leader, 0, 0, &s.isr),
            Err(Error::InvalidUpdateVersion(_))
        ));
        assert!(matches!(
            image.alter_partition("t", 0, leader, 7, 1, &s.isr),
            Err(Error::FencedLeaderEpoch(_))
        ));
        let other = s.isr.iter().copied().find(|r| *r != leader).unwrap();
        image.brokers.get_mut(&other).unwrap().fenced = true;
        assert!(matches!(
            image.alter_partition("t", 0, leader, 0, 1, &[leader, other]),
            Err(Error::InvalidRequest(_))
        ));
        assert!(
            matches!(
                image.alter_partition("t", 0, leader, 0, 1, &[other]),
                Err(Error::InvalidRequest(_))
            ),
            "the leader stays in its ISR"
        );
        assert_eq!(image.topics["t"].states[0].isr, shrunk, "nothing changed");
    }

    #[test]
    fn create_partitions_honours_and_checks_assignments() {
        let broker = BrokerConfig::default();
        let mut image = MetadataImage::default();
        for id in [1, 2, 3] {
            image.brokers.insert(id, registered(id));
        }
        image.create_topic(&broker, "t", 1, 2, BTreeMap::new(), None).unwrap();
        for bad in [
            vec![vec![1, 2]],                   // one assignment for two new partitions
            vec![vec![1, 2], vec![3, 3]],       // a broker twice
            vec![vec![1, 2], vec![3, 9]],       // an unknown broker
            vec![vec![1, 2, 3], vec![3, 2, 1]], // three replicas on a topic of two
        ] {
            assert!(
                matches!(
                    image.create_partitions_with(&broker, "t", 3, Some(bad.clone())),
                    Err(Error::InvalidReplicaAssignment(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(image.topics["t"].partitions, 1, "nothing changed");
        image
            .create_partitions_with(&broker, "t", 3, Some(vec![vec![3, 1], vec![2, 3]]))
            .unwrap();
        let t = &image.topics["t"];
        assert_eq!(t.assignments[1..], [vec![3, 1], vec![2, 3]]);
        assert_eq!((t.states[1].leader, t.states[2].leader), (3, 2));
    }

    #[test]
    fn partitions_only_grow() {
        let broker = BrokerConfig::default();
        let mut image = MetadataImage::default();
        image.create_topic(&broker, "t", 2, 1, BTreeMap::new(), None).unwrap();
        assert!(image.create_partitions(&broker, "t", 1).is_err());
        assert!(image.create_partitions(&broker, "t", 2).is_err());
        image.create_partitions(&broker, "t", 4).unwrap();
        assert_eq!(image.topics["t"].partitions, 4);
        assert!(matches!(
            image.create_partitions(&broker, "nope", 4),
            Err(Error::UnknownTopicOrPartition)
        ));
    }

    #[test]
    fn incremental_config_ops() {
        let broker = BrokerConfig::default();
        let mut image = MetadataImage::default();
        image.create_topic(&broker, "t", 1, 1, BTreeMap::new(), None).unwrap();
        image
            .alter_topic_configs(
                &broker,
                "t",
                &[
                    op("retention.ms", OpType::Set, Some("1000")),
                    op("cleanup.policy", OpType::Append, Some("compact")),
                ],
            )
            .unwrap();
        assert_eq!(image.topics["t"].configs["cleanup.policy"], "compact");
        image
            .alter_topic_configs(&broker, "t", &[op("cleanup.policy", OpType::Append, Some("delete"))])
            .unwrap();
        assert_eq!(image.topics["t"].configs["cleanup.policy"], "compact,delete");
        image
            .alter_topic_configs(&broker, "t", &[op("cleanup.policy", OpType::Subtract, Some("compact"))])
            .unwrap();
        assert_eq!(image.topics["t"].configs["cleanup.policy"], "delete");
        image
            .alter_topic_configs(&broker, "t", &[op("retention.ms", OpType::Delete, None)])
            .unwrap();
        assert!(!image.topics["t"].configs.contains_key("retention.ms"));
        assert!(image
            .alter_topic_configs(&broker, "t", &[op("bogus", OpType::Set, Some("1"))])
            .is_err());
        assert!(image
            .alter_topic_configs(&broker, "t", &[op("segment.bytes", OpType::Set, Some("-5"))])
            .is_err());
    }

    #[test]
    fn only_dynamic_broker_configs_change() {
        let broker = BrokerConfig::default();
        let mut image = MetadataImage::default();
        image
            .alter_broker_configs(&broker, &[op("log.retention.ms", OpType::Set, Some("5000"))], true)
            .unwrap();
        assert_eq!(image.broker_overrides["log.retention.ms"], "5000");
        assert!(image
            .alter_broker_configs(&broker, &[op("node.id", OpType::Set, Some("3"))], true)
            .is_err());
    }
}
