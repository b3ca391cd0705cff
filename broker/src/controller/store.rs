//! Durable state of the metadata quorum under `<data>/__cluster_metadata`:
//! the Raft log (`raft.log`, CRC-framed JSON entries, fdatasync'd before an
//! append is acknowledged), the vote (`vote.json`) and the state machine's
//! snapshot (`snapshot.json`, written atomically when a snapshot is taken:
//! after `metadata.log.max.record.bytes.between.snapshots` of records, or
//! when one is installed). On start the entries after the snapshot are
//! applied again. A data directory from before the quorum holds only
//! `metadata.json`: it becomes the state machine's image, so a single node
//! upgrades in place.

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
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::image::MetadataImage;
use super::publisher::{Published, Publisher};
use super::records::{self, ImageChanges, MetadataRecord};
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

pub struct StateMachine {
    dir: PathBuf,
    data: StateMachineData,
    publisher: Publisher,
    /// Bytes of records applied since the last snapshot, and the threshold
    /// that asks for the next one (Kafka's
    /// metadata.log.max.record.bytes.between.snapshots).
    since_snapshot: u64,
    snapshot_every: u64,
    /// Set when a snapshot is due; the controller asks openraft for it.
    pub snapshot_due: watch::Sender<bool>,
}

impl StateMachine {
    /// `node_id`: the owner of every partition of a pre-quorum image (a
    /// single node held them all).
    pub fn open(dir: &Path, node_id: i32, snapshot_every: u64) -> io::Result<StateMachine> {
        let (data, legacy) = match read_json::<StateMachineData>(&dir.join(SNAPSHOT_FILE))? {
            Some(data) => (data, false),
            None => {
                let legacy: Option<MetadataImage> = read_json(&dir.join(LEGACY_IMAGE_FILE))?;
                let found = legacy.is_some();
                let mut image = legacy.unwrap_or_default();
                for topic in image.topics.values_mut().filter(|t| t.assignments.is_empty()) {
                    let topic = Arc::make_mut(topic);
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
        let publisher = Publisher::start(data.image.clone())?;
        let state = StateMachine {
            dir: dir.to_path_buf(),
            data,
            publisher,
            since_snapshot: 0,
            snapshot_every: snapshot_every.max(1),
            snapshot_due: watch::channel(false).0,
        };
        if legacy {
            // The pre-quorum image now lives in the snapshot.
            state.persist()?;
            std::fs::remove_file(dir.join(LEGACY_IMAGE_FILE))?;
            tracing::info!("took the single-node metadata image into the metadata quorum's state");
        }
        Ok(state)
    }

    pub fn published(&self) -> Arc<Published> {
        self.publisher.published()
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
        let mut changes = ImageChanges::default();
        for entry in entries {
            self.data.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    for r in &batch {
                        records::apply(&mut self.data.image, r, &mut changes);
                    }
                    self.since_snapshot += encoded_len(&batch);
                }
                EntryPayload::Membership(m) => {
                    self.data.membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            responses.push(super::Applied(entry.log_id.index));
        }
        // Nothing is written here: the log holds the entries until a
        // snapshot holds their effect.
        if self.since_snapshot >= self.snapshot_every {
            self.snapshot_due.send_replace(true);
        }
        if let Some(last) = self.data.last_applied {
            let image = if changes.is_empty() {
                self.publisher.published().image.read().clone()
            } else {
                Arc::new(self.data.image.clone())
            };
            self.publisher.publish(image, changes, last.index);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The snapshot is on disk before openraft purges the entries it holds.
        let taken = blocking(|| self.persist()).and_then(|()| self.snapshot());
        if taken.is_ok() {
            self.since_snapshot = 0;
            self.snapshot_due.send_replace(false);
        }
        SnapshotBuilder(taken)
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
        self.since_snapshot = 0;
        let index = self.data.last_applied.map_or(0, |l| l.index);
        self.publisher
            .publish(Arc::new(self.data.image.clone()), ImageChanges::everything(), index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(Some(
            self.snapshot()
                .map_err(|e| StorageIOError::read_state_machine(io_err(e)))?,
        ))
    }
}

/// The size of a batch as the log stores it, without building it.
fn encoded_len(batch: &RecordBatch) -> u64 {
    struct Count(u64);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, batch);
    count.0
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
        let state = StateMachine::open(dir.path(), 7, u64::MAX).unwrap();
        let image = &state.data.image;
        assert_eq!(image.cluster_id, "old-cluster");
        assert_eq!(image.next_producer_id_block, 3000);
        assert_eq!(image.topics["orders"].assignments, vec![vec![7], vec![7]]);
        let state = &image.topics["orders"].states[1];
        assert_eq!((state.leader, state.leader_epoch, state.isr.clone()), (7, 0, vec![7]));
        assert!(!dir.path().join(LEGACY_IMAGE_FILE).exists());
        let again = StateMachine::open(dir.path(), 7, u64::MAX).unwrap();
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

    /// The image is written only as a snapshot, once the records applied
    /// since the last one reach metadata.log.max.record.bytes.between.snapshots;
    /// a restart applies the entries after it again and ends with the same image.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_image_is_snapshotted_by_size_and_replayed_after_it() {
        use crate::config::BrokerConfig;
        use crate::controller::{Controller, ControllerOp};

        let topic = |i: usize| ControllerOp::CreateTopic {
            name: format!("t{i}"),
            partitions: 2,
            replication_factor: 1,
            configs: BTreeMap::new(),
            assignments: None,
        };
        for (every, snapshotted) in [(i64::MAX, false), (2_000, true)] {
            let dir = tempfile::tempdir().unwrap();
            let config = BrokerConfig {
                admin_listener: "127.0.0.1:0".into(),
                metadata_log_max_record_bytes_between_snapshots: every,
                ..BrokerConfig::default()
            };
            let snapshot = dir.path().join(super::super::METADATA_DIR).join(SNAPSHOT_FILE);
            let controller = Controller::start(dir.path(), config.clone()).await.unwrap();
            controller.wait_for_cluster_id().await.unwrap();
            for i in 0..20 {
                controller.execute(topic(i)).await.unwrap();
            }
            let image = controller.image();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while snapshotted && !snapshot.exists() {
                assert!(tokio::time::Instant::now() < deadline, "no snapshot taken");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_eq!(snapshot.exists(), snapshotted, "snapshot after {every} bytes");
            controller.shutdown().await;
            drop(controller);

            let again = Controller::start(dir.path(), config).await.unwrap();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while again.image() != image {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the image after a restart differs"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            again.shutdown().await;
        }
    }
}
