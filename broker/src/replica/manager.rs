//! The replica manager: which partitions this broker hosts, kept in step
//! with the metadata image.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;

use super::partition::Leadership;
use super::throttle::ReplicationThrottle;
use super::Partition;
use crate::config::{BrokerConfig, LogConfig};
use crate::controller::{ImageChanges, MetadataImage, TopicImage};
use crate::error::{Error, Result};
use crate::log::manager::{read_checkpoint, write_checkpoint, LogManager, TopicPartition};

/// Kafka's file of each partition's high watermark, so a restarted broker
/// does not expose records that were never committed.
pub const HIGH_WATERMARK_CHECKPOINT: &str = "replication-offset-checkpoint";

pub struct ReplicaManager {
    logs: LogManager,
    /// The image last applied: tells a partition led elsewhere from an unknown one.
    image: RwLock<Arc<MetadataImage>>,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// High watermarks from the checkpoint, taken by partitions as they open.
    restored_hw: parking_lot::Mutex<HashMap<TopicPartition, i64>>,
    /// Bytes per second served to replicas a reassignment adds.
    throttle: ReplicationThrottle,
    /// Bytes per second fetched for this broker's replicas a reassignment adds.
    follower_throttle: ReplicationThrottle,
    /// Applying an image and deleting stray directories exclude each other:
    /// a partition the next image assigns here is never taken for a stray.
    applying: parking_lot::Mutex<()>,
    /// Partitions the last change failed to apply to, tried with the next.
    retry: parking_lot::Mutex<HashSet<TopicPartition>>,
}

