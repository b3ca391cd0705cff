//! The group coordinator: the group state machines, committed offsets, and
//! their records in `__consumer_offsets`.
//!
//! Every change is appended to the group's partition of `__consumer_offsets`
//! (partition `abs(hash(group)) % offsets.topic.num.partitions`) and
//! replicated to its ISR before it is answered, and the cache is rebuilt from
//! those partitions on start; until that load completes, group requests get
//! COORDINATOR_LOAD_IN_PROGRESS.
//!
//! As in Kafka, the cache holds only what is replicated: an offset commit is
//! pending until the partition's high watermark passes its record (OffsetFetch
//! never returns it before; with `require_stable` it answers
//! UNSTABLE_OFFSET_COMMIT for that partition, KIP-447), and the leader's
//! SyncGroup assignment is handed out once the group record is replicated.
//! So a coordinator failover loses nothing a client was told.
//!
//! The coordinator is sharded as Kafka's is: one [`Shard`] per partition of
//! `__consumer_offsets` holds that partition's groups, their offsets and the
//! writes waiting for its ISR, under a lock of its own. A shard is loaded
//! when this broker comes to lead the partition and dropped when it stops;
//! requests for groups of different partitions never wait on each other.
//! This file routes to the shards and writes their records;
//! [`super::membership`] runs the group protocol, [`super::offsets`] the
//! committed offsets and [`super::loading`] the loading of shards.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::records::{Compression, Record};
use parking_lot::{Mutex, MutexGuard};

use super::records::{partition_for, OffsetValue, RecordKey};
use super::state::{Group, GroupLimits, GroupState};
use crate::config::BrokerConfig;
use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::log::batch;
use crate::log::segment::now_ms;
use crate::log::AppendOrigin;
use crate::replica::ReplicaManager;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub limits: GroupLimits,
    pub offsets_partitions: i32,
    pub offsets_replication_factor: i16,
    pub offsets_segment_bytes: i32,
    pub offsets_retention: Duration,
    pub offsets_retention_check: Duration,
    pub offset_metadata_max_bytes: usize,
    /// How long a commit waits for the ISR (offsets.commit.timeout.ms).
    pub offsets_commit_timeout: Duration,
}

impl GroupConfig {
    pub fn from_broker(c: &BrokerConfig) -> GroupConfig {
        let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
        GroupConfig {
            limits: GroupLimits {
                initial_rebalance_delay: ms(c.group_initial_rebalance_delay_ms),
                min_session_timeout: ms(c.group_min_session_timeout_ms),
                max_session_timeout: ms(c.group_max_session_timeout_ms),
                max_size: c.group_max_size.max(1) as usize,
            },
            offsets_partitions: c.offsets_topic_num_partitions.max(1),
            offsets_replication_factor: c.offsets_topic_replication_factor.clamp(1, i16::MAX.into()) as i16,
            offsets_segment_bytes: c.offsets_topic_segment_bytes,
            offsets_retention: ms(c.offsets_retention_minutes.saturating_mul(60_000)),
            offsets_retention_check: ms(c.offsets_retention_check_interval_ms),
            offset_metadata_max_bytes: c.offset_metadata_max_bytes.max(0) as usize,
            offsets_commit_timeout: ms(c.offsets_commit_timeout_ms),
        }
    }
}

/// One committed offset as OffsetFetch returns it.
pub type Committed = OffsetValue;

/// Committed offsets by group, then by (topic, partition).
pub(super) type OffsetCache = HashMap<String, BTreeMap<(String, i32), Committed>>;

/// An offset commit appended but not yet replicated: the offset of its
/// record in `__consumer_offsets`, and the value it commits.
pub(super) struct PendingCommit {
    pub(super) record_offset: i64,
    pub(super) value: Committed,
}

/// Commits not yet replicated, by group, then by (topic, partition); the
/// latest per partition.
pub(super) type PendingCommits = HashMap<String, BTreeMap<(String, i32), PendingCommit>>;

/// Transactional offset commits (TxnOffsetCommit) whose transaction is still
/// open, by producer id, then group, then (topic, partition): the commit
/// marker makes them committed offsets, the abort marker drops them.
pub(super) type PendingTxnOffsets = HashMap<i64, HashMap<String, BTreeMap<(String, i32), Committed>>>;

/// A group record holding a leader's assignment, appended but not yet
/// replicated: its members hear of the assignment once it is.
pub(super) struct PendingStore {
    pub(super) record_offset: i64,
    pub(super) generation: i32,
    pub(super) deadline: Instant,
}

