//! Loading a coordinator's shards from `__consumer_offsets`: all led
//! partitions at start-up, then each partition this broker comes to lead
//! (and dropping each it stops leading), as Kafka's coordinator follows the
//! leadership of its partitions.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::coordinator::{GroupCoordinator, OffsetCache, PendingTxnOffsets, Shard};
use super::records::{GroupValue, OffsetValue, RecordKey};
use super::state::Group;
use super::OFFSETS_TOPIC;
use crate::error::Result;
use crate::log::batch;
use crate::log::marker::{self, Marker};

impl GroupCoordinator {
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
        let mut pending_txn = Vec::new();
        if self.controller.image().topics.contains_key(OFFSETS_TOPIC) {
            for p in 0..self.config.offsets_partitions {
                if self.replicas.get(OFFSETS_TOPIC, p).is_err() {
                    continue;
                }
                led.push(p);
                let mut open = OpenTxnOffsets::default();
                records_read += self.read_partition(p, &mut open, |key, raw_key, value| {
                    if self.partition_for(key.group()) == p {
                        home.apply(key, value);
                    } else {
                        stray_keys.insert((p, raw_key), value.is_some());
                        strays.apply(key, value);
                    }
                })?;
                pending_txn.push((p, open.into_pending()));
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
        // Markers written while this ran are applied once the shards are in.
        let mut ended: Vec<Vec<(i64, bool)>> = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let mut shard = shard.lock();
            ended.push(std::mem::take(&mut shard.ended_while_loading));
            *shard = Shard::default();
        }
        for (id, v) in groups {
            let group = Group::from_value(&id, v, now);
            self.shard(&id).groups.insert(id, group);
        }
        for (id, committed) in offsets {
            self.shard(&id).offsets.insert(id, committed);
        }
        for (p, pending) in pending_txn {
            self.shards[p as usize].lock().pending_txn_offsets = pending;
        }
        for p in led {
            let mut shard = self.shards[p as usize].lock();
            shard.loaded = true;
            let mut all = std::mem::take(&mut ended[p as usize]);
            all.append(&mut shard.ended_while_loading);
            for (producer_id, commit) in all {
                shard.end_txn(producer_id, commit);
            }
        }
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
    /// number of records read. Transactional offsets reach `f` when their
    /// commit marker is read (an abort drops them); those of transactions
    /// still open are left in `open`.
    fn read_partition(
        &self,
        p: i32,
        open: &mut OpenTxnOffsets,
        mut f: impl FnMut(RecordKey, Bytes, Option<Bytes>),
    ) -> Result<usize> {
        let part = self.replicas.get(OFFSETS_TOPIC, p)?;
        let mut read_count = 0;
        let mut next = part.log_start_offset();
        let end = part.high_watermark();
        while next < end {
            let read = part.read(next, 4 << 20, true)?;
            if read.records.is_empty() {
                break;
            }
            for (at, h) in batch::complete_batches(&read.records) {
                next = h.next_offset();
                if h.is_control() {
                    let ended = open.0.remove(&h.producer_id());
                    if let (Some(records), Some(Marker::Commit)) = (ended, marker::decode(h.bytes())) {
                        for (key, raw_key, value) in records {
                            f(key, raw_key, value);
                        }
                    }
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
                        Ok(key) if h.is_transactional() => {
                            open.0.entry(h.producer_id()).or_default().push((key, raw_key, r.value));
                        }
                        Ok(key) => f(key, raw_key, r.value),
                        Err(e) => tracing::warn!(partition = p, error = %e, "skipping record"),
                    }
                }
            }
        }
        Ok(read_count)
    }

    /// Follows leadership of `__consumer_offsets`: loads the shard of a
    /// partition this broker has come to lead, and drops the shard of one it
    /// no longer leads (their members find the new coordinator). Called a
    /// few times a second; cheap when nothing moved.
    pub fn follow_leadership(&self) {
        if !self.is_loaded() {
            return;
        }
        for p in 0..self.config.offsets_partitions {
            let led = self.replicas.get(OFFSETS_TOPIC, p).is_ok();
            let loaded = self.shards[p as usize].lock().loaded;
            if loaded && !led {
                *self.shards[p as usize].lock() = Shard::default();
                tracing::info!(
                    partition = p,
                    "no longer coordinator for the groups of {OFFSETS_TOPIC}-{p}"
                );
            } else if led && !loaded {
                self.load_shard(p);
            }
        }
    }

    /// Reads a newly led partition into its shard. Requests for its groups
    /// get COORDINATOR_LOAD_IN_PROGRESS until it is loaded, so the shard is
    /// not locked while the log is read.
    fn load_shard(&self, p: i32) {
        let mut state = GroupsAndOffsets::default();
        let mut open = OpenTxnOffsets::default();
        let started = Instant::now();
        let read = self.read_partition(p, &mut open, |key, _, value| {
            // Records of groups that live elsewhere were moved by the first load.
            if self.partition_for(key.group()) == p {
                state.apply(key, value);
            }
        });
        match read {
            Ok(records) => {
                let now = Instant::now();
                let groups = state
                    .groups
                    .into_iter()
                    .map(|(id, v)| {
                        let group = Group::from_value(&id, v, now);
                        (id, group)
                    })
                    .collect();
                self.shards[p as usize].lock().install(Shard {
                    loaded: true,
                    groups,
                    offsets: state.offsets,
                    pending_txn_offsets: open.into_pending(),
                    ..Shard::default()
                });
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
}

/// Records of transactions read without their marker yet, by producer id.
#[derive(Default)]
struct OpenTxnOffsets(HashMap<i64, Vec<(RecordKey, Bytes, Option<Bytes>)>>);

impl OpenTxnOffsets {
    /// The offsets of transactions still open after a load: pending until their marker.
    fn into_pending(self) -> PendingTxnOffsets {
        let mut pending = PendingTxnOffsets::new();
        for (producer_id, records) in self.0 {
            for (key, _, value) in records {
                let (
                    RecordKey::Offset {
                        group,
                        topic,
                        partition,
                    },
                    Some(value),
                ) = (key, value)
                else {
                    continue;
                };
                match OffsetValue::decode(value) {
                    Ok(v) => {
                        pending
                            .entry(producer_id)
                            .or_default()
                            .entry(group)
                            .or_default()
                            .insert((topic, partition), v);
                    }
                    Err(e) => tracing::warn!(error = %e, "skipping transactional offset record"),
                }
            }
        }
        pending
    }
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