impl ReplicaManager {
    pub fn new(logs: LogManager) -> ReplicaManager {
        let restored = read_checkpoint(&logs.dir().join(HIGH_WATERMARK_CHECKPOINT)).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "unreadable high watermark checkpoint; partitions start at their log end");
            HashMap::new()
        });
        ReplicaManager {
            restored_hw: parking_lot::Mutex::new(restored),
            logs,
            image: RwLock::new(Arc::new(MetadataImage::default())),
            partitions: RwLock::new(HashMap::new()),
            throttle: ReplicationThrottle::default(),
            follower_throttle: ReplicationThrottle::default(),
            applying: parking_lot::Mutex::new(()),
            retry: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    pub fn throttle(&self) -> &ReplicationThrottle {
        &self.throttle
    }

    /// `follower.replication.throttled.rate`, for the fetchers.
    pub fn follower_throttle(&self) -> &ReplicationThrottle {
        &self.follower_throttle
    }

    pub fn logs(&self) -> &LogManager {
        &self.logs
    }

    pub fn partition(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.partitions.read().get(tp).cloned()
    }

    /// A partition this broker leads; NOT_LEADER_OR_FOLLOWER for one another
    /// broker leads (or none does now), UNKNOWN_TOPIC_OR_PARTITION otherwise.
    pub fn get(&self, topic: &str, partition: i32) -> Result<Arc<Partition>> {
        if let Some(p) = self
            .partition(&TopicPartition::new(topic, partition))
            .filter(|p| p.is_leading())
        {
            return Ok(p);
        }
        let image = self.image.read().clone();
        let known = image
            .topics
            .get(topic)
            .is_some_and(|t| (0..t.partitions).contains(&partition));
        Err(if known {
            Error::NotLeaderOrFollower
        } else {
            Error::UnknownTopicOrPartition
        })
    }

    /// The partitions this broker follows (hosts but does not lead), with
    /// their live leader; unordered, cheap enough for every fetch round.
    pub fn followed(&self, node_id: i32) -> Vec<(i32, Arc<Partition>)> {
        self.partitions
            .read()
            .values()
            .filter(|p| !p.is_leading())
            .map(|p| (p.leader(), p.clone()))
            .filter(|(leader, _)| *leader >= 0 && *leader != node_id)
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        let mut v: Vec<_> = self.partitions.read().values().cloned().collect();
        v.sort_by(|a, b| a.tp.cmp(&b.tp));
        v
    }

    /// Deletes stray partition directories (KIP-858): those no partition of
    /// the image assigns to this broker, because their topic was deleted or
    /// their replica reassigned elsewhere while this broker was down. Only
    /// once the broker has caught up with the metadata log (it is unfenced),
    /// so that the image says what is assigned now. Answers the directories
    /// deleted. Blocking (file deletion).
    pub fn delete_stray_logs(&self, node_id: i32) -> Result<Vec<String>> {
        let _applying = self.applying.lock();
        let image = self.image.read().clone();
        let mut deleted = Vec::new();
        for (dir, id) in self.logs.dirs_on_disk()? {
            let Some(tp) = TopicPartition::from_dir_name(&dir).filter(|tp| tp.dir_name() == dir) else {
                continue;
            };
            if self.partition(&tp).is_some() {
                continue;
            }
            let assigned = image.topic_by_id(id).is_some_and(|t| {
                t.name == tp.topic
                    && (0..t.partitions).contains(&tp.partition)
                    && t.replicas(tp.partition).contains(&node_id)
            });
            if assigned {
                continue;
            }
            self.logs.delete(&tp)?;
            tracing::info!(%dir, topic_id = %id, "deleted a stray partition directory (not assigned to this broker)");
            deleted.push(dir);
        }
        Ok(deleted)
    }

    /// DeleteRecords on a partition this broker leads: moves its log start
    /// to `offset` (-1: the high watermark). Its answer waits on the
    /// returned [`DelayedDeleteRecords`].
    pub fn delete_records(&self, topic: &str, partition: i32, offset: i64) -> Result<DelayedDeleteRecords> {
        let part = self.get(topic, partition)?;
        let leader_epoch = part.leader_epoch();
        let start = crate::blocking::blocking(|| {
            let start = part.delete_records_before(offset)?;
            // The new start holds across a crash of this broker too.
            self.logs.checkpoint()?;
            Ok::<_, Error>(start)
        })?;
        Ok(DelayedDeleteRecords {
            part,
            start,
            leader_epoch,
        })
    }

    /// Writes every hosted partition's high watermark (periodically and at shutdown).
    pub fn checkpoint_high_watermarks(&self) -> Result<()> {
        let entries = self
            .all()
            .into_iter()
            .map(|p| (p.tp.clone(), p.high_watermark()))
            .collect();
        write_checkpoint(&self.logs.dir().join(HIGH_WATERMARK_CHECKPOINT), &entries)?;
        Ok(())
    }

    /// Brings every hosted partition in line with the image (see [`Self::apply_changes`]).
    pub fn apply(&self, image: &MetadataImage, broker: &BrokerConfig) -> Vec<(TopicPartition, Error)> {
        self.apply_changes(&Arc::new(image.clone()), &ImageChanges::everything(), broker)
    }

    /// Brings the partitions a metadata change touched in line with the
    /// image: opens new ones, drops deleted ones, hands changed topic configs
    /// to their logs and new leadership to their replicas. The work follows
    /// the change, not the cluster's size. Each partition's change is applied
    /// on its own: one that fails (its log cannot be opened or deleted) is
    /// logged and answered, and the others still take their new leadership.
    /// The next change retries it.
    pub fn apply_changes(
        &self,
        image: &Arc<MetadataImage>,
        changes: &ImageChanges,
        broker: &BrokerConfig,
    ) -> Vec<(TopicPartition, Error)> {
        let _applying = self.applying.lock();
        *self.image.write() = image.clone();
        let retry = std::mem::take(&mut *self.retry.lock());
        let in_scope = |tp: &TopicPartition| changes.touches(&tp.topic, tp.partition) || retry.contains(tp);
        let topics: Vec<&Arc<TopicImage>> = if changes.everything {
            image.topics.values().collect()
        } else {
            let names: BTreeSet<&str> = changes
                .topics
                .iter()
                .chain(changes.partitions.iter().map(|(t, _)| t))
                .chain(retry.iter().map(|tp| &tp.topic))
                .map(String::as_str)
                .collect();
            names.into_iter().filter_map(|name| image.topics.get(name)).collect()
        };
        let mut failed = Vec::new();
        // Partitions this broker is a replica of: topic id, log config, leadership.
        let mut wanted: HashMap<TopicPartition, (uuid::Uuid, Arc<LogConfig>, Leadership)> = HashMap::new();
        let mut effective = broker.clone();
        for (k, v) in &image.broker_overrides {
            let _ = effective.set(k, v);
        }
        self.throttle.set_rate(effective.leader_replication_throttled_rate);
        self.follower_throttle
            .set_rate(effective.follower_replication_throttled_rate);
        for topic in topics {
            let mine = (0..topic.partitions).filter(|p| {
                topic.replicas(*p).contains(&broker.node_id) && in_scope(&TopicPartition::new(topic.name.clone(), *p))
            });
            let config = match LogConfig::with_overrides(&effective, &topic.configs) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    let e = Error::from(e);
                    failed.extend(mine.map(|p| {
                        (
                            TopicPartition::new(topic.name.clone(), p),
                            Error::InvalidConfig(e.to_string()),
                        )
                    }));
                    continue;
                }
            };
            // This broker keeps a log for each partition it is a replica of.
            for p in mine {
                let state = topic.state(p);
                let leader = image.leader(topic, p);
                let leadership = Leadership {
                    leading: leader == Some(broker.node_id),
                    leader: leader.unwrap_or(-1),
                    leader_epoch: state.map_or(0, |s| s.leader_epoch),
                    partition_epoch: state.map_or(0, |s| s.partition_epoch),
                    replicas: topic.replicas(p).to_vec(),
                    isr: state.map(|s| s.isr.clone()).unwrap_or_default(),
                    adding: topic.reassigning.get(&p).map(|r| r.adding()).unwrap_or_default(),
                    fenced: topic
                        .replicas(p)
                        .iter()
                        .copied()
                        .filter(|r| !image.is_live(*r))
                        .collect(),
                };
                wanted.insert(
                    TopicPartition::new(topic.name.clone(), p),
                    (topic.id, config.clone(), leadership),
                );
            }
        }
        let existing: Vec<(TopicPartition, Arc<Partition>)> = self
            .partitions
            .read()
            .iter()
            .filter(|(tp, _)| in_scope(tp))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (tp, partition) in existing {
            match wanted.get(&tp) {
                Some((id, _, _)) if *id == partition.topic_id => {}
                // Deleted, or reassigned away from this broker (Kafka's
                // StopReplica with delete): the replica and its log go.
                _ => {
                    let why = if image.topic_by_id(partition.topic_id).is_some() {
                        "no longer a replica here"
                    } else {
                        "topic deleted"
                    };
                    self.partitions.write().remove(&tp);
                    drop(partition);
                    match self.logs.delete(&tp) {
                        Ok(()) => tracing::info!(%tp, why, "deleted partition"),
                        Err(e) => failed.push((tp, e)),
                    }
                }
            }
        }
        for (tp, (id, config, leadership)) in wanted {
            if let Some(p) = self.partition(&tp) {
                if *p.log.config() != *config {
                    p.log.set_config(config);
                }
                p.set_leadership(leadership);
                continue;
            }
            let log = match self.logs.get_or_create(&tp, id, config) {
                Ok(log) => log,
                Err(e) => {
                    failed.push((tp, e));
                    continue;
                }
            };
            let hw = self.restored_hw.lock().remove(&tp);
            let partition = Partition::new(tp.clone(), id, log, hw);
            partition.set_leadership(leadership);
            self.partitions.write().insert(tp, Arc::new(partition));
        }
        for (tp, e) in &failed {
            tracing::error!(%tp, error = %e, "applying the metadata image to the partition failed; retried with the next change");
        }
        *self.retry.lock() = failed.iter().map(|(tp, _)| tp.clone()).collect();
        failed
    }
}