/// One partition's answer to OffsetFetch: its committed offset (none
/// committed yet), or an error code.
pub struct FetchedOffset {
    pub topic: String,
    pub partition: i32,
    pub committed: Result<Option<Committed>, i16>,
}

/// A partition's commit in an OffsetCommit request.
pub struct CommitRequest {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// What DescribeGroups and the admin API show of a group.
pub struct GroupDescription {
    pub group_id: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// The groups of one `__consumer_offsets` partition: their state machines,
/// committed offsets, and the writes still waiting for the partition's ISR.
#[derive(Default)]
pub(super) struct Shard {
    /// Whether this partition's groups are here: it was led by this broker
    /// when last looked at, and its records were read.
    pub(super) loaded: bool,
    pub(super) groups: HashMap<String, Group>,
    pub(super) offsets: OffsetCache,
    pub(super) pending_commits: PendingCommits,
    pub(super) pending_stores: HashMap<String, PendingStore>,
    pub(super) pending_txn_offsets: PendingTxnOffsets,
    /// Transactions ended by a marker while the shard was not loaded yet
    /// (producer id, committed): the load may have read the log before the
    /// marker, so they are applied again once it is installed.
    pub(super) ended_while_loading: Vec<(i64, bool)>,
}

/// At most this many transaction ends are remembered for a shard still loading.
const MAX_ENDED_WHILE_LOADING: usize = 100_000;

impl Shard {
    /// A transaction marker ended `producer_id`'s transactional offsets here.
    pub(super) fn end_txn(&mut self, producer_id: i64, commit: bool) {
        if !self.loaded {
            if self.ended_while_loading.len() < MAX_ENDED_WHILE_LOADING {
                self.ended_while_loading.push((producer_id, commit));
            }
            return;
        }
        let Some(by_group) = self.pending_txn_offsets.remove(&producer_id) else {
            return;
        };
        if commit {
            for (group, offsets) in by_group {
                self.offsets.entry(group).or_default().extend(offsets);
            }
        }
    }

