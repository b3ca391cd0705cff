//! The replica manager: which partitions this broker hosts, kept in step
//! with the metadata image, and the wake-up used by long-poll fetches.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::Notify;

use super::Partition;
use crate::config::{BrokerConfig, LogConfig};
use crate::controller::MetadataImage;
use crate::error::{Error, Result};
use crate::log::manager::{LogManager, TopicPartition};

pub struct ReplicaManager {
    logs: LogManager,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// Woken on every append so delayed fetches can re-check.
    appended: Notify,
}

impl ReplicaManager {
    pub fn new(logs: LogManager) -> ReplicaManager {
        ReplicaManager {
            logs,
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

    pub fn get(&self, topic: &str, partition: i32) -> Result<Arc<Partition>> {
        self.partition(&TopicPartition::new(topic, partition))
            .ok_or(Error::UnknownTopicOrPartition)
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
        let mut wanted: HashMap<TopicPartition, (uuid::Uuid, Arc<LogConfig>)> = HashMap::new();
        for topic in image.topics.values() {
            let mut effective = broker.clone();
            for (k, v) in &image.broker_overrides {
                let _ = effective.set(k, v);
            }
            let config = Arc::new(LogConfig::with_overrides(&effective, &topic.configs)?);
            for p in 0..topic.partitions {
                wanted.insert(TopicPartition::new(topic.name.clone(), p), (topic.id, config.clone()));
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
                Some((id, _)) if *id == partition.topic_id => {}
                _ => {
                    self.partitions.write().remove(&tp);
                    drop(partition);
                    self.logs.delete(&tp)?;
                    tracing::info!(%tp, "deleted partition");
                }
            }
        }
        for (tp, (id, config)) in wanted {
            if let Some(p) = self.partition(&tp) {
                if *p.log.config() != *config {
                    p.log.set_config(config);
                }
                continue;
            }
            let log = self.logs.get_or_create(&tp, id, config)?;
            self.partitions
                .write()
                .insert(tp.clone(), Arc::new(Partition::new(tp, id, log, broker.node_id)));
        }
        Ok(())
    }
}
