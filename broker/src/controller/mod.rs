//! Cluster metadata: topics, partitions, topic configs, producer id blocks.
//!
//! A single node is a quorum of one: the metadata image is committed by
//! writing it atomically to `__cluster_metadata/metadata.json` before it is
//! published to the replica manager. Validation and the image changes are
//! pure functions over [`MetadataImage`]; only `commit` touches the disk.

pub mod image;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::config::{BrokerConfig, LogConfig};
use crate::error::{Error, Result};
use crate::log::manager::write_atomically;
pub use image::{ConfigOp, MetadataImage, TopicImage};

const METADATA_DIR: &str = "__cluster_metadata";
const METADATA_FILE: &str = "metadata.json";
/// Producer ids handed out per block, as Kafka's controller does.
const PRODUCER_ID_BLOCK: i64 = 1000;

type Listener = Box<dyn Fn(&MetadataImage) -> Result<()> + Send + Sync>;

pub struct Controller {
    path: PathBuf,
    broker: BrokerConfig,
    image: RwLock<Arc<MetadataImage>>,
    /// Serialises writers so each change sees the previous one.
    write: Mutex<()>,
    producer_ids: Mutex<(i64, i64)>,
    listeners: RwLock<Vec<Listener>>,
}

impl Controller {
    pub fn open(data_dir: &Path, broker: BrokerConfig) -> Result<Controller> {
        let dir = data_dir.join(METADATA_DIR);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(METADATA_FILE);
        let mut image = match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice::<MetadataImage>(&data)
                .map_err(|e| Error::Storage(std::io::Error::other(format!("{}: {e}", path.display()))))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetadataImage::default(),
            Err(e) => return Err(e.into()),
        };
        if image.cluster_id.is_empty() {
            image.cluster_id = if broker.cluster_id.is_empty() {
                uuid::Uuid::new_v4().simple().to_string()[..22].to_string()
            } else {
                broker.cluster_id.clone()
            };
        }
        let controller = Controller {
            path,
            broker,
            image: RwLock::new(Arc::new(MetadataImage::default())),
            write: Mutex::new(()),
            producer_ids: Mutex::new((0, 0)),
            listeners: RwLock::new(Vec::new()),
        };
        controller.persist(&image)?;
        *controller.image.write() = Arc::new(image);
        Ok(controller)
    }

    /// Called with every committed image (and at once with the current one).
    pub fn subscribe(&self, listener: Listener) -> Result<()> {
        listener(&self.image())?;
        self.listeners.write().push(listener);
        Ok(())
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.read().clone()
    }

    pub fn broker_config(&self) -> &BrokerConfig {
        &self.broker
    }

    /// The broker config with dynamic cluster-wide overrides applied.
    pub fn effective_broker_config(&self) -> BrokerConfig {
        let mut config = self.broker.clone();
        for (k, v) in &self.image().broker_overrides {
            let _ = config.set(k, v);
        }
        config
    }

    pub fn log_config(&self, topic: &str) -> Result<LogConfig> {
        let image = self.image();
        let overrides = image.topics.get(topic).map(|t| t.configs.clone()).unwrap_or_default();
        Ok(LogConfig::with_overrides(&self.effective_broker_config(), &overrides)?)
    }

    fn persist(&self, image: &MetadataImage) -> Result<()> {
        let data = serde_json::to_vec_pretty(image).map_err(std::io::Error::other)?;
        write_atomically(&self.path, &data)?;
        Ok(())
    }

    /// Applies a pure change to the image, commits it and publishes it.
    fn update<T>(&self, validate_only: bool, change: impl FnOnce(&mut MetadataImage) -> Result<T>) -> Result<T> {
        let _guard = self.write.lock();
        let mut next = (*self.image()).clone();
        let out = change(&mut next)?;
        if validate_only {
            return Ok(out);
        }
        self.persist(&next)?;
        let next = Arc::new(next);
        *self.image.write() = next.clone();
        for l in self.listeners.read().iter() {
            l(&next)?;
        }
        Ok(out)
    }

    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicImage> {
        let broker = self.effective_broker_config();
        self.update(validate_only, |image| {
            image.create_topic(&broker, name, partitions, replication_factor, configs)
        })
    }

    pub fn delete_topic(&self, name: &str) -> Result<TopicImage> {
        self.update(false, |image| image.delete_topic(name))
    }

    pub fn create_partitions(&self, name: &str, count: i32, validate_only: bool) -> Result<()> {
        self.update(validate_only, |image| image.create_partitions(name, count))
    }

    pub fn alter_topic_configs(&self, name: &str, ops: &[ConfigOp], validate_only: bool) -> Result<()> {
        let broker = self.effective_broker_config();
        self.update(validate_only, |image| image.alter_topic_configs(&broker, name, ops))
    }

    pub fn alter_broker_configs(&self, ops: &[ConfigOp], default_entity: bool, validate_only: bool) -> Result<()> {
        let broker = self.broker.clone();
        self.update(validate_only, |image| {
            image.alter_broker_configs(&broker, ops, default_entity)
        })
    }

    /// A new producer id; blocks are reserved in the image so ids never repeat across restarts.
    pub fn allocate_producer_id(&self) -> Result<i64> {
        let mut ids = self.producer_ids.lock();
        if ids.0 >= ids.1 {
            let start = self.update(false, |image| {
                let start = image.next_producer_id_block;
                image.next_producer_id_block += PRODUCER_ID_BLOCK;
                Ok(start)
            })?;
            *ids = (start, start + PRODUCER_ID_BLOCK);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }
}