    /// Installs a freshly loaded shard in place of this one, applying the
    /// transaction ends that arrived meanwhile.
    pub(super) fn install(&mut self, loaded: Shard) {
        let ended = std::mem::take(&mut self.ended_while_loading);
        *self = loaded;
        for (producer_id, commit) in ended {
            self.end_txn(producer_id, commit);
        }
    }
}

pub struct GroupCoordinator {
    pub(super) config: GroupConfig,
    pub(super) controller: Arc<Controller>,
    pub(super) replicas: Arc<ReplicaManager>,
    /// One per partition of `__consumer_offsets`, by partition.
    pub(super) shards: Vec<Mutex<Shard>>,
    /// The first load, at start-up, is done.
    pub(super) loaded: AtomicBool,
}

/// Kafka refuses an empty group id; one longer than a record's i16 string
/// could never be stored.
pub(super) fn valid_group_id(group_id: &str) -> bool {
    !group_id.is_empty() && group_id.len() <= i16::MAX as usize
}

pub(super) fn load_in_progress() -> i16 {
    ResponseError::CoordinatorLoadInProgress.code()
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig, controller: Arc<Controller>, replicas: Arc<ReplicaManager>) -> GroupCoordinator {
        let shards = (0..config.offsets_partitions)
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        GroupCoordinator {
            config,
            controller,
            replicas,
            shards,
            loaded: AtomicBool::new(false),
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn partition_for(&self, group: &str) -> i32 {
        partition_for(group, self.config.offsets_partitions)
    }

    /// The shard of `group`'s partition, locked.
    pub(super) fn shard(&self, group: &str) -> MutexGuard<'_, Shard> {
        self.shards[self.partition_for(group) as usize].lock()
    }

    /// Why this broker cannot serve `group` now: its groups are still loading
    /// (COORDINATOR_LOAD_IN_PROGRESS), or another broker leads the group's
    /// partition of `__consumer_offsets` (NOT_COORDINATOR: the client looks
    /// the coordinator up again). Before that topic exists, any broker may
    /// answer (the join creates it).
    pub(super) fn unavailable(&self, group_id: &str) -> Option<i16> {
        if !self.is_loaded() {
            return Some(load_in_progress());
        }
        let p = self.partition_for(group_id);
        match self.replicas.get(OFFSETS_TOPIC, p) {
            Ok(_)
                if !self.shards[p as usize].lock().loaded
                    && self.controller.image().topics.contains_key(OFFSETS_TOPIC) =>
            {
                // Just came to lead it: its groups load on the next tick.
                Some(load_in_progress())
            }
            Ok(_) | Err(Error::UnknownTopicOrPartition) => None,
            // Led here by the image, but its log is still being opened (a
            // new __consumer_offsets opens 50 logs): the client waits.
            Err(_) if self.leads_in_image(p) => Some(load_in_progress()),
            Err(_) => Some(ResponseError::NotCoordinator.code()),
        }
    }

    /// Whether this broker can serve `group` now (FindCoordinator names it
    /// only then: a client sent here early would get errors it may not retry).
    pub fn is_ready_for(&self, group: &str) -> bool {
        self.unavailable(group).is_none()
    }

    /// Whether the metadata image names this broker the leader of partition
    /// `p` of `__consumer_offsets`.
    fn leads_in_image(&self, p: i32) -> bool {
        let image = self.controller.image();
        let node_id = self.controller.broker_config().node_id;
        image.topics.get(OFFSETS_TOPIC).and_then(|t| image.leader(t, p)) == Some(node_id)
    }

    /// Creates `__consumer_offsets` (compacted) on first use: on a group
    /// lookup (FindCoordinator) or a Metadata request naming it, as Kafka does.
    pub async fn ensure_offsets_topic(&self) -> Result<()> {
        if self.controller.image().topics.contains_key(OFFSETS_TOPIC) {
            return Ok(());
        }
        let configs = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            (
                "segment.bytes".to_string(),
                self.config.offsets_segment_bytes.to_string(),
            ),
        ]);
        // Replicated like any topic, so committed offsets outlive a broker;
        // never more replicas than live brokers (a single node gets one).
        let live = self.controller.image().live_broker_count();
        let rf = self.config.offsets_replication_factor.min(live as i16);
        match self
            .controller
            .create_topic(OFFSETS_TOPIC, self.config.offsets_partitions, rf, configs, None, false)
            .await
        {
            Ok(_) => {
                tracing::info!(partitions = self.config.offsets_partitions, "created {OFFSETS_TOPIC}");
                // Its partitions led here are empty: take them at once rather
                // than answering COORDINATOR_LOAD_IN_PROGRESS until the next tick.
                self.follow_leadership();
                Ok(())
            }
            Err(Error::TopicAlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes records of the group: tombstones for `keys`.
    pub(super) fn append_tombstones(&self, group: &str, keys: &[RecordKey]) -> Result<i64> {
        let records = keys
            .iter()
            .map(|k| Ok((k.encode()?, None)))
            .collect::<Result<Vec<_>>>()?;
        self.append(group, records)
    }

    /// Appends records to the group's `__consumer_offsets` partition; answers
    /// the offset of the last one (-1 when there was none).
    pub(super) fn append(&self, group: &str, records: Vec<(Bytes, Option<Bytes>)>) -> Result<i64> {
        self.append_to(self.partition_for(group), records)
    }

    pub(super) fn append_to(&self, partition: i32, records: Vec<(Bytes, Option<Bytes>)>) -> Result<i64> {
        self.append_as(partition, records, None)
    }

    /// Appends records to a partition of `__consumer_offsets`; with a
    /// producer (id, epoch) they are a transactional batch of its open
    /// transaction (TxnOffsetCommit), which its marker ends.
    pub(super) fn append_as(
        &self,
        partition: i32,
        records: Vec<(Bytes, Option<Bytes>)>,
        producer: Option<(i64, i16)>,
    ) -> Result<i64> {
        if records.is_empty() {
            return Ok(-1);
        }
        // A client reaches a coordinator through FindCoordinator, which made the topic.
        let part = self.replicas.get(OFFSETS_TOPIC, partition)?;
        let ts = now_ms();
        let mut recs: Vec<Record> = records
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| {
                let mut r = batch::plain_record(i as i64, ts, Some(key), value);
                r.transactional = producer.is_some();
                r
            })
            .collect();
        let (producer_id, epoch) = producer.unwrap_or((-1, -1));
        let batch = batch::encode_records(&mut recs, Compression::None, producer_id, epoch, -1)
            .map_err(Error::CorruptMessage)?;
        crate::blocking::blocking(|| {
            let (info, _) = part.append_from(&batch, -1, AppendOrigin::Coordinator)?;
            if info.flush_due {
                // Only with a flush.messages override on __consumer_offsets.
                part.flush()?;
            }
            Ok::<_, Error>(info.last_offset)
        })
    }

    /// Waits (bounded by `offsets.commit.timeout.ms`) until the group's
    /// `__consumer_offsets` partition has replicated through `record_offset`.
    pub(super) async fn wait_replicated(&self, group_id: &str, record_offset: i64) {
        let Ok(part) = self.replicas.get(OFFSETS_TOPIC, self.partition_for(group_id)) else {
            return;
        };
        let replicated = part.wait_for_high_watermark(record_offset, part.leader_epoch());
        let _ = tokio::time::timeout(self.config.offsets_commit_timeout, replicated).await;
    }

    pub fn list(&self) -> Result<Vec<(String, String, &'static str)>, i16> {
        if !self.is_loaded() {
            return Err(load_in_progress());
        }
        let mut out: Vec<(String, String, &'static str)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            out.extend(shard.groups.values().map(|g| {
                (
                    g.id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state.name(),
                )
            }));
            // Groups that only have committed offsets (manual assignment) are listed as Empty.
            for id in shard.offsets.keys() {
                if !shard.groups.contains_key(id) {
                    out.push((id.clone(), String::new(), GroupState::Empty.name()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Current generation and rebalance count of a group.
    pub fn generation(&self, group_id: &str) -> Option<(i32, u64)> {
        self.shard(group_id)
            .groups
            .get(group_id)
            .map(|g| (g.generation, g.rebalances))
    }

    pub fn member_counts(&self) -> Vec<(String, usize, &'static str)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(
                shard
                    .lock()
                    .groups
                    .values()
                    .map(|g| (g.id.clone(), g.members.len(), g.state.name())),
            );
        }
        out
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::image::BrokerRegistration;
    use crate::controller::ControllerOp;
    use crate::log::manager::LogManager;

    fn registration() -> BrokerRegistration {
        BrokerRegistration {
            id: 0,
            incarnation_id: uuid::Uuid::new_v4(),
            host: "127.0.0.1".into(),
            port: 9092,
            admin: "127.0.0.1:9093".into(),
            rack: String::new(),
            fenced: false,
        }
    }

    /// A controller (a quorum of one) and a replica manager applying its
    /// images, in `dir`.
    async fn quorum_of_one(dir: &std::path::Path, config: &BrokerConfig) -> (Arc<Controller>, Arc<ReplicaManager>) {
        let controller = Controller::start(dir, config.clone()).await.unwrap();
        controller.wait_for_cluster_id().await.unwrap();
        let replicas = Arc::new(ReplicaManager::new(LogManager::open(dir).unwrap()));
        let (applying, config) = (replicas.clone(), config.clone());
        controller
            .subscribe(Box::new(move |image, changes| {
                // Failures are logged per partition; the rest of the change is applied.
                applying.apply_changes(image, changes, &config);
                Ok(())
            }))
            .unwrap();
        (controller, replicas)
    }

    /// The coordinator follows leadership of `__consumer_offsets`: when its
    /// partitions go offline (this broker fenced) the groups leave the cache
    /// and requests get NOT_COORDINATOR; when it leads them again they are
    /// read back from the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_follow_the_leadership_of_their_partition() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig {
            admin_listener: "127.0.0.1:0".into(),
            offsets_topic_num_partitions: 3,
            ..BrokerConfig::default()
        };
        let (controller, replicas) = quorum_of_one(dir.path(), &config).await;
        let first = registration();
        controller.register(&first).await.unwrap();
        let groups = GroupCoordinator::new(GroupConfig::from_broker(&config), controller.clone(), replicas.clone());
        groups.load().unwrap();
        groups.ensure_offsets_topic().await.unwrap();
        let commit = |offset| CommitRequest {
            topic: OFFSETS_TOPIC.into(),
            partition: 0,
            offset,
            leader_epoch: -1,
            metadata: None,
        };
        let results = groups.commit("g", "", None, -1, vec![commit(42)]).await;
        assert_eq!(results[0].2, 0);

        controller
            .execute(ControllerOp::FenceBroker {
                id: 0,
                incarnation_id: first.incarnation_id,
            })
            .await
            .unwrap();
        groups.follow_leadership();
        assert_eq!(
            groups.fetch_offsets("g", None, false).err(),
            Some(ResponseError::NotCoordinator.code())
        );
        assert!(
            groups.shards.iter().all(|s| s.lock().offsets.is_empty()),
            "dropped from the cache"
        );

        controller.register(&registration()).await.unwrap();
        groups.follow_leadership();
        let fetched = groups.fetch_offsets("g", None, true).unwrap();
        assert_eq!(
            fetched[0].committed.as_ref().map(|c| c.as_ref().map(|c| c.offset)),
            Ok(Some(42)),
            "read back from the log"
        );
        controller.shutdown().await;
    }

    /// Until the ISR of the group's partition has a commit or an assignment,
    /// no client hears of it: the OffsetCommit waits, OffsetFetch returns
    /// the previous offset (UNSTABLE_OFFSET_COMMIT with require_stable), and
    /// SyncGroup waits with the group still CompletingRebalance. The
    /// follower's fetch releases them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_and_assignments_wait_for_the_isr() {
        use super::super::state::{JoinRequest, SyncRequest};

        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig {
            admin_listener: "127.0.0.1:0".into(),
            offsets_topic_num_partitions: 3,
            group_initial_rebalance_delay_ms: 0,
            ..BrokerConfig::default()
        };
        let (controller, replicas) = quorum_of_one(dir.path(), &config).await;
        controller.register(&registration()).await.unwrap();
        // A second broker that never fetches: the ISR's other member.
        let other = BrokerRegistration {
            id: 1,
            port: 9192,
            ..registration()
        };
        controller.register(&other).await.unwrap();
        let groups = Arc::new(GroupCoordinator::new(
            GroupConfig::from_broker(&config),
            controller.clone(),
            replicas.clone(),
        ));
        groups.load().unwrap();
        groups.ensure_offsets_topic().await.unwrap();
        let group = (0..)
            .map(|i| format!("g{i}"))
            .find(|g| replicas.get(OFFSETS_TOPIC, groups.partition_for(g)).is_ok())
            .unwrap();
        let part = replicas.get(OFFSETS_TOPIC, groups.partition_for(&group)).unwrap();
        assert_eq!(part.isr().len(), 2);
        let ticker = {
            let groups = groups.clone();
            tokio::spawn(async move {
                loop {
                    groups.tick();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let bound = Duration::from_secs(10);
        let until = |what: &'static str, f: &dyn Fn() -> bool| {
            let deadline = Instant::now() + bound;
            while !f() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };

        let commit = {
            let (groups, group) = (groups.clone(), group.clone());
            tokio::spawn(async move {
                let c = CommitRequest {
                    topic: OFFSETS_TOPIC.into(),
                    partition: 0,
                    offset: 42,
                    leader_epoch: -1,
                    metadata: None,
                };
                groups.commit(&group, "", None, -1, vec![c]).await
            })
        };
        let tp = || Some(vec![(OFFSETS_TOPIC.to_string(), 0)]);
        let fetched = |stable| groups.fetch_offsets(&group, tp(), stable).unwrap().remove(0).committed;
        until("the commit pending", &|| {
            fetched(true) == Err(ResponseError::UnstableOffsetCommit.code())
        });
        assert_eq!(fetched(false), Ok(None), "not returned before it is replicated");
        assert!(!commit.is_finished());
        part.record_follower_fetch(1, part.log_end_offset(), 0, now_ms());
        let results = tokio::time::timeout(bound, commit).await.unwrap().unwrap();
        assert_eq!(results[0].2, 0);
        assert_eq!(fetched(true).unwrap().map(|c| c.offset), Some(42));

        let joined = groups
            .join(
                &group,
                JoinRequest {
                    member_id: String::new(),
                    instance_id: None,
                    client_id: "c".into(),
                    client_host: "h".into(),
                    session_timeout_ms: 30_000,
                    rebalance_timeout_ms: 30_000,
                    protocol_type: "consumer".into(),
                    protocols: vec![("range".into(), Bytes::new())],
                    require_known_member_id: false,
                },
            )
            .await;
        assert_eq!(joined.error, 0);
        let sync = {
            let (groups, group) = (groups.clone(), group.clone());
            let member = joined.member_id.clone();
            tokio::spawn(async move {
                let req = SyncRequest {
                    member_id: member.clone(),
                    generation: joined.generation,
                    assignments: vec![(member, Bytes::from_static(b"A"))],
                    ..SyncRequest::default()
                };
                groups.sync(&group, req).await
            })
        };
        until("the assignment stored", &|| {
            groups.shard(&group).pending_stores.contains_key(&group)
        });
        assert_eq!(groups.describe(&group).ok().unwrap().state, "CompletingRebalance");
        assert!(!sync.is_finished());
        part.record_follower_fetch(1, part.log_end_offset(), 0, now_ms());
        let synced = tokio::time::timeout(bound, sync).await.unwrap().unwrap();
        assert_eq!((synced.error, synced.assignment), (0, Bytes::from_static(b"A")));
        assert_eq!(groups.describe(&group).ok().unwrap().state, "Stable");
        ticker.abort();
        controller.shutdown().await;
    }
}
