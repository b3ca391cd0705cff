//! All partition logs of one log directory: opening and recovery at start,
//! checkpoints of recovery points and log start offsets, the clean shutdown
//! marker, and the periodic retention and flush work.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use super::Log;
use crate::config::LogConfig;
use crate::error::Result;

pub const CLEAN_SHUTDOWN_FILE: &str = ".kafka_cleanshutdown";
pub const RECOVERY_POINT_CHECKPOINT: &str = "recovery-point-offset-checkpoint";
pub const LOG_START_OFFSET_CHECKPOINT: &str = "log-start-offset-checkpoint";
pub const PARTITION_METADATA_FILE: &str = "partition.metadata";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// The partition a directory name (`<topic>-<partition>`) is for.
    pub fn from_dir_name(name: &str) -> Option<TopicPartition> {
        let (topic, partition) = name.rsplit_once('-')?;
        let partition = partition.parse::<i32>().ok().filter(|p| *p >= 0)?;
        (!topic.is_empty()).then(|| TopicPartition::new(topic, partition))
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Kafka's offset checkpoint file: version, count, then `topic partition offset` lines.
pub fn read_checkpoint(path: &Path) -> io::Result<HashMap<TopicPartition, i64>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let mut out = HashMap::new();
    for line in text.lines().skip(2) {
        let mut parts = line.split_whitespace();
        if let (Some(t), Some(p), Some(o)) = (parts.next(), parts.next(), parts.next()) {
            if let (Ok(p), Ok(o)) = (p.parse(), o.parse()) {
                out.insert(TopicPartition::new(t, p), o);
            }
        }
    }
    Ok(out)
}

pub fn write_checkpoint(path: &Path, entries: &BTreeMap<TopicPartition, i64>) -> io::Result<()> {
    let mut text = format!("0\n{}\n", entries.len());
    for (tp, o) in entries {
        text.push_str(&format!("{} {} {}\n", tp.topic, tp.partition, o));
    }
    write_atomically(path, text.as_bytes())
}

/// The topic id a partition directory's `partition.metadata` names, if any.
fn topic_id_in(dir: &Path) -> Option<uuid::Uuid> {
    let meta = std::fs::read_to_string(dir.join(PARTITION_METADATA_FILE)).ok()?;
    meta.lines()
        .find_map(|l| l.strip_prefix("topic_id:"))
        .and_then(|s| uuid::Uuid::parse_str(s.trim()).ok())
}

/// Write to a temp file, fsync, rename over the target, fsync the directory.
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

pub struct LogManager {
    dir: PathBuf,
    /// Recovery points from the last run when it did not shut down cleanly.
    unclean_recovery_points: Option<HashMap<TopicPartition, i64>>,
    log_start_offsets: HashMap<TopicPartition, i64>,
    logs: RwLock<BTreeMap<TopicPartition, Arc<Log>>>,
}