/// A DeleteRecords done on the leader, answered once every in-sync replica
/// has deleted up to the new log start (Kafka's DelayedDeleteRecords), so
/// that no failover serves the deleted records again.
pub struct DelayedDeleteRecords {
    part: Arc<Partition>,
    start: i64,
    leader_epoch: i32,
}

impl DelayedDeleteRecords {
    /// The low watermark once it reaches the new log start;
    /// REQUEST_TIMED_OUT at `deadline`, NOT_LEADER_OR_FOLLOWER if the term ends.
    pub async fn wait(self, deadline: tokio::time::Instant) -> Result<i64> {
        tokio::time::timeout_at(
            deadline,
            self.part.wait_for_low_watermark(self.start, self.leader_epoch),
        )
        .await
        .map_err(|_| Error::RequestTimedOut)?
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::controller::leadership::PartitionState;
    use crate::log::batch::tests::encode_batch;

    fn image(topic_id: uuid::Uuid, leader: i32, isr: Vec<i32>) -> MetadataImage {
        let mut image = MetadataImage::default();
        image.topics.insert(
            "t".into(),
            Arc::new(TopicImage {
                name: "t".into(),
                id: topic_id,
                partitions: 1,
                replication_factor: 2,
                configs: BTreeMap::new(),
                assignments: vec![vec![1, 0]],
                states: vec![PartitionState {
                    leader,
                    leader_epoch: 1,
                    partition_epoch: 1,
                    isr,
                }],
                reassigning: BTreeMap::new(),
            }),
        );
        image
    }

    /// A log left by an earlier topic of the same name (deleted and
    /// re-created while this broker was down) is deleted, not served as the
    /// new topic's, and its checkpointed log start does not carry over.
    #[test]
    fn a_log_of_an_earlier_topic_of_the_same_name_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let broker = BrokerConfig::default();
        let tp = TopicPartition::new("t", 0);
        let (old, new) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        {
            let logs = LogManager::open(dir.path()).unwrap();
            let log = logs
                .get_or_create(&tp, old, Arc::new(LogConfig::defaults_from(&broker)))
                .unwrap();
            for i in 0..10 {
                log.append_as_leader(&encode_batch(0, &[b"old"], 1000 + i), 0).unwrap();
            }
            log.delete_records_before(4, 10).unwrap();
            logs.shutdown().unwrap();
        }
        let replicas = ReplicaManager::new(LogManager::open(dir.path()).unwrap());
        assert!(replicas.apply(&image(new, 1, vec![1, 0]), &broker).is_empty());
        let part = replicas.partition(&tp).unwrap();
        assert_eq!((part.log.log_start_offset(), part.log.log_end_offset()), (0, 0));
        assert_eq!(replicas.logs().dirs_on_disk().unwrap(), vec![(tp.dir_name(), new)]);
    }

