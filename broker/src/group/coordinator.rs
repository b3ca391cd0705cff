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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};
use parking_lot::Mutex;

use super::records::{partition_for, GroupValue, OffsetValue, RecordKey};
use super::state::{Group, GroupLimits, GroupState, JoinRequest, JoinResult, Reply, SyncRequest, SyncResult};
use crate::config::BrokerConfig;
use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::log::batch;
use crate::log::segment::now_ms;
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
type OffsetCache = HashMap<String, BTreeMap<(String, i32), Committed>>;

/// An offset commit appended but not yet replicated: the offset of its
/// record in `__consumer_offsets`, and the value it commits.
struct PendingCommit {
    record_offset: i64,
    value: Committed,
}

/// Commits not yet replicated, by group, then by (topic, partition); the
/// latest per partition.
type PendingCommits = HashMap<String, BTreeMap<(String, i32), PendingCommit>>;

/// A group record holding a leader's assignment, appended but not yet
/// replicated: its members hear of the assignment once it is.
struct PendingStore {
    record_offset: i64,
    generation: i32,
    deadline: Instant,
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

pub struct GroupCoordinator {
    config: GroupConfig,
    controller: Arc<Controller>,
    replicas: Arc<ReplicaManager>,
    // Locks are taken in this order: groups, offsets, pending_commits;
    // groups, pending_stores.
    groups: Mutex<HashMap<String, Group>>,
    offsets: Mutex<OffsetCache>,
    pending_commits: Mutex<PendingCommits>,
    pending_stores: Mutex<HashMap<String, PendingStore>>,
    loaded: AtomicBool,
    /// The `__consumer_offsets` partitions whose groups are in the cache:
    /// those this broker led when it last looked. A partition it comes to
    /// lead is loaded then; one it stops leading is dropped from the cache.
    partitions: Mutex<std::collections::BTreeSet<i32>>,
}

/// Kafka refuses an empty group id; one longer than a record's i16 string
/// could never be stored.
fn valid_group_id(group_id: &str) -> bool {
    !group_id.is_empty() && group_id.len() <= i16::MAX as usize
}

fn load_in_progress() -> i16 {
    ResponseError::CoordinatorLoadInProgress.code()
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig, controller: Arc<Controller>, replicas: Arc<ReplicaManager>) -> GroupCoordinator {
        GroupCoordinator {
            config,
            controller,
            replicas,
            groups: Mutex::new(HashMap::new()),
            offsets: Mutex::new(HashMap::new()),
            pending_commits: Mutex::new(HashMap::new()),
            pending_stores: Mutex::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            partitions: Mutex::new(Default::default()),
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn partition_for(&self, group: &str) -> i32 {
        partition_for(group, self.config.offsets_partitions)
    }

    /// Why this broker cannot serve `group` now: its groups are still loading
    /// (COORDINATOR_LOAD_IN_PROGRESS), or another broker leads the group's
    /// partition of `__consumer_offsets` (NOT_COORDINATOR: the client looks
    /// the coordinator up again). Before that topic exists, any broker may
    /// answer (the join creates it).
    fn unavailable(&self, group_id: &str) -> Option<i16> {
        if !self.is_loaded() {
            return Some(load_in_progress());
        }
        let p = self.partition_for(group_id);
        match self.replicas.get(OFFSETS_TOPIC, p) {
            Ok(_)
                if !self.partitions.lock().contains(&p)
                    && self.controller.image().topics.contains_key(OFFSETS_TOPIC) =>
            {
                // Just came to lead it: its groups load on the next tick.
                Some(load_in_progress())
            }
            Ok(_) | Err(Error::UnknownTopicOrPartition) => None,
            Err(_) => Some(ResponseError::NotCoordinator.code()),
        }
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
        let live = self
            .controller
            .image()
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .count()
            .max(1);
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

    /// Rebuilds groups and committed offsets from `__consumer_offsets`.
    pub fn load(&self) -> Result<()> {
        let started = Instant::now();
        // Records in their group's partition, and records elsewhere: Fjord
        // before Kafka's exact mapping (abs, not a mask) put some groups in
        // another partition. Those are merged in and moved below.
        let mut home = GroupsAndOffsets::default();
        let mut strays = GroupsAndOffsets::default();
        let mut stray_keys: HashMap<(i32, Bytes), bool> = HashMap::new();
        let mut records_read = 0usize;
        let mut led = Vec::new();
        if self.controller.image().topics.contains_key(OFFSETS_TOPIC) {
            for p in 0..self.config.offsets_partitions {
                if self.replicas.get(OFFSETS_TOPIC, p).is_err() {
                    continue;
                }
                led.push(p);
                records_read += self.read_partition(p, |key, raw_key, value| {
                    if self.partition_for(key.group()) == p {
                        home.apply(key, value);
                    } else {
                        stray_keys.insert((p, raw_key), value.is_some());
                        strays.apply(key, value);
                    }
                })?;
            }
        }
        let moved = home.merge_strays(strays);
        let stray_keys: Vec<(i32, Bytes)> = stray_keys
            .into_iter()
            .filter(|(_, live)| *live)
            .map(|(k, _)| k)
            .collect();
        if !stray_keys.is_empty() {
            self.move_strays(&home, &moved, stray_keys)?;
        }
        let GroupsAndOffsets { groups, offsets } = home;
        let now = Instant::now();
        let mut cache = self.groups.lock();
        for (id, v) in groups {
            cache.insert(id.clone(), Group::from_value(&id, v, now));
        }
        *self.offsets.lock() = offsets;
        self.pending_commits.lock().clear();
        drop(cache);
        *self.partitions.lock() = led.into_iter().collect();
        self.loaded.store(true, Ordering::Release);
        tracing::info!(
            records = records_read,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "group coordinator loaded"
        );
        Ok(())
    }

    /// Reads one partition of `__consumer_offsets` up to its high watermark,
    /// handing each record's key, raw key and value to `f`; answers the
    /// number of records read.
    fn read_partition(&self, p: i32, mut f: impl FnMut(RecordKey, Bytes, Option<Bytes>)) -> Result<usize> {
        let part = self.replicas.get(OFFSETS_TOPIC, p)?;
        let mut read_count = 0;
        let mut next = part.log.log_start_offset();
        let end = part.high_watermark();
        while next < end {
            let read = part.read(next, 4 << 20, true)?;
            if read.records.is_empty() {
                break;
            }
            for (at, h) in batch::complete_batches(&read.records) {
                next = h.next_offset();
                if h.is_control() {
                    continue;
                }
                let mut one = read.records.slice(at..at + h.total_size());
                let set = match RecordBatchDecoder::decode(&mut one) {
                    Ok(set) => set,
                    Err(e) => {
                        tracing::warn!(partition = p, offset = h.base_offset(), error = %e, "skipping undecodable batch");
                        continue;
                    }
                };
                for r in set.records {
                    read_count += 1;
                    let Some(raw_key) = r.key else { continue };
                    match RecordKey::decode(raw_key.clone()) {
                        Ok(key) => f(key, raw_key, r.value),
                        Err(e) => tracing::warn!(partition = p, error = %e, "skipping record"),
                    }
                }
            }
        }
        Ok(read_count)
    }

    /// Follows leadership of `__consumer_offsets`: loads the groups of a
    /// partition this broker has come to lead, and drops those of one it no
    /// longer leads (their members find the new coordinator). Called a few
    /// times a second; cheap when nothing moved.
    pub fn follow_leadership(&self) {
        if !self.is_loaded() {
            return;
        }
        let led: std::collections::BTreeSet<i32> = (0..self.config.offsets_partitions)
            .filter(|p| self.replicas.get(OFFSETS_TOPIC, *p).is_ok())
            .collect();
        let known = self.partitions.lock().clone();
        if led == known {
            return;
        }
        for p in known.difference(&led) {
            let mut groups = self.groups.lock();
            groups.retain(|id, _| self.partition_for(id) != *p);
            self.offsets.lock().retain(|id, _| self.partition_for(id) != *p);
            self.pending_commits.lock().retain(|id, _| self.partition_for(id) != *p);
            self.pending_stores.lock().retain(|id, _| self.partition_for(id) != *p);
            self.partitions.lock().remove(p);
            tracing::info!(
                partition = p,
                "no longer coordinator for the groups of {OFFSETS_TOPIC}-{p}"
            );
        }
        for p in led.difference(&known) {
            let mut state = GroupsAndOffsets::default();
            let started = Instant::now();
            let read = self.read_partition(*p, |key, _, value| {
                // Records of groups that live elsewhere were moved by the first load.
                if self.partition_for(key.group()) == *p {
                    state.apply(key, value);
                }
            });
            match read {
                Ok(records) => {
                    let now = Instant::now();
                    let mut groups = self.groups.lock();
                    groups.retain(|id, _| self.partition_for(id) != *p);
                    for (id, v) in state.groups {
                        groups.insert(id.clone(), Group::from_value(&id, v, now));
                    }
                    let mut offsets = self.offsets.lock();
                    offsets.retain(|id, _| self.partition_for(id) != *p);
                    offsets.extend(state.offsets);
                    self.pending_commits.lock().retain(|id, _| self.partition_for(id) != *p);
                    self.partitions.lock().insert(*p);
                    tracing::info!(
                        partition = p,
                        records,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "became coordinator for the groups of {OFFSETS_TOPIC}-{p}"
                    );
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "loading groups failed; retrying"),
            }
        }
    }

    /// Writes the state of groups found outside their partition into it,
    /// then tombstones the records where they were found. A crash in between
    /// leaves both copies; the next load prefers the group's own partition
    /// and moves again.
    fn move_strays(&self, state: &GroupsAndOffsets, groups: &[String], stray_keys: Vec<(i32, Bytes)>) -> Result<()> {
        for group in groups {
            let mut records = Vec::new();
            if let Some(v) = state.groups.get(group) {
                records.push((RecordKey::Group { group: group.clone() }.encode()?, Some(v.encode()?)));
            }
            for ((topic, partition), v) in state.offsets.get(group).into_iter().flatten() {
                let key = RecordKey::Offset {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                };
                records.push((key.encode()?, Some(v.encode()?)));
            }
            self.append(group, records)?;
        }
        let mut by_partition: BTreeMap<i32, Vec<(Bytes, Option<Bytes>)>> = BTreeMap::new();
        for (p, key) in stray_keys {
            by_partition.entry(p).or_default().push((key, None));
        }
        for (p, tombstones) in by_partition {
            self.append_to(p, tombstones)?;
        }
        tracing::info!(
            groups = groups.len(),
            "moved groups to their __consumer_offsets partition (abs(hashCode) % partitions, as Kafka)"
        );
        Ok(())
    }

    /// Deletes records of the group: tombstones for `keys`.
    fn append_tombstones(&self, group: &str, keys: &[RecordKey]) -> Result<i64> {
        let records = keys
            .iter()
            .map(|k| Ok((k.encode()?, None)))
            .collect::<Result<Vec<_>>>()?;
        self.append(group, records)
    }

    /// Appends records to the group's `__consumer_offsets` partition; answers
    /// the offset of the last one (-1 when there was none).
    fn append(&self, group: &str, records: Vec<(Bytes, Option<Bytes>)>) -> Result<i64> {
        self.append_to(self.partition_for(group), records)
    }

    fn append_to(&self, partition: i32, records: Vec<(Bytes, Option<Bytes>)>) -> Result<i64> {
        if records.is_empty() {
            return Ok(-1);
        }
        // A client reaches a coordinator through FindCoordinator, which made the topic.
        let part = self.replicas.get(OFFSETS_TOPIC, partition)?;
        let ts = now_ms();
        let mut recs: Vec<Record> = records
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| batch::plain_record(i as i64, ts, Some(key), value))
            .collect();
        let batch = batch::encode_records(&mut recs, Compression::None, -1, -1, -1).map_err(Error::CorruptMessage)?;
        crate::blocking::blocking(|| {
            let (info, _) = part.append(&batch, -1)?;
            if info.flush_due {
                // Only with a flush.messages override on __consumer_offsets.
                part.log.flush_through_end()?;
            }
            Ok::<_, Error>(info.last_offset)
        })
    }

    /// Writes the group record if the group changed. A failed write is told
    /// to the group at once (members waiting in SyncGroup get the error); a
    /// record holding the leader's assignment is pending until replicated
    /// ([`GroupCoordinator::complete_stores`]).
    fn persist_group(&self, group: &mut Group, now: Instant) {
        if !group.needs_persist {
            return;
        }
        group.needs_persist = false;
        let key = RecordKey::Group {
            group: group.id.clone(),
        };
        // Strings that do not fit the record are refused, never stored truncated.
        let stored = key
            .encode()
            .and_then(|key| Ok((key, Some(group.to_value().encode()?))))
            .map_err(Error::from)
            .and_then(|record| self.append(&group.id, vec![record]))
            .map_err(|e| {
                tracing::error!(group = %group.id, error = %e, "persisting group metadata failed");
                e.coordinator_write_error().code()
            });
        match stored {
            Err(code) => group.store_completed(Err(code), now, &self.config.limits),
            Ok(record_offset) if group.awaits_store() => {
                self.pending_stores.lock().insert(
                    group.id.clone(),
                    PendingStore {
                        record_offset,
                        generation: group.generation,
                        deadline: now + self.config.offsets_commit_timeout,
                    },
                );
            }
            Ok(_) => {}
        }
    }

    /// Completes the pending group stores (of `only` that group, or all)
    /// whose record the partition's high watermark has passed: their members
    /// get the assignment. One past `offsets.commit.timeout.ms`, or whose
    /// partition is no longer led here, fails: its members get the error and
    /// rejoin.
    fn complete_stores(&self, only: Option<&str>) {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let done: Vec<(String, Result<(), i16>)> = {
            let mut pending = self.pending_stores.lock();
            let mut done = Vec::new();
            pending.retain(|id, store| {
                if only.is_some_and(|g| g != id) {
                    return true;
                }
                let current = groups
                    .get(id)
                    .is_some_and(|g| g.generation == store.generation && g.awaits_store());
                if !current {
                    return false;
                }
                let outcome = match self.replicas.get(OFFSETS_TOPIC, self.partition_for(id)) {
                    Ok(part) if part.high_watermark() > store.record_offset => Ok(()),
                    Ok(_) if now < store.deadline => return true,
                    Ok(_) => Err(ResponseError::CoordinatorNotAvailable.code()),
                    Err(_) => Err(ResponseError::NotCoordinator.code()),
                };
                done.push((id.clone(), outcome));
                false
            });
            done
        };
        for (id, outcome) in done {
            if let Some(g) = groups.get_mut(&id) {
                if let Err(code) = outcome {
                    tracing::warn!(group = %id, code, "group assignment not replicated");
                }
                g.store_completed(outcome, now, &self.config.limits);
                self.persist_group(g, now);
            }
        }
    }

    /// Waits (bounded by `offsets.commit.timeout.ms`) until the group's
    /// `__consumer_offsets` partition has replicated through `record_offset`.
    async fn wait_replicated(&self, group_id: &str, record_offset: i64) {
        let Ok(part) = self.replicas.get(OFFSETS_TOPIC, self.partition_for(group_id)) else {
            return;
        };
        let replicated = part.wait_for_high_watermark(record_offset, part.leader_epoch());
        let _ = tokio::time::timeout(self.config.offsets_commit_timeout, replicated).await;
    }

    /// Runs `f` on the group (created if missing), persists what it changed,
    /// and drops groups that were created for nothing.
    fn with_group<T>(&self, group_id: &str, f: impl FnOnce(&mut Group) -> T) -> T {
        let mut groups = self.groups.lock();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id));
        let out = f(group);
        self.persist_group(group, Instant::now());
        if group.is_unused() {
            groups.remove(group_id);
        }
        out
    }

