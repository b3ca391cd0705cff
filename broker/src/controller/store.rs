//! Durable state of the metadata quorum under `<data>/__cluster_metadata`:
//! the Raft log (`raft.log`, CRC-framed JSON entries, fdatasync'd before an
//! append is acknowledged), the vote (`vote.json`) and the state machine, whose
//! image is also the snapshot (`snapshot.json`, written atomically after each
//! apply). A data directory from before the quorum holds only `metadata.json`:
//! it becomes the state machine's image, so a single node upgrades in place.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::image::MetadataImage;
use super::records::{self, MetadataRecord};
use super::TypeConfig;
use crate::blocking::blocking;
use crate::log::manager::write_atomically;

pub type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "vote.json";
const PURGED_FILE: &str = "purged.json";
const SNAPSHOT_FILE: &str = "snapshot.json";
/// The image file of a data directory from before the quorum.
const LEGACY_IMAGE_FILE: &str = "metadata.json";

fn io_err(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

/// The Raft log: every entry in memory (the metadata log is small and
/// snapshotted), and on disk as `[len u32][crc32c u32][json]` frames.
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

struct LogInner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

fn frame(entry: &Entry<TypeConfig>) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Entries of a log file up to the first torn or corrupt frame, and the byte
/// length of the valid prefix.
fn read_frames(data: &[u8]) -> (Vec<Entry<TypeConfig>>, usize) {
    let mut entries = Vec::new();
    let mut pos = 0;
    while data.len() - pos >= 8 {
        let len = u32::from_be_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let crc = u32::from_be_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        let Some(body) = data.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<Entry<TypeConfig>>(body) else {
            break;
        };
        entries.push(entry);
        pos += 8 + len;
    }
    (entries, pos)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_atomically(path, &serde_json::to_vec(value).map_err(io::Error::other)?)
}

impl LogStore {
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let (entries, valid) = read_frames(&data);
        if valid < data.len() {
            // A torn append: it was never acknowledged, so it is dropped.
            tracing::warn!(path = %path.display(), dropped_bytes = data.len() - valid, "truncating a torn metadata log tail");
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        let inner = LogInner {
            dir: dir.to_path_buf(),
            file,
            entries: entries.into_iter().map(|e| (e.log_id.index, e)).collect(),
            purged: read_json(&dir.join(PURGED_FILE))?,
            vote: read_json(&dir.join(VOTE_FILE))?,
        };
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    pub fn is_empty(&self) -> bool {
        let inner = self.inner.lock();
        inner.entries.is_empty() && inner.purged.is_none() && inner.vote.is_none()
    }
}

impl LogInner {
    /// Rewrites the log file with the entries kept (after a truncation or purge).
    fn rewrite(&mut self) -> io::Result<()> {
        let mut data = Vec::new();
        for e in self.entries.values() {
            data.extend_from_slice(&frame(e)?);
        }
        let path = self.dir.join(LOG_FILE);
        write_atomically(&path, &data)?;
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        Ok(self.inner.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let inner = self.inner.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogStore {
            inner: self.inner.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let mut inner = self.inner.lock();
        blocking(|| write_json(&inner.dir.join(VOTE_FILE), vote)).map_err(|e| StorageIOError::write_vote(io_err(e)))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.inner.lock().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock();
        let mut data = Vec::new();
        let mut appended = Vec::new();
        for e in entries {
            data.extend_from_slice(&frame(&e).map_err(|e| StorageIOError::write_logs(io_err(e)))?);
            appended.push(e);
        }
        let written = blocking(|| inner.file.write_all(&data).and_then(|()| inner.file.sync_data()));
        if let Err(e) = &written {
            tracing::error!(error = %e, "appending to the metadata log failed");
        }
        let ok = written.is_ok();
        callback.log_io_completed(written);
        if ok {
            for e in appended {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut inner = self.inner.lock();
        inner.entries.split_off(&log_id.index);
        blocking(|| inner.rewrite()).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut inner = self.inner.lock();
        blocking(|| write_json(&inner.dir.join(PURGED_FILE), &log_id))
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        inner.purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        blocking(|| inner.rewrite()).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        Ok(())
    }
}

/// What the state machine persists: the image and how far the log is in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateMachineData {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub image: MetadataImage,
}

use super::Listener;

/// The applied image, shared by the state machine (writer) and the broker (readers).
pub struct Published {
    pub image: RwLock<Arc<MetadataImage>>,
    listeners: RwLock<Vec<Listener>>,
    /// The index of the last applied log entry.
    pub applied: tokio::sync::watch::Sender<u64>,
}

impl Published {
    fn new(image: MetadataImage) -> Published {
        Published {
            image: RwLock::new(Arc::new(image)),
            listeners: RwLock::new(Vec::new()),
            applied: tokio::sync::watch::channel(0).0,
        }
    }

    pub fn subscribe(&self, listener: Listener) -> crate::error::Result<()> {
        listener(&self.image.read().clone())?;
        self.listeners.write().push(listener);
        Ok(())
    }

    fn publish(&self, image: MetadataImage) {
        let image = Arc::new(image);
        *self.image.write() = image.clone();
        for l in self.listeners.read().iter() {
            if let Err(e) = l(&image) {
                // The image is committed; a broker that cannot act on it (a
                // disk error opening a log) reports it and keeps following.
                tracing::error!(error = %e, "applying the metadata image failed");
            }
        }
    }
}

pub struct StateMachine {
    dir: PathBuf,
    data: StateMachineData,
    pub published: Arc<Published>,
}

impl StateMachine {
    /// `node_id`: the owner of every partition of a pre-quorum image (a
    /// single node held them all).
    pub fn open(dir: &Path, node_id: i32) -> io::Result<StateMachine> {
        let (data, legacy) = match read_json::<StateMachineData>(&dir.join(SNAPSHOT_FILE))? {
            Some(data) => (data, false),
            None => {
                let legacy: Option<MetadataImage> = read_json(&dir.join(LEGACY_IMAGE_FILE))?;
                let found = legacy.is_some();
                let mut image = legacy.unwrap_or_default();
                for topic in image.topics.values_mut().filter(|t| t.assignments.is_empty()) {
                    topic.assignments = vec![vec![node_id]; topic.partitions.max(0) as usize];
                }
                let data = StateMachineData {
                    image,
                    ..StateMachineData::default()
                };
                (data, found)
            }
        };
        let mut data = data;
        // Images from before partition states: each partition led by its first replica.
        data.image.fill_partition_states();
        let published = Arc::new(Published::new(data.image.clone()));
        let state = StateMachine {
            dir: dir.to_path_buf(),
            data,
            published,
        };
        if legacy {
            // The pre-quorum image now lives in the snapshot.
            state.persist()?;
            std::fs::remove_file(dir.join(LEGACY_IMAGE_FILE))?;
            tracing::info!("took the single-node metadata image into the metadata quorum's state");
        }
        Ok(state)
    }

    fn persist(&self) -> io::Result<()> {
        write_json(&self.dir.join(SNAPSHOT_FILE), &self.data)
    }

    fn snapshot(&self) -> io::Result<Snapshot<TypeConfig>> {
        let data = serde_json::to_vec(&self.data).map_err(io::Error::other)?;
        let last = self.data.last_applied;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: self.data.membership.clone(),
                snapshot_id: last.map_or_else(|| "0-0".to_string(), |l| format!("{}-{}", l.leader_id, l.index)),
            },
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Builds a snapshot from the image as applied at the time.
pub struct SnapshotBuilder(io::Result<Snapshot<TypeConfig>>);

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        match std::mem::replace(&mut self.0, Err(io::Error::other("snapshot taken"))) {
            Ok(s) => Ok(s),
            Err(e) => Err(StorageIOError::read_state_machine(io_err(e)).into()),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>)> {
        Ok((self.data.last_applied, self.data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<super::Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut changed = false;
        for entry in entries {
            self.data.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    for r in &batch {
                        records::apply(&mut self.data.image, r);
                    }
                    changed |= !batch.is_empty();
                }
                EntryPayload::Membership(m) => {
                    self.data.membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            responses.push(super::Applied(entry.log_id.index));
        }
        blocking(|| self.persist()).map_err(|e| StorageIOError::write_state_machine(io_err(e)))?;
        if changed {
            self.published.publish(self.data.image.clone());
        }
        if let Some(last) = self.data.last_applied {
            self.published.applied.send_replace(last.index);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder(self.snapshot())
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data: StateMachineData = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io_err(e)))?;
        let mut image = data.image;
        image.fill_partition_states();
        self.data = StateMachineData {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            image,
        };
        blocking(|| self.persist()).map_err(|e| StorageIOError::write_state_machine(io_err(e)))?;
        self.published.publish(self.data.image.clone());
        if let Some(last) = self.data.last_applied {
            self.published.applied.send_replace(last.index);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(Some(
            self.snapshot()
                .map_err(|e| StorageIOError::read_state_machine(io_err(e)))?,
        ))
    }
}

/// One record batch per log entry: the records of one controller operation.
pub type RecordBatch = Vec<MetadataRecord>;

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64, records: RecordBatch) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(records),
        }
    }

    /// A data directory from before the quorum: its image becomes the state
    /// machine's, every partition on this node, and the old file goes.
    #[test]
    fn a_single_node_image_is_taken_in() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = serde_json::json!({
            "cluster_id": "old-cluster",
            "topics": {"orders": {"name": "orders", "id": uuid::Uuid::new_v4(), "partitions": 2,
                                  "replication_factor": 1, "configs": {}}},
            "next_producer_id_block": 3000,
            "broker_overrides": {}
        });
        std::fs::write(dir.path().join(LEGACY_IMAGE_FILE), legacy.to_string()).unwrap();
        let state = StateMachine::open(dir.path(), 7).unwrap();
        let image = &state.data.image;
        assert_eq!(image.cluster_id, "old-cluster");
        assert_eq!(image.next_producer_id_block, 3000);
        assert_eq!(image.topics["orders"].assignments, vec![vec![7], vec![7]]);
        let state = &image.topics["orders"].states[1];
        assert_eq!((state.leader, state.leader_epoch, state.isr.clone()), (7, 0, vec![7]));
        assert!(!dir.path().join(LEGACY_IMAGE_FILE).exists());
        let again = StateMachine::open(dir.path(), 7).unwrap();
        assert_eq!(&again.data.image, image, "kept in the snapshot");
    }

    #[test]
    fn a_torn_tail_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        for i in 1..=3 {
            data.extend_from_slice(&frame(&entry(i, vec![MetadataRecord::ProducerIdBlock(i as i64)])).unwrap());
        }
        let whole = data.len();
        data.extend_from_slice(&frame(&entry(4, vec![])).unwrap()[..5]);
        std::fs::write(dir.path().join(LOG_FILE), &data).unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.inner.lock().entries.len(), 3);
        assert_eq!(
            std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len() as usize,
            whole
        );
        // A flipped byte in the middle ends the log there.
        let mut bad = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        let second = bad.len() / 3 + 10;
        bad[second] ^= 0xff;
        assert_eq!(read_frames(&bad).0.len(), 1);
    }
}