impl LogManager {
    /// Opens the log directory; removes the clean shutdown marker so that a crash from
    /// here on is detected at the next start.
    pub fn open(dir: &Path) -> Result<LogManager> {
        // Nothing here but, perhaps, the cluster metadata written just before.
        let fresh = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .all(|e| e.file_name().to_string_lossy().starts_with("__cluster_metadata")),
            Err(_) => true,
        };
        std::fs::create_dir_all(dir)?;
        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = marker.exists();
        let recovery_points = read_checkpoint(&dir.join(RECOVERY_POINT_CHECKPOINT))?;
        let log_start_offsets = read_checkpoint(&dir.join(LOG_START_OFFSET_CHECKPOINT))?;
        if clean {
            std::fs::remove_file(&marker)?;
        } else if fresh {
            tracing::info!(dir = %dir.display(), "empty data directory: starting a new log store");
        } else {
            tracing::info!(dir = %dir.display(), "no clean shutdown marker: recovering logs past their recovery points");
        }
        Ok(LogManager {
            dir: dir.to_path_buf(),
            unclean_recovery_points: (!clean).then_some(recovery_points),
            log_start_offsets,
            logs: RwLock::new(BTreeMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens (recovering if needed) or creates the log of a partition.
    pub fn get_or_create(&self, tp: &TopicPartition, topic_id: uuid::Uuid, config: Arc<LogConfig>) -> Result<Arc<Log>> {
        if let Some(log) = self.logs.read().get(tp) {
            return Ok(log.clone());
        }
        let dir = self.dir.join(tp.dir_name());
        let meta = dir.join(PARTITION_METADATA_FILE);
        // A directory of an earlier topic of the same name (deleted and
        // re-created while this broker was away): its records belong to no
        // partition now, and must never be served as the new topic's (the
        // reason Kafka gave topics ids, KIP-516). It goes, with its
        // checkpointed offsets.
        let stray = topic_id_in(&dir).filter(|found| *found != topic_id && !topic_id.is_nil());
        if let Some(found) = stray {
            tracing::warn!(%tp, stray_topic_id = %found, %topic_id, "deleting the log of an earlier topic of this name");
            self.delete(tp)?;
        }
        let recover_from = self
            .unclean_recovery_points
            .as_ref()
            .map(|p| p.get(tp).copied().unwrap_or(0));
        let log_start = self.log_start_offsets.get(tp).copied().filter(|_| stray.is_none());
        let log = Arc::new(Log::open(&dir, config, recover_from, log_start)?);
        if !meta.exists() {
            write_atomically(&meta, format!("version: 0\ntopic_id: {topic_id}\n").as_bytes())?;
        }
        self.logs.write().insert(tp.clone(), log.clone());
        Ok(log)
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Log>> {
        self.logs.read().get(tp).cloned()
    }

    pub fn all(&self) -> Vec<(TopicPartition, Arc<Log>)> {
        self.logs.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Partition directories on disk, with their topic ids (for start-up).
    pub fn dirs_on_disk(&self) -> io::Result<Vec<(String, uuid::Uuid)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = topic_id_in(&entry.path()) {
                out.push((name, id));
            }
        }
        Ok(out)
    }

    /// Removes a partition's log: rename out of the way first so a crash
    /// mid-delete never leaves a half-deleted log that looks live.
    pub fn delete(&self, tp: &TopicPartition) -> Result<()> {
        let removed = self.logs.write().remove(tp);
        let dir = self.dir.join(tp.dir_name());
        drop(removed);
        if dir.exists() {
            let doomed = self
                .dir
                .join(format!("{}.{}-delete", tp.dir_name(), uuid::Uuid::new_v4().simple()));
            std::fs::rename(&dir, &doomed)?;
            std::fs::remove_dir_all(&doomed)?;
        }
        Ok(())
    }

    /// Removes directories left by a delete interrupted by a crash.
    pub fn clean_deleted_dirs(&self) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().ends_with("-delete") {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }

    pub fn checkpoint(&self) -> Result<()> {
        let logs = self.all();
        let recovery: BTreeMap<_, _> = logs.iter().map(|(tp, l)| (tp.clone(), l.recovery_point())).collect();
        let starts: BTreeMap<_, _> = logs.iter().map(|(tp, l)| (tp.clone(), l.log_start_offset())).collect();
        write_checkpoint(&self.dir.join(RECOVERY_POINT_CHECKPOINT), &recovery)?;
        write_checkpoint(&self.dir.join(LOG_START_OFFSET_CHECKPOINT), &starts)?;
        Ok(())
    }

    /// Applies retention to every log; returns the segments deleted.
    pub fn enforce_retention(&self) -> usize {
        let mut deleted = 0;
        for (tp, log) in self.all() {
            if let Err(e) = log.roll_if_expired() {
                tracing::warn!(%tp, error = %e, "segment.ms roll failed");
            }
            match log.delete_old_segments() {
                Ok(n) => deleted += n,
                Err(e) => tracing::warn!(%tp, error = %e, "retention failed"),
            }
        }
        deleted
    }

    /// Forgets idempotent producers idle past `producer.id.expiration.ms`.
    pub fn remove_expired_producers(&self, expiration_ms: i64) -> usize {
        let now = super::segment::now_ms();
        self.all()
            .iter()
            .map(|(_, log)| log.remove_expired_producers(now, expiration_ms))
            .sum()
    }

    /// One cleaner pass over every compacted log.
    pub fn clean_all(&self, dedupe_buffer_bytes: usize) -> usize {
        let mut cleaned = 0;
        for (tp, log) in self.all() {
            match log.clean(dedupe_buffer_bytes) {
                Ok(Some(_)) => cleaned += 1,
                Ok(None) => {}
                Err(e) => tracing::warn!(%tp, error = %e, "cleaning failed"),
            }
        }
        cleaned
    }

    pub fn flush_due(&self) {
        for (tp, log) in self.all() {
            if let Err(e) = log.flush_rolled().and_then(|()| log.flush_if_due()) {
                tracing::warn!(%tp, error = %e, "flush failed");
            }
        }
    }

    /// Clean shutdown: close every log, write checkpoints, then the marker.
    pub fn shutdown(&self) -> Result<()> {
        for (tp, log) in self.all() {
            if let Err(e) = log.close() {
                tracing::error!(%tp, error = %e, "closing log failed; next start will recover");
                return Err(e);
            }
        }
        self.checkpoint()?;
        write_atomically(&self.dir.join(CLEAN_SHUTDOWN_FILE), b"")?;
        Ok(())
    }
}