    pub async fn join(&self, group_id: &str, req: JoinRequest) -> JoinResult {
        if let Some(error) = self.unavailable(group_id) {
            return JoinResult {
                error,
                generation: -1,
                member_id: req.member_id,
                ..Default::default()
            };
        }
        if !valid_group_id(group_id) {
            return JoinResult {
                error: ResponseError::InvalidGroupId.code(),
                generation: -1,
                ..Default::default()
            };
        }
        if !self.controller.image().topics.contains_key(OFFSETS_TOPIC) {
            // Not found through FindCoordinator yet: the client looks again.
            return JoinResult {
                error: ResponseError::CoordinatorNotAvailable.code(),
                generation: -1,
                ..Default::default()
            };
        }
        let member_id = req.member_id.clone();
        let limits = self.config.limits.clone();
        let reply = self.with_group(group_id, |g| g.join(req, Instant::now(), &limits));
        match reply {
            Reply::Now(r) => r,
            Reply::Wait(rx) => rx.await.unwrap_or(JoinResult {
                error: ResponseError::UnknownMemberId.code(),
                generation: -1,
                member_id,
                ..Default::default()
            }),
        }
    }

    pub async fn sync(&self, group_id: &str, req: SyncRequest) -> SyncResult {
        if let Some(error) = self.unavailable(group_id) {
            return SyncResult {
                error,
                ..Default::default()
            };
        }
        let exists = self.groups.lock().contains_key(group_id);
        if !exists {
            return SyncResult {
                error: ResponseError::UnknownMemberId.code(),
                ..Default::default()
            };
        }
        let reply = self.with_group(group_id, |g| g.sync(req, Instant::now()));
        // The leader's assignment is handed out once its record is replicated
        // (the ticker completes it too, should this request go away).
        let pending = self.pending_stores.lock().get(group_id).map(|s| s.record_offset);
        if let Some(record_offset) = pending {
            self.wait_replicated(group_id, record_offset).await;
            self.complete_stores(Some(group_id));
        }
        match reply {
            Reply::Now(r) => r,
            Reply::Wait(rx) => rx.await.unwrap_or(SyncResult {
                error: ResponseError::RebalanceInProgress.code(),
                ..Default::default()
            }),
        }
    }

