//! The group protocol on a coordinator's shards: JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, the timers, DescribeGroups and DeleteGroups. The
//! state machine itself is [`super::state`]; here its changes are stored in
//! `__consumer_offsets`, and a leader's assignment is handed out once its
//! record is replicated.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

use super::coordinator::{valid_group_id, GroupCoordinator, GroupDescription, MemberDescription, PendingStore, Shard};
use super::records::RecordKey;
use super::state::{Group, GroupState, JoinRequest, JoinResult, Reply, SyncRequest, SyncResult};
use super::OFFSETS_TOPIC;
use crate::error::Error;

impl GroupCoordinator {
    /// Writes the group record if the group changed. A failed write is told
    /// to the group at once (members waiting in SyncGroup get the error); a
    /// record holding the leader's assignment is pending until replicated
    /// ([`GroupCoordinator::complete_stores`]).
    fn persist_group(&self, pending_stores: &mut HashMap<String, PendingStore>, group: &mut Group, now: Instant) {
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
                pending_stores.insert(
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

    /// Completes the pending group stores of shard `p` (of `only` that
    /// group, or all) whose record the partition's high watermark has
    /// passed: their members get the assignment. One past
    /// `offsets.commit.timeout.ms`, or whose partition is no longer led
    /// here, fails: its members get the error and rejoin.
    fn complete_stores(&self, p: usize, only: Option<&str>) {
        let now = Instant::now();
        let mut shard = self.shards[p].lock();
        let Shard {
            groups, pending_stores, ..
        } = &mut *shard;
        let mut done: Vec<(String, Result<(), i16>)> = Vec::new();
        let hw = self
            .replicas
            .get(OFFSETS_TOPIC, p as i32)
            .map(|part| part.high_watermark());
        pending_stores.retain(|id, store| {
            if only.is_some_and(|g| g != id) {
                return true;
            }
            let current = groups
                .get(id)
                .is_some_and(|g| g.generation == store.generation && g.awaits_store());
            if !current {
                return false;
            }
            let outcome = match hw {
                Ok(hw) if hw > store.record_offset => Ok(()),
                Ok(_) if now < store.deadline => return true,
                Ok(_) => Err(ResponseError::CoordinatorNotAvailable.code()),
                Err(_) => Err(ResponseError::NotCoordinator.code()),
            };
            done.push((id.clone(), outcome));
            false
        });
        for (id, outcome) in done {
            if let Some(g) = groups.get_mut(&id) {
                if let Err(code) = outcome {
                    tracing::warn!(group = %id, code, "group assignment not replicated");
                }
                g.store_completed(outcome, now, &self.config.limits);
                self.persist_group(pending_stores, g, now);
            }
        }
    }

    /// Runs `f` on the group (created if missing), persists what it changed,
    /// and drops groups that were created for nothing.
    fn with_group<T>(&self, group_id: &str, f: impl FnOnce(&mut Group) -> T) -> T {
        let mut shard = self.shard(group_id);
        let Shard {
            groups, pending_stores, ..
        } = &mut *shard;
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id));
        let out = f(group);
        self.persist_group(pending_stores, group, Instant::now());
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
        let exists = self.shard(group_id).groups.contains_key(group_id);
        if !exists {
            return SyncResult {
                error: ResponseError::UnknownMemberId.code(),
                ..Default::default()
            };
        }
        let reply = self.with_group(group_id, |g| g.sync(req, Instant::now()));
        // The leader's assignment is handed out once its record is replicated
        // (the ticker completes it too, should this request go away).
        let pending = self
            .shard(group_id)
            .pending_stores
            .get(group_id)
            .map(|s| s.record_offset);
        if let Some(record_offset) = pending {
            self.wait_replicated(group_id, record_offset).await;
            self.complete_stores(self.partition_for(group_id) as usize, Some(group_id));
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
        match self.shard(group_id).groups.get_mut(group_id) {
            Some(g) => g.heartbeat(member_id, instance_id, generation, Instant::now()),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// Returns the group-level error and one code per member.
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> (i16, Vec<i16>) {
        if let Some(error) = self.unavailable(group_id) {
            return (error, vec![]);
        }
        let exists = self.shard(group_id).groups.contains_key(group_id);
        if !exists {
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
        for (p, shard) in self.shards.iter().enumerate() {
            {
                let mut shard = shard.lock();
                let Shard {
                    groups, pending_stores, ..
                } = &mut *shard;
                for g in groups.values_mut() {
                    g.tick(now, &self.config.limits);
                    self.persist_group(pending_stores, g, now);
                }
            }
            self.complete_stores(p, None);
        }
    }

    pub fn describe(&self, group_id: &str) -> Result<GroupDescription, i16> {
        if let Some(error) = self.unavailable(group_id) {
            return Err(error);
        }
        let shard = self.shard(group_id);
        let Some(g) = shard.groups.get(group_id) else {
            // Kafka describes an unknown group as Dead with no members.
            return Ok(GroupDescription {
                group_id: group_id.to_string(),
                state: if shard.offsets.contains_key(group_id) {
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
        let mut shard = self.shard(group_id);
        match shard.groups.get(group_id) {
            Some(g) if !g.is_empty() => return ResponseError::NonEmptyGroup.code(),
            None if !shard.offsets.contains_key(group_id) => return ResponseError::GroupIdNotFound.code(),
            _ => {}
        }
        let mut keys = vec![RecordKey::Group {
            group: group_id.to_string(),
        }];
        if let Some(committed) = shard.offsets.get(group_id) {
            keys.extend(committed.keys().map(|(topic, partition)| RecordKey::Offset {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition: *partition,
            }));
        }
        if let Err(e) = self.append_tombstones(group_id, &keys) {
            return e.coordinator_write_error().code();
        }
        shard.offsets.remove(group_id);
        shard.pending_commits.remove(group_id);
        shard.groups.remove(group_id);
        0
    }
}
