//! The replica manager: which partitions this broker hosts, kept in step
//! with the metadata image, and the wake-up used by long-poll fetches.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::Notify;

use super::partition::Leadership;
use super::Partition;
use crate::config::{BrokerConfig, LogConfig};
use crate::controller::MetadataImage;
use crate::error::{Error, Result};
use crate::log::manager::{LogManager, TopicPartition};

pub struct ReplicaManager {
    logs: LogManager,
    /// The image last applied: tells a partition led elsewhere from an unknown one.
    image: RwLock<Arc<MetadataImage>>,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// Woken on every append so delayed fetches can re-check.
    appended: Notify,
}

impl ReplicaManager {
    pub fn new(logs: LogManager) -> ReplicaManager {
        ReplicaManager {
            logs,
            image: RwLock::new(Arc::new(MetadataImage::default())),
            partitions: RwLock::new(HashMap::new()),
            appended: Notify::new(),
        }
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

    pub fn all(&self) -> Vec<Arc<Partition>> {
        let mut v: Vec<_> = self.partitions.read().values().cloned().collect();
        v.sort_by(|a, b| a.tp.cmp(&b.tp));
        v
    }

    pub fn notify_appended(&self) {
        self.appended.notify_waiters();
    }

    pub fn appended(&self) -> &Notify {
        &self.appended
    }

    /// Brings hosted partitions in line with the image: opens new ones, drops
    /// deleted ones and hands changed topic configs to their logs.
    pub fn apply(&self, image: &MetadataImage, broker: &BrokerConfig) -> Result<()> {
        *self.image.write() = Arc::new(image.clone());
        // Partitions this broker is a replica of: topic id, log config, leadership.
        let mut wanted: HashMap<TopicPartition, (uuid::Uuid, Arc<LogConfig>, Leadership)> = HashMap::new();
        for topic in image.topics.values() {
            let mut effective = broker.clone();
            for (k, v) in &image.broker_overrides {
                let _ = effective.set(k, v);
            }
            let config = Arc::new(LogConfig::with_overrides(&effective, &topic.configs)?);
            // This broker keeps a log for each partition it is a replica of.
            for p in (0..topic.partitions).filter(|p| topic.replicas(*p).contains(&broker.node_id)) {
                let state = topic.state(p);
                let leadership = Leadership {
                    leading: image.leader(topic, p) == Some(broker.node_id),
                    leader: image.leader(topic, p).unwrap_or(-1),
                    leader_epoch: state.map_or(0, |s| s.leader_epoch),
                    partition_epoch: state.map_or(0, |s| s.partition_epoch),
                    replicas: topic.replicas(p).to_vec(),
                    isr: state.map(|s| s.isr.clone()).unwrap_or_default(),
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
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (tp, partition) in existing {
            match wanted.get(&tp) {
                Some((id, _, _)) if *id == partition.topic_id => {}
                // Still a topic, but not a replica here: stop hosting, keep the data.
                _ if image.topic_by_id(partition.topic_id).is_some() => {
                    self.partitions.write().remove(&tp);
                    tracing::info!(%tp, "no longer a replica here; the log stays on disk");
                }
                _ => {
                    self.partitions.write().remove(&tp);
                    drop(partition);
                    self.logs.delete(&tp)?;
                    tracing::info!(%tp, "deleted partition");
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
            let log = self.logs.get_or_create(&tp, id, config)?;
            let partition = Partition::new(tp.clone(), id, log);
            partition.set_leadership(leadership);
            self.partitions.write().insert(tp, Arc::new(partition));
        }
        Ok(())
    }
}
