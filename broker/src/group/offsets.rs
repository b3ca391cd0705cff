//! Committed offsets on a coordinator's shards: OffsetCommit (pending until
//! the group's `__consumer_offsets` partition has replicated it),
//! OffsetFetch, OffsetDelete, and the expiry of offsets and empty groups.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

use super::coordinator::{
    valid_group_id, CommitRequest, Committed, FetchedOffset, GroupCoordinator, PendingCommit, Shard,
};
use super::records::{OffsetValue, RecordKey};
use super::state::{Group, GroupState};
use super::OFFSETS_TOPIC;
use crate::error::Error;
use crate::log::segment::now_ms;

impl GroupCoordinator {
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
        fail_accepted(&mut results, failed.code());
        results
    }

    /// Moves the group's pending commits its partition has replicated into
    /// the committed offsets.
    fn complete_commits(&self, group_id: &str) {
        let Ok(part) = self.replicas.get(OFFSETS_TOPIC, self.partition_for(group_id)) else {
            return;
        };
        let hw = part.high_watermark();
        let mut shard = self.shard(group_id);
        let Shard {
            offsets,
            pending_commits,
            ..
        } = &mut *shard;
        let Some(waiting) = pending_commits.get_mut(group_id) else {
            return;
        };
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
            pending_commits.remove(group_id);
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
        let (mut results, records, accepted) =
            match self.commit_records(group_id, member_id, instance_id, generation, offsets) {
                Ok(built) => built,
                Err(failed) => return (failed, None),
            };
        if accepted.is_empty() {
            return (results, None);
        }
        // Appended and registered as pending under the shard's lock, so that
        // a concurrent commit's completion cannot pass over this one.
        let mut shard = self.shard(group_id);
        let record_offset = match self.append(group_id, records) {
            Ok(at) => at,
            Err(e) => {
                tracing::error!(group = group_id, error = %e, "writing offsets failed");
                fail_accepted(&mut results, e.coordinator_write_error().code());
                return (results, None);
            }
        };
        let waiting = shard.pending_commits.entry(group_id.to_string()).or_default();
        for (topic, partition, value) in accepted {
            waiting.insert((topic, partition), PendingCommit { record_offset, value });
        }
        (results, Some(record_offset))
    }

    /// Checks a commit's group, member and offsets and builds its records:
    /// each partition's code, the records, and the accepted offsets; or, when
    /// the whole commit is refused, each partition's code.
    #[allow(clippy::type_complexity)]
    fn commit_records(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<CommitRequest>,
    ) -> Result<
        (
            Vec<(String, i32, i16)>,
            Vec<(Bytes, Option<Bytes>)>,
            Vec<(String, i32, Committed)>,
        ),
        Vec<(String, i32, i16)>,
    > {
        let fail_all = |code: i16, offsets: Vec<CommitRequest>| {
            offsets.into_iter().map(|o| (o.topic, o.partition, code)).collect()
        };
        if let Some(error) = self.unavailable(group_id) {
            return Err(fail_all(error, offsets));
        }
        if !valid_group_id(group_id) {
            return Err(fail_all(ResponseError::InvalidGroupId.code(), offsets));
        }
        let check = {
            let shard = self.shard(group_id);
            match shard.groups.get(group_id) {
                Some(g) => g.validate_commit(member_id, instance_id, generation),
                None if generation < 0 && member_id.is_empty() => Ok(()),
                None => Err(ResponseError::UnknownMemberId.code()),
            }
        };
        if let Err(code) = check {
            return Err(fail_all(code, offsets));
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
        Ok((results, records, accepted))
    }

    /// TxnOffsetCommit: the offsets are written to the group's partition of
    /// `__consumer_offsets` in the producer's transaction, replicated before
    /// the answer, and stay pending until the transaction ends: its commit
    /// marker makes them the group's committed offsets, an abort drops them.
    /// Meanwhile OffsetFetch with `require_stable` answers
    /// UNSTABLE_OFFSET_COMMIT for them (KIP-447).
    #[allow(clippy::too_many_arguments)]
    pub async fn txn_commit(
        &self,
        group_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<CommitRequest>,
    ) -> Vec<(String, i32, i16)> {
        let (mut results, records, accepted) =
            match self.commit_records(group_id, member_id, instance_id, generation, offsets) {
                Ok(built) => built,
                Err(failed) => return failed,
            };
        if accepted.is_empty() {
            return results;
        }
        let record_offset = {
            let mut shard = self.shard(group_id);
            match self.append_as(
                self.partition_for(group_id),
                records,
                Some((producer_id, producer_epoch)),
            ) {
                Ok(at) => {
                    let pending = shard
                        .pending_txn_offsets
                        .entry(producer_id)
                        .or_default()
                        .entry(group_id.to_string())
                        .or_default();
                    for (topic, partition, value) in accepted {
                        pending.insert((topic, partition), value);
                    }
                    at
                }
                Err(e) => {
                    tracing::warn!(group = group_id, producer_id, error = %e, "writing transactional offsets failed");
                    let code = match e {
                        Error::Sequence(_) => ResponseError::ProducerFenced.code(),
                        e => e.coordinator_write_error().code(),
                    };
                    fail_accepted(&mut results, code);
                    return results;
                }
            }
        };
        let Ok(part) = self.replicas.get(OFFSETS_TOPIC, self.partition_for(group_id)) else {
            fail_accepted(&mut results, ResponseError::NotCoordinator.code());
            return results;
        };
        let replicated = tokio::time::timeout(
            self.config.offsets_commit_timeout,
            part.wait_for_high_watermark(record_offset, part.leader_epoch()),
        );
        match replicated.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => fail_accepted(&mut results, ResponseError::NotCoordinator.code()),
            Err(_) => fail_accepted(&mut results, ResponseError::CoordinatorNotAvailable.code()),
        }
        results
    }

    /// A transaction marker was written to (and replicated in) `partition`
    /// of `__consumer_offsets`: the producer's transactional offsets there
    /// become committed (a commit) or are dropped (an abort).
    pub fn complete_txn(&self, partition: i32, producer_id: i64, commit: bool) {
        if let Some(shard) = self.shards.get(partition.max(0) as usize) {
            shard.lock().end_txn(producer_id, commit);
        }
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
        let shard = self.shard(group_id);
        let group = shard.offsets.get(group_id);
        let waiting = shard.pending_commits.get(group_id);
        let in_txn = |tp: &(String, i32)| {
            shard
                .pending_txn_offsets
                .values()
                .any(|groups| groups.get(group_id).is_some_and(|o| o.contains_key(tp)))
        };
        let fetched = |t: String, p: i32, c: Option<&Committed>| {
            let tp = (t, p);
            let unstable = require_stable && (waiting.is_some_and(|w| w.contains_key(&tp)) || in_txn(&tp));
            let (t, p) = tp;
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

    /// OffsetDelete: only for topics the group is not consuming.
    pub fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<(String, i32, i16)>, i16> {
        if let Some(error) = self.unavailable(group_id) {
            return Err(error);
        }
        let mut shard = self.shard(group_id);
        let subscribed = match shard.groups.get(group_id) {
            Some(g) if !g.is_empty() => subscribed_topics(g).unwrap_or_default(),
            Some(_) => Vec::new(),
            None if shard.offsets.contains_key(group_id) => Vec::new(),
            None => return Err(ResponseError::GroupIdNotFound.code()),
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
        for (t, p, code) in &results {
            if *code == 0 {
                let tp = (t.clone(), *p);
                if let Some(g) = shard.offsets.get_mut(group_id) {
                    g.remove(&tp);
                }
                // A commit still on its way is deleted as well (its record precedes the tombstone).
                if let Some(w) = shard.pending_commits.get_mut(group_id) {
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
        self.shards
            .iter()
            .map(|shard| self.expire_shard(&mut shard.lock()))
            .sum()
    }

    fn expire_shard(&self, shard: &mut Shard) -> usize {
        let retention = self.config.offsets_retention.as_millis() as i64;
        let now = now_ms();
        let Shard { groups, offsets, .. } = shard;
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
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            out.extend(shard.offsets.iter().flat_map(|(g, offsets)| {
                offsets
                    .iter()
                    .map(move |((t, p), c)| (g.clone(), t.clone(), *p, c.offset))
            }));
        }
        out
    }
}

/// Fails every partition a commit had accepted (code 0) with `code`.
fn fail_accepted(results: &mut [(String, i32, i16)], code: i16) {
    for r in results.iter_mut().filter(|r| r.2 == 0) {
        r.2 = code;
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