    /// A partition whose log cannot be opened does not keep the others of
    /// the image from taking their leadership; it is reported, and opened
    /// by a later image once it can be.
    #[test]
    fn a_failing_partition_does_not_stop_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let broker = BrokerConfig::default();
        let id = uuid::Uuid::new_v4();
        let mut two = image(id, 1, vec![1, 0]);
        let t = Arc::make_mut(two.topics.get_mut("t").unwrap());
        t.partitions = 2;
        t.assignments.push(vec![0, 1]);
        t.states.push(PartitionState {
            leader: 0,
            leader_epoch: 1,
            partition_epoch: 1,
            isr: vec![0, 1],
        });
        // A file where t-0's directory would be: its log cannot be created.
        std::fs::write(dir.path().join("t-0"), b"in the way").unwrap();
        let replicas = ReplicaManager::new(LogManager::open(dir.path()).unwrap());
        let failed = replicas.apply(&two, &broker);
        assert_eq!(
            failed.iter().map(|(tp, _)| tp.clone()).collect::<Vec<_>>(),
            vec![TopicPartition::new("t", 0)]
        );
        assert!(replicas.partition(&TopicPartition::new("t", 1)).unwrap().is_leading());
        std::fs::remove_file(dir.path().join("t-0")).unwrap();
        assert!(replicas.apply(&two, &broker).is_empty());
        assert!(replicas.partition(&TopicPartition::new("t", 0)).is_some());
    }

    /// Directories of partitions the image does not assign here (an old
    /// topic's, one reassigned away) are deleted; assigned ones stay.
    #[test]
    fn stray_partition_directories_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let broker = BrokerConfig::default();
        let (id, gone) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        {
            let logs = LogManager::open(dir.path()).unwrap();
            let config = Arc::new(LogConfig::defaults_from(&broker));
            logs.get_or_create(&TopicPartition::new("t", 0), id, config.clone())
                .unwrap();
            // t-5: no such partition now; old-0: a topic deleted meanwhile.
            logs.get_or_create(&TopicPartition::new("t", 5), id, config.clone())
                .unwrap();
            logs.get_or_create(&TopicPartition::new("old", 0), gone, config)
                .unwrap();
            logs.shutdown().unwrap();
        }
        let replicas = ReplicaManager::new(LogManager::open(dir.path()).unwrap());
        assert!(replicas.apply(&image(id, 1, vec![1, 0]), &broker).is_empty());
        let mut deleted = replicas.delete_stray_logs(broker.node_id).unwrap();
        deleted.sort();
        assert_eq!(deleted, vec!["old-0".to_string(), "t-5".to_string()]);
        assert_eq!(replicas.logs().dirs_on_disk().unwrap(), vec![("t-0".to_string(), id)]);
    }

    /// A restarted replica exposes only what was committed (its checkpointed
    /// high watermark), not its whole log; as sole ISR leader, all of it.
    #[test]
    fn a_restarted_replica_starts_at_its_checkpointed_high_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let broker = BrokerConfig::default();
        let tp = TopicPartition::new("t", 0);
        let id = uuid::Uuid::new_v4();
        let logs = LogManager::open(dir.path()).unwrap();
        let log = logs
            .get_or_create(&tp, id, Arc::new(LogConfig::defaults_from(&broker)))
            .unwrap();
        for i in 0..10 {
            log.append_as_leader(&encode_batch(0, &[b"v"], 1000 + i), 0).unwrap();
        }
        write_checkpoint(
            &dir.path().join(HIGH_WATERMARK_CHECKPOINT),
            &BTreeMap::from([(tp.clone(), 3)]),
        )
        .unwrap();
        let replicas = ReplicaManager::new(logs);
        assert!(replicas.apply(&image(id, 1, vec![1, 0]), &broker).is_empty());
        let part = replicas.partition(&tp).unwrap();
        assert_eq!((part.high_watermark(), part.log.log_end_offset()), (3, 10));
        assert!(replicas.apply(&image(id, 0, vec![0]), &broker).is_empty());
        assert_eq!(part.high_watermark(), 10, "the only in-sync replica commits its log");
        replicas.checkpoint_high_watermarks().unwrap();
        let written = read_checkpoint(&dir.path().join(HIGH_WATERMARK_CHECKPOINT)).unwrap();
        assert_eq!(written[&tp], 10);
    }
}