    pub fn heartbeat(&self, group_id: &str, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        if let Some(error) = self.unavailable(group_id) {
            return error;
        }
        let mut groups = self.groups.lock();
        match groups.get_mut(group_id) {
            Some(g) => g.heartbeat(member_id, instance_id, generation, Instant::now()),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// Returns the group-level error and one code per member.
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> (i16, Vec<i16>) {
        if let Some(error) = self.unavailable(group_id) {
            return (error, vec![]);
        }
        if !self.groups.lock().contains_key(group_id) {
            return (0, vec![ResponseError::UnknownMemberId.code(); members.len()]);
        }
        let limits = self.config.limits.clone();
        (
            0,
            self.with_group(group_id, |g| g.leave(members, Instant::now(), &limits)),
        )
    }

    /// Timers of every group; called a few times a second.
    pub fn tick(&self) {
        if !self.is_loaded() {
            return;
        }
        let now = Instant::now();
        let mut groups = self.groups.lock();
        for g in groups.values_mut() {
            g.tick(now, &self.config.limits);
            self.persist_group(g, now);
        }
        drop(groups);
        self.complete_stores(None);
    }

    /// OffsetCommit as Kafka answers it: once the offsets are replicated to
    /// the ISR of the group's `__consumer_offsets` partition (its high
    /// watermark passed them), or COORDINATOR_NOT_AVAILABLE (retriable)
    /// after `offsets.commit.timeout.ms`, so an answered commit survives the
    /// coordinator's death. Until then the commit is pending: OffsetFetch
    /// does not return it.
    pub async fn commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<CommitRequest>,
    ) -> Vec<(String, i32, i16)> {
        let (mut results, record_offset) = self.append_commit(group_id, member_id, instance_id, generation, offsets);
        let Some(record_offset) = record_offset else {
            return results;
        };
        let Ok(part) = self.replicas.get(OFFSETS_TOPIC, self.partition_for(group_id)) else {
            return results;
        };
        let replicated = tokio::time::timeout(
            self.config.offsets_commit_timeout,
            part.wait_for_high_watermark(record_offset, part.leader_epoch()),
        );
        let failed = match replicated.await {
            Ok(Ok(())) => {
                self.complete_commits(group_id);
                return results;
            }
            // The group's partition moved to another broker: find the new coordinator.
            Ok(Err(_)) => ResponseError::NotCoordinator,
            Err(_) => ResponseError::CoordinatorNotAvailable,
        };
        // Still pending: it becomes committed if its record is replicated
        // after all (a later commit or fetch finds it so), as the log says.
        tracing::warn!(group = group_id, error = ?failed, "offset commit not replicated");
        for r in results.iter_mut().filter(|r| r.2 == 0) {
            r.2 = failed.code();
        }
        results
    }

    /// Moves the group's pending commits its partition has replicated into
    /// the committed offsets.
    fn complete_commits(&self, group_id: &str) {
        let Ok(part) = self.replicas.get(OFFSETS_TOPIC, self.partition_for(group_id)) else {
            return;
        };
        let mut offsets = self.offsets.lock();
        let mut pending = self.pending_commits.lock();
        let Some(waiting) = pending.get_mut(group_id) else {
            return;
        };
        let hw = part.high_watermark();
        let replicated: Vec<(String, i32)> = waiting
            .iter()
            .filter(|(_, c)| c.record_offset < hw)
            .map(|(tp, _)| tp.clone())
            .collect();
        if replicated.is_empty() {
            return;
        }
        let committed = offsets.entry(group_id.to_string()).or_default();
        for tp in replicated {
            if let Some(c) = waiting.remove(&tp) {
                committed.insert(tp, c.value);
            }
        }
        if waiting.is_empty() {
            pending.remove(group_id);
        }
    }

    /// Validates and appends an offset commit; answers each partition's code
    /// and the offset of the record, when one was appended.
    fn append_commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<CommitRequest>,
    ) -> (Vec<(String, i32, i16)>, Option<i64>) {
        let fail_all = |code: i16, offsets: Vec<CommitRequest>| {
            let results = offsets.into_iter().map(|o| (o.topic, o.partition, code)).collect();
            (results, None)
        };
        if let Some(error) = self.unavailable(group_id) {
            return fail_all(error, offsets);
        }
        if !valid_group_id(group_id) {
            return fail_all(ResponseError::InvalidGroupId.code(), offsets);
        }
        let check = {
            let groups = self.groups.lock();
            match groups.get(group_id) {
                Some(g) => g.validate_commit(member_id, instance_id, generation),
                None if generation < 0 && member_id.is_empty() => Ok(()),
                None => Err(ResponseError::UnknownMemberId.code()),
            }
        };
        if let Err(code) = check {
            return fail_all(code, offsets);
        }
        let ts = now_ms();
        // Any partition the cluster has may be committed, wherever it is led.
        let image = self.controller.image();
        let exists = |topic: &str, partition: i32| {
            image
                .topics
                .get(topic)
                .is_some_and(|t| (0..t.partitions).contains(&partition))
        };
        let mut results = Vec::with_capacity(offsets.len());
        let mut records = Vec::new();
        let mut accepted = Vec::new();
        for o in offsets {
            let metadata = o.metadata.unwrap_or_default();
            let code = if metadata.len() > self.config.offset_metadata_max_bytes.min(i16::MAX as usize) {
                ResponseError::OffsetMetadataTooLarge.code()
            } else if !exists(&o.topic, o.partition) {
                ResponseError::UnknownTopicOrPartition.code()
            } else {
                0
            };
            if code == 0 {
                let value = OffsetValue {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata,
                    commit_timestamp: ts,
                };
                let key = RecordKey::Offset {
                    group: group_id.to_string(),
                    topic: o.topic.clone(),
                    partition: o.partition,
                };
                match key.encode().and_then(|k| Ok((k, Some(value.encode()?)))) {
                    Ok(record) => {
                        records.push(record);
                        accepted.push((o.topic.clone(), o.partition, value));
                    }
                    Err(e) => {
                        results.push((o.topic, o.partition, Error::from(e).code()));
                        continue;
                    }
                }
            }
            results.push((o.topic, o.partition, code));
        }
        if accepted.is_empty() {
            return (results, None);
        }
        // Appended and registered as pending under one lock, so that a
        // concurrent commit's completion cannot pass over this one.
        let mut pending = self.pending_commits.lock();
        let record_offset = match self.append(group_id, records) {
            Ok(at) => at,
            Err(e) => {
                tracing::error!(group = group_id, error = %e, "writing offsets failed");
                let code = e.coordinator_write_error().code();
                for r in results.iter_mut().filter(|r| r.2 == 0) {
                    r.2 = code;
                }
                return (results, None);
            }
        };
        let waiting = pending.entry(group_id.to_string()).or_default();
        for (topic, partition, value) in accepted {
            waiting.insert((topic, partition), PendingCommit { record_offset, value });
        }
        (results, Some(record_offset))
    }

    /// Committed offsets of a group: the listed partitions, or all of them.
    /// Only replicated commits are returned; with `require_stable`, a
    /// partition with a commit still pending answers UNSTABLE_OFFSET_COMMIT
    /// (KIP-447) so the client retries, and without it, the last replicated
    /// commit.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<Vec<(String, i32)>>,
        require_stable: bool,
    ) -> Result<Vec<FetchedOffset>, i16> {
        if let Some(error) = self.unavailable(group_id) {
            return Err(error);
        }
        self.complete_commits(group_id);
        let cache = self.offsets.lock();
        let pending = self.pending_commits.lock();
        let group = cache.get(group_id);
        let waiting = pending.get(group_id);
        let fetched = |t: String, p: i32, c: Option<&Committed>| {
            let unstable = require_stable && waiting.is_some_and(|w| w.contains_key(&(t.clone(), p)));
            let committed = if unstable {
                Err(ResponseError::UnstableOffsetCommit.code())
            } else {
                Ok(c.cloned())
            };
            FetchedOffset {
                topic: t,
                partition: p,
                committed,
            }
        };
        Ok(match partitions {
            Some(list) => list
                .into_iter()
                .map(|(t, p)| {
                    let c = group.and_then(|g| g.get(&(t.clone(), p)));
                    fetched(t, p, c)
                })
                .collect(),
            None => group
                .map(|g| g.iter().map(|((t, p), c)| fetched(t.clone(), *p, Some(c))).collect())
                .unwrap_or_default(),
        })
    }

    /// Every replicated committed offset of a group (the admin API's view).
    pub fn committed(&self, group_id: &str) -> Result<Vec<(String, i32, Committed)>, i16> {
        let fetched = self.fetch_offsets(group_id, None, false)?;
        Ok(fetched
            .into_iter()
            .filter_map(|f| Some((f.topic, f.partition, f.committed.ok()??)))
            .collect())
    }

    pub fn list(&self) -> Result<Vec<(String, String, &'static str)>, i16> {
        if !self.is_loaded() {
            return Err(load_in_progress());
        }
        let groups = self.groups.lock();
        let mut out: Vec<(String, String, &'static str)> = groups
            .values()
            .map(|g| {
                (
                    g.id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state.name(),
                )
            })
            .collect();
        // Groups that only have committed offsets (manual assignment) are listed as Empty.
        for id in self.offsets.lock().keys() {
            if !groups.contains_key(id) {
                out.push((id.clone(), String::new(), GroupState::Empty.name()));
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn describe(&self, group_id: &str) -> Result<GroupDescription, i16> {
        if let Some(error) = self.unavailable(group_id) {
            return Err(error);
        }
        let groups = self.groups.lock();
        let Some(g) = groups.get(group_id) else {
            // Kafka describes an unknown group as Dead with no members.
            return Ok(GroupDescription {
                group_id: group_id.to_string(),
                state: if self.offsets.lock().contains_key(group_id) {
                    "Empty"
                } else {
                    "Dead"
                },
                protocol_type: String::new(),
                protocol: String::new(),
                members: vec![],
            });
        };
        let protocol = g.protocol_name.clone().unwrap_or_default();
        let stable = matches!(g.state, GroupState::Stable);
        Ok(GroupDescription {
            group_id: g.id.clone(),
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if stable || g.state == GroupState::CompletingRebalance {
                protocol.clone()
            } else {
                String::new()
            },
            members: g
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.subscription(Some(&protocol))
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable { m.assignment.clone() } else { Bytes::new() },
                })
                .collect(),
        })
    }

    /// Deletes empty groups and their offsets (tombstones in the log).
    pub fn delete_group(&self, group_id: &str) -> i16 {
        if let Some(error) = self.unavailable(group_id) {
            return error;
        }
        let mut groups = self.groups.lock();
        match groups.get(group_id) {
            Some(g) if !g.is_empty() => return ResponseError::NonEmptyGroup.code(),
            None if !self.offsets.lock().contains_key(group_id) => return ResponseError::GroupIdNotFound.code(),
            _ => {}
        }
        let mut keys = vec![RecordKey::Group {
            group: group_id.to_string(),
        }];
        let mut offsets = self.offsets.lock();
        if let Some(committed) = offsets.get(group_id) {
            keys.extend(committed.keys().map(|(topic, partition)| RecordKey::Offset {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition: *partition,
            }));
        }
        if let Err(e) = self.append_tombstones(group_id, &keys) {
            return e.coordinator_write_error().code();
        }
        offsets.remove(group_id);
        self.pending_commits.lock().remove(group_id);
        groups.remove(group_id);
        0
    }

    /// OffsetDelete: only for topics the group is not consuming.
    pub fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<(String, i32, i16)>, i16> {
        if let Some(error) = self.unavailable(group_id) {
            return Err(error);
        }
        let subscribed = {
            let groups = self.groups.lock();
            match groups.get(group_id) {
                Some(g) if !g.is_empty() => subscribed_topics(g).unwrap_or_default(),
                Some(_) => Vec::new(),
                None if self.offsets.lock().contains_key(group_id) => Vec::new(),
                None => return Err(ResponseError::GroupIdNotFound.code()),
            }
        };
        let mut keys = Vec::new();
        let mut results = Vec::new();
        for (topic, partition) in partitions {
            if subscribed.contains(&topic) {
                results.push((topic, partition, ResponseError::GroupSubscribedToTopic.code()));
                continue;
            }
            keys.push(RecordKey::Offset {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition,
            });
            results.push((topic, partition, 0));
        }
        if let Err(e) = self.append_tombstones(group_id, &keys) {
            return Err(e.coordinator_write_error().code());
        }
        let mut cache = self.offsets.lock();
        let mut pending = self.pending_commits.lock();
        for (t, p, code) in &results {
            if *code == 0 {
                let tp = (t.clone(), *p);
                if let Some(g) = cache.get_mut(group_id) {
                    g.remove(&tp);
                }
                // A commit still on its way is deleted as well (its record precedes the tombstone).
                if let Some(w) = pending.get_mut(group_id) {
                    w.remove(&tp);
                }
            }
        }
        Ok(results)
    }

    /// Expires the offsets of groups that stayed empty for `offsets.retention.minutes`.
    /// Kafka's cleanupGroupMetadata: expires offsets, then deletes groups
    /// left Empty with none (Dead, a tombstone in `__consumer_offsets`), so
    /// ListGroups and memory do not grow without bound. Offsets of an Empty
    /// group expire `offsets.retention.minutes` after it became empty (or
    /// after their commit, if later); those of a Stable consumer group only
    /// for topics no member subscribes to (KIP-211), counted from the commit.
    pub fn expire_offsets(&self) -> usize {
        if !self.is_loaded() {
            return 0;
        }
        let retention = self.config.offsets_retention.as_millis() as i64;
        let now = now_ms();
        let mut groups = self.groups.lock();
        let mut offsets = self.offsets.lock();
        let mut expired = 0;
        for (group_id, committed) in offsets.iter_mut() {
            let (empty_since, subscribed) = match groups.get(group_id) {
                None => (i64::MIN, Vec::new()),
                Some(g) if g.is_empty() => (g.state_timestamp, Vec::new()),
                Some(g) if g.state == GroupState::Stable => match subscribed_topics(g) {
                    Some(topics) => (i64::MIN, topics),
                    None => continue,
                },
                Some(_) => continue,
            };
            let doomed: Vec<(String, i32)> = committed
                .iter()
                .filter(|((topic, _), c)| {
                    !subscribed.contains(topic) && now - c.commit_timestamp.max(empty_since) > retention
                })
                .map(|(k, _)| k.clone())
                .collect();
            if doomed.is_empty() {
                continue;
            }
            let keys: Vec<RecordKey> = doomed
                .iter()
                .map(|(t, p)| RecordKey::Offset {
                    group: group_id.clone(),
                    topic: t.clone(),
                    partition: *p,
                })
                .collect();
            if self.append_tombstones(group_id, &keys).is_ok() {
                for k in &doomed {
                    committed.remove(k);
                }
                expired += doomed.len();
            }
        }
        offsets.retain(|_, c| !c.is_empty());
        let dead: Vec<String> = groups
            .values()
            .filter(|g| g.state == GroupState::Empty && g.members.is_empty() && !offsets.contains_key(&g.id))
            .map(|g| g.id.clone())
            .collect();
        for id in dead {
            if self
                .append_tombstones(&id, &[RecordKey::Group { group: id.clone() }])
                .is_ok()
            {
                tracing::info!(group = %id, "group is empty with no committed offsets left: deleted");
                groups.remove(&id);
            }
        }
        expired
    }

    /// (group, topic, partition, committed offset) of every committed offset, for lag.
    pub fn committed_snapshot(&self) -> Vec<(String, String, i32, i64)> {
        let cache = self.offsets.lock();
        cache
            .iter()
            .flat_map(|(g, offsets)| {
                offsets
                    .iter()
                    .map(move |((t, p), c)| (g.clone(), t.clone(), *p, c.offset))
            })
            .collect()
    }

    /// Current generation and rebalance count of a group.
    pub fn generation(&self, group_id: &str) -> Option<(i32, u64)> {
        self.groups.lock().get(group_id).map(|g| (g.generation, g.rebalances))
    }

    pub fn member_counts(&self) -> Vec<(String, usize, &'static str)> {
        self.groups
            .lock()
            .values()
            .map(|g| (g.id.clone(), g.members.len(), g.state.name()))
            .collect()
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }
}

/// Topics in the members' consumer-protocol subscriptions; None when the
/// group does not use the consumer protocol or a subscription cannot be read
/// (then nothing is known to be unsubscribed, as Kafka's subscribedTopics).
fn subscribed_topics(g: &Group) -> Option<Vec<String>> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    if g.protocol_type.as_deref() != Some("consumer") {
        return None;
    }
    let mut topics = Vec::new();
    for m in g.members.values() {
        let mut meta = m.subscription(g.protocol_name.as_deref());
        if meta.len() < 2 {
            return None;
        }
        let version = i16::from_be_bytes([meta[0], meta[1]]);
        let _ = bytes::Buf::get_i16(&mut meta);
        // A member's bytes, from the network: a panic in the codec is a subscription we cannot read.
        let sub = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ConsumerProtocolSubscription::decode(&mut meta, version.clamp(0, 3))
        }))
        .ok()?
        .ok()?;
        topics.extend(sub.topics.into_iter().map(|t| t.as_str().to_string()));
    }
    Some(topics)
}

/// Groups and committed offsets as read from `__consumer_offsets`.
#[derive(Default)]
struct GroupsAndOffsets {
    groups: HashMap<String, GroupValue>,
    offsets: OffsetCache,
}

impl GroupsAndOffsets {
    /// Applies one record: a value replaces, a tombstone removes.
    fn apply(&mut self, key: RecordKey, value: Option<Bytes>) {
        match key {
            RecordKey::Offset {
                group,
                topic,
                partition,
            } => match value.map(OffsetValue::decode) {
                Some(Ok(v)) => {
                    self.offsets.entry(group).or_default().insert((topic, partition), v);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "skipping offset record"),
                None => {
                    if let Some(g) = self.offsets.get_mut(&group) {
                        g.remove(&(topic, partition));
                        if g.is_empty() {
                            self.offsets.remove(&group);
                        }
                    }
                }
            },
            RecordKey::Group { group } => match value.map(GroupValue::decode) {
                Some(Ok(v)) => {
                    self.groups.insert(group, v);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "skipping group record"),
                None => {
                    self.groups.remove(&group);
                }
            },
        }
    }

    /// Takes what `strays` holds that this does not (this state wins); returns
    /// the groups that had strays.
    fn merge_strays(&mut self, strays: GroupsAndOffsets) -> Vec<String> {
        let mut moved: Vec<String> = strays.groups.keys().chain(strays.offsets.keys()).cloned().collect();
        moved.sort();
        moved.dedup();
        for (id, v) in strays.groups {
            self.groups.entry(id).or_insert(v);
        }
        for (group, offsets) in strays.offsets {
            let mine = self.offsets.entry(group).or_default();
            for (tp, v) in offsets {
                mine.entry(tp).or_insert(v);
            }
        }
        moved
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
        let controller = Controller::start(dir.path(), config.clone()).await.unwrap();
        controller.wait_for_cluster_id().await.unwrap();
        let replicas = Arc::new(ReplicaManager::new(LogManager::open(dir.path()).unwrap()));
        {
            let (replicas, config) = (replicas.clone(), config.clone());
            controller
                .subscribe(Box::new(move |image| {
                    // Failures are logged per partition; the rest of the image is applied.
                    replicas.apply(image, &config);
                    Ok(())
                }))
                .unwrap();
        }
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
        assert!(groups.offsets.lock().is_empty(), "dropped from the cache");

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
        let controller = Controller::start(dir.path(), config.clone()).await.unwrap();
        controller.wait_for_cluster_id().await.unwrap();
        let replicas = Arc::new(ReplicaManager::new(LogManager::open(dir.path()).unwrap()));
        {
            let (replicas, config) = (replicas.clone(), config.clone());
            controller
                .subscribe(Box::new(move |image| {
                    replicas.apply(image, &config);
                    Ok(())
                }))
                .unwrap();
        }
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
        part.record_follower_fetch(1, part.log.log_end_offset(), 0, now_ms());
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
            groups.pending_stores.lock().contains_key(&group)
        });
        assert_eq!(groups.describe(&group).ok().unwrap().state, "CompletingRebalance");
        assert!(!sync.is_finished());
        part.record_follower_fetch(1, part.log.log_end_offset(), 0, now_ms());
        let synced = tokio::time::timeout(bound, sync).await.unwrap().unwrap();
        assert_eq!((synced.error, synced.assignment), (0, Bytes::from_static(b"A")));
        assert_eq!(groups.describe(&group).ok().unwrap().state, "Stable");
        ticker.abort();
        controller.shutdown().await;
    }
}
