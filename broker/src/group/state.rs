//! The classic group protocol's state machine, as Kafka's GroupCoordinator
//! runs it: Empty -> PreparingRebalance -> CompletingRebalance -> Stable,
//! generations, a leader that assigns, static members, KIP-394 member ids.
//!
//! Time comes in as an argument and answers go out through oneshot channels
//! held by the members, so the machine is tested without sockets or clocks.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

use super::records::{GroupValue, MemberValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Broker-wide limits on groups.
#[derive(Debug, Clone)]
pub struct GroupLimits {
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    pub max_size: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    pub skip_assignment: bool,
    /// Only the leader gets the members and their metadata.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(code: i16, member_id: &str) -> JoinResult {
        JoinResult {
            error: code,
            generation: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(code: i16) -> SyncResult {
        SyncResult {
            error: code,
            ..Default::default()
        }
    }
}

/// A SyncGroup request; only the leader's assignments are used.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

/// An answer now, or one that arrives when the rebalance gets there.
pub enum Reply<T> {
    Now(T),
    Wait(oneshot::Receiver<T>),
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// KIP-394 (JoinGroup v4+): a new member first gets an id and rejoins with it.
    pub require_known_member_id: bool,
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub heartbeat_deadline: Instant,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// The member's subscription under the group's protocol, as persisted.
    pub fn subscription(&self, protocol: Option<&str>) -> Bytes {
        protocol.map(|p| self.metadata(p)).unwrap_or_default()
    }

    pub fn awaiting_join(&self) -> bool {
        self.join_waiter.is_some()
    }
}

pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// KIP-394 member ids handed out but not yet used to join, with their expiry.
    pending: BTreeMap<String, Instant>,
    static_members: HashMap<String, String>,
    rebalance_deadline: Option<Instant>,
    /// While a group forms from empty, wait this long for more members (extended per join).
    initial_join_deadline: Option<Instant>,
    /// Wall-clock ms of the last state change, for offset expiry and the record.
    pub state_timestamp: i64,
    /// Group metadata changed in a way that must be written to the log.
    pub needs_persist: bool,
    /// The leader's SyncGroup set the assignment; members hear it once the
    /// coordinator has stored it (see `store_completed`).
    sync_awaits_store: bool,
    /// Rebalances completed, for the tests and metrics.
    pub rebalances: u64,
}

fn now_ms() -> i64 {
    crate::log::segment::now_ms()
}

const NONE: i16 = 0;

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            protocol_type: None,
            protocol_name: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            static_members: HashMap::new(),
            rebalance_deadline: None,
            initial_join_deadline: None,
            state_timestamp: now_ms(),
            needs_persist: false,
            sync_awaits_store: false,
            rebalances: 0,
        }
    }

    fn transition(&mut self, state: GroupState) {
        self.state = state;
        self.state_timestamp = now_ms();
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// A group that never formed and holds nothing: no members, no ids handed out.
    pub fn is_unused(&self) -> bool {
        self.state == GroupState::Empty && self.generation == 0 && self.members.is_empty() && self.pending.is_empty()
    }

    /// Protocols every member supports (the candidates for selection).
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut candidates: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in members {
            candidates.retain(|c| m.protocols.iter().any(|(n, _)| n == c));
        }
        // A stable order makes ties deterministic.
        candidates.sort();
        candidates
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && self
                .candidate_protocols()
                .iter()
                .any(|c| protocols.iter().any(|(n, _)| n == c))
    }

    /// Each member votes for its most preferred candidate; the most votes win,
    /// as Kafka selects (ties go to the first name in order).
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<(String, usize)> = candidates.iter().map(|c| (c.clone(), 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                if let Some(v) = votes.iter_mut().find(|(c, _)| c == name) {
                    v.1 += 1;
                }
            }
        }
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes.into_iter().find(|(_, n)| *n == best).map(|(c, _)| c)
    }

    fn validate_instance(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), i16> {
        if let Some(instance) = instance_id {
            match self.static_members.get(instance) {
                Some(id) if id != member_id => return Err(ResponseError::FencedInstanceId.code()),
                _ => {}
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId.code());
        }
        Ok(())
    }

    pub fn join(&mut self, req: JoinRequest, now: Instant, limits: &GroupLimits) -> Reply<JoinResult> {
        let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        if self.state == GroupState::Dead {
            return Reply::Now(JoinResult::error(
                ResponseError::CoordinatorNotAvailable.code(),
                &req.member_id,
            ));
        }
        if session < limits.min_session_timeout || session > limits.max_session_timeout {
            return Reply::Now(JoinResult::error(
                ResponseError::InvalidSessionTimeout.code(),
                &req.member_id,
            ));
        }
        if !self.supports(&req.protocol_type, &req.protocols) {
            return Reply::Now(JoinResult::error(
                ResponseError::InconsistentGroupProtocol.code(),
                &req.member_id,
            ));
        }
        if req.member_id.is_empty() {
            return self.join_new_member(req, now, limits);
        }
        if self.pending.remove(&req.member_id).is_some() {
            return self.add_member_and_rebalance(req.member_id.clone(), req, now, limits);
        }
        if let Err(code) = self.validate_instance(&req.member_id, req.instance_id.as_deref()) {
            return Reply::Now(JoinResult::error(code, &req.member_id));
        }
        self.join_known_member(req, now, limits)
    }

    fn join_new_member(&mut self, req: JoinRequest, now: Instant, limits: &GroupLimits) -> Reply<JoinResult> {
        if self.members.len() + self.pending.len() >= limits.max_size {
            return Reply::Now(JoinResult::error(ResponseError::GroupMaxSizeReached.code(), ""));
        }
        let new_id = format!("{}-{}", req.client_id, uuid::Uuid::new_v4());
        if let Some(instance) = req.instance_id.clone() {
            if let Some(old_id) = self.static_members.get(&instance).cloned() {
                return self.replace_static_member(old_id, new_id, req, now, limits);
            }
            self.static_members.insert(instance, new_id.clone());
            return self.add_member_and_rebalance(new_id, req, now, limits);
        }
        if req.require_known_member_id {
            // The id is held for a session timeout; the client rejoins with it at once.
            self.pending.insert(
                new_id.clone(),
                now + Duration::from_millis(req.session_timeout_ms.max(0) as u64),
            );
            return Reply::Now(JoinResult::error(ResponseError::MemberIdRequired.code(), &new_id));
        }
        self.add_member_and_rebalance(new_id, req, now, limits)
    }

    /// A static member restarted: it takes over its old identity. In a stable
    /// group with unchanged subscriptions nothing rebalances (KIP-345).
    fn replace_static_member(
        &mut self,
        old_id: String,
        new_id: String,
        req: JoinRequest,
        now: Instant,
        limits: &GroupLimits,
    ) -> Reply<JoinResult> {
        let Some(mut member) = self.members.remove(&old_id) else {
            self.static_members
                .remove(req.instance_id.as_deref().unwrap_or_default());
            return self.join_new_member(req, now, limits);
        };
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(JoinResult::error(ResponseError::FencedInstanceId.code(), &old_id));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(SyncResult::error(ResponseError::FencedInstanceId.code()));
        }
        let unchanged = member.protocols == req.protocols;
        member.id = new_id.clone();
        member.protocols = req.protocols.clone();
        member.session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        member.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64);
        member.heartbeat_deadline = now + member.session_timeout;
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        self.static_members
            .insert(req.instance_id.clone().unwrap_or_default(), new_id.clone());
        self.members.insert(new_id.clone(), member);
        self.needs_persist = true;
        match self.state {
            GroupState::Stable if unchanged => {
                let is_leader = self.leader.as_deref() == Some(new_id.as_str());
                Reply::Now(JoinResult {
                    error: NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    leader: self.leader.clone().unwrap_or_default(),
                    member_id: new_id,
                    // KIP-814: a rejoining static leader keeps the current assignment.
                    skip_assignment: is_leader,
                    members: if is_leader { self.member_list() } else { Vec::new() },
                })
            }
            _ => self.await_join(new_id, now, limits),
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        id: String,
        req: JoinRequest,
        now: Instant,
        limits: &GroupLimits,
    ) -> Reply<JoinResult> {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        let session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        let member = Member {
            id: id.clone(),
            instance_id: req.instance_id.clone(),
            client_id: req.client_id,
            client_host: req.client_host,
            session_timeout,
            rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64),
            protocols: req.protocols,
            assignment: Bytes::new(),
            heartbeat_deadline: now + session_timeout,
            join_waiter: None,
            sync_waiter: None,
        };
        self.members.insert(id.clone(), member);
        if let Some(deadline) = self.initial_join_deadline {
            // Another member arrived while the group forms: wait a little longer.
            let cap = self.rebalance_deadline.unwrap_or(deadline);
            self.initial_join_deadline = Some((now + limits.initial_rebalance_delay).min(cap).max(deadline));
        }
        self.await_join(id, now, limits)
    }

    fn join_known_member(&mut self, req: JoinRequest, now: Instant, limits: &GroupLimits) -> Reply<JoinResult> {
        let id = req.member_id.clone();
        let member = self.members.get_mut(&id).expect("validated member");
        let changed = member.protocols != req.protocols;
        member.protocols = req.protocols;
        member.heartbeat_deadline = now + member.session_timeout;
        match self.state {
            GroupState::PreparingRebalance => self.await_join(id, now, limits),
            GroupState::CompletingRebalance | GroupState::Stable if !changed && self.leader.as_deref() != Some(&id) => {
                // Nothing changed for this follower: the current generation stands.
                Reply::Now(JoinResult {
                    error: NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    leader: self.leader.clone().unwrap_or_default(),
                    member_id: id,
                    skip_assignment: false,
                    members: Vec::new(),
                })
            }
            _ => self.await_join(id, now, limits),
        }
    }

    fn await_join(&mut self, id: String, now: Instant, limits: &GroupLimits) -> Reply<JoinResult> {
        let (tx, rx) = oneshot::channel();
        if let Some(member) = self.members.get_mut(&id) {
            if let Some(old) = member.join_waiter.replace(tx) {
                let _ = old.send(JoinResult::error(ResponseError::RebalanceInProgress.code(), &id));
            }
        }
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now, limits);
        }
        self.try_complete_join(now);
        Reply::Wait(rx)
    }

    fn prepare_rebalance(&mut self, now: Instant, limits: &GroupLimits) {
        // A store still on its way is for the generation that ends here.
        self.sync_awaits_store = false;
        if self.state == GroupState::CompletingRebalance {
            // The assignment being handed out is void: members must rejoin.
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncResult::error(ResponseError::RebalanceInProgress.code()));
                }
            }
        }
        let was_empty = self.state == GroupState::Empty;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.rebalance_deadline = Some(now + timeout);
        self.initial_join_deadline = (was_empty && !limits.initial_rebalance_delay.is_zero())
            .then(|| now + limits.initial_rebalance_delay.min(timeout));
        self.transition(GroupState::PreparingRebalance);
    }

    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(Member::awaiting_join)
    }

    /// Completes the join phase when everyone has rejoined (and the initial
    /// delay is over) or the rebalance timeout passed.
    pub fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let timed_out = self.rebalance_deadline.is_some_and(|d| now >= d);
        let delay_over = self.initial_join_deadline.is_none_or(|d| now >= d);
        if !(timed_out || (self.all_joined() && delay_over)) {
            return;
        }
        // Dynamic members that did not rejoin in time leave the group. Static
        // ones (KIP-345) stay with their last subscription, so the leader
        // assigns them their partitions again; only their session timeout
        // removes them, as in Kafka.
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.pending.clear();
        self.rebalance_deadline = None;
        self.initial_join_deadline = None;
        self.generation += 1;
        self.rebalances += 1;
        if self.members.is_empty() {
            self.protocol_name = None;
            self.leader = None;
            self.transition(GroupState::Empty);
            self.needs_persist = true;
            return;
        }
        self.protocol_name = self.select_protocol();
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        self.transition(GroupState::CompletingRebalance);
        let leader = self.leader.clone().unwrap_or_default();
        let all = self.member_list();
        for m in self.members.values_mut() {
            m.heartbeat_deadline = now + m.session_timeout;
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult {
                    error: NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    leader: leader.clone(),
                    member_id: m.id.clone(),
                    skip_assignment: false,
                    members: if m.id == leader { all.clone() } else { Vec::new() },
                });
            }
        }
    }

    fn member_list(&self) -> Vec<(String, Option<String>, Bytes)> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
            .collect()
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(instance) = &m.instance_id {
                if self.static_members.get(instance).is_some_and(|x| x == id) {
                    self.static_members.remove(instance);
                }
            }
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult::error(ResponseError::UnknownMemberId.code(), id));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResult::error(ResponseError::UnknownMemberId.code()));
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    pub fn sync(&mut self, req: SyncRequest, now: Instant) -> Reply<SyncResult> {
        let SyncRequest {
            member_id,
            instance_id,
            generation,
            protocol_type,
            protocol_name,
            assignments,
        } = req;
        let (member_id, instance_id) = (member_id.as_str(), instance_id.as_deref());
        if let Err(code) = self.validate_instance(member_id, instance_id) {
            return Reply::Now(SyncResult::error(code));
        }
        if generation != self.generation {
            return Reply::Now(SyncResult::error(ResponseError::IllegalGeneration.code()));
        }
        if protocol_type
            .as_deref()
            .is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name
                .as_deref()
                .is_some_and(|n| Some(n) != self.protocol_name.as_deref())
        {
            return Reply::Now(SyncResult::error(ResponseError::InconsistentGroupProtocol.code()));
        }
        let answer = |g: &Group, assignment: Bytes| SyncResult {
            error: NONE,
            protocol_type: g.protocol_type.clone(),
            protocol_name: g.protocol_name.clone(),
            assignment,
        };
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                Reply::Now(SyncResult::error(ResponseError::UnknownMemberId.code()))
            }
            GroupState::PreparingRebalance => Reply::Now(SyncResult::error(ResponseError::RebalanceInProgress.code())),
            GroupState::Stable => {
                let m = &self.members[member_id];
                Reply::Now(answer(self, m.assignment.clone()))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.heartbeat_deadline = now + m.session_timeout;
                    m.sync_waiter = Some(tx);
                }
                // The leader's assignment: the group stays CompletingRebalance
                // until its record is stored and replicated, so that no member
                // hears of an assignment a new coordinator would not know.
                if self.leader.as_deref() == Some(member_id) && !self.sync_awaits_store {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    self.needs_persist = true;
                    self.sync_awaits_store = true;
                }
                Reply::Wait(rx)
            }
        }
    }

    /// Whether the leader's assignment waits for its record to be stored.
    pub fn awaits_store(&self) -> bool {
        self.sync_awaits_store
    }

    /// The coordinator's write of the group record after a change: once the
    /// leader's assignment is stored (replicated), the group is Stable and
    /// every waiting member gets its part. If the store failed, they get the
    /// error and the group rebalances, as Kafka does, so no member works from
    /// an assignment that was not stored.
    pub fn store_completed(&mut self, stored: Result<(), i16>, now: Instant, limits: &GroupLimits) {
        if !std::mem::take(&mut self.sync_awaits_store) || self.state != GroupState::CompletingRebalance {
            return;
        }
        match stored {
            Ok(()) => {
                self.transition(GroupState::Stable);
                let (ptype, pname) = (self.protocol_type.clone(), self.protocol_name.clone());
                for m in self.members.values_mut() {
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(SyncResult {
                            error: NONE,
                            protocol_type: ptype.clone(),
                            protocol_name: pname.clone(),
                            assignment: m.assignment.clone(),
                        });
                    }
                }
            }
            Err(code) => {
                for m in self.members.values_mut() {
                    m.assignment = Bytes::new();
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(SyncResult::error(code));
                    }
                }
                self.prepare_rebalance(now, limits);
            }
        }
    }

    pub fn heartbeat(&mut self, member_id: &str, instance_id: Option<&str>, generation: i32, now: Instant) -> i16 {
        if self.state == GroupState::Dead {
            return ResponseError::CoordinatorNotAvailable.code();
        }
        if let Err(code) = self.validate_instance(member_id, instance_id) {
            return code;
        }
        if generation != self.generation {
            return ResponseError::IllegalGeneration.code();
        }
        let m = self.members.get_mut(member_id).expect("validated member");
        m.heartbeat_deadline = now + m.session_timeout;
        match self.state {
            GroupState::PreparingRebalance => ResponseError::RebalanceInProgress.code(),
            _ => NONE,
        }
    }

    /// Members leave; the rest rebalance. One error code per leaving member.
    pub fn leave(&mut self, leaving: &[(String, Option<String>)], now: Instant, limits: &GroupLimits) -> Vec<i16> {
        let mut codes = Vec::with_capacity(leaving.len());
        let mut any = false;
        for (member_id, instance_id) in leaving {
            // A static member may leave by instance id alone.
            let id = match (member_id.is_empty(), instance_id) {
                (true, Some(instance)) => self.static_members.get(instance).cloned().unwrap_or_default(),
                _ => member_id.clone(),
            };
            match self.validate_instance(&id, instance_id.as_deref()) {
                Ok(()) => {
                    self.remove_member(&id);
                    any = true;
                    codes.push(NONE);
                }
                Err(code) => codes.push(code),
            }
        }
        if any {
            self.member_left(now, limits);
        }
        codes
    }

    fn member_left(&mut self, now: Instant, limits: &GroupLimits) {
        match self.state {
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Stable | GroupState::CompletingRebalance => {
                if self.members.is_empty() {
                    self.generation += 1;
                    self.protocol_name = None;
                    self.transition(GroupState::Empty);
                    self.needs_persist = true;
                } else {
                    self.prepare_rebalance(now, limits);
                    self.try_complete_join(now);
                }
            }
            _ => {}
        }
    }

    /// Timers: completes joins whose wait is over, expires silent members and unused pending ids.
    pub fn tick(&mut self, now: Instant, limits: &GroupLimits) -> Vec<String> {
        self.pending.retain(|_, deadline| *deadline > now);
        self.try_complete_join(now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join() && m.sync_waiter.is_none() && m.heartbeat_deadline <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member(id);
        }
        if !expired.is_empty() {
            self.member_left(now, limits);
        }
        expired
    }

    /// Who may commit offsets: members of the current generation, or anyone
    /// when the group has no members (manually assigned consumers).
    pub fn validate_commit(&self, member_id: &str, instance_id: Option<&str>, generation: i32) -> Result<(), i16> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable.code());
        }
        if generation < 0 && member_id.is_empty() && self.members.is_empty() {
            return Ok(());
        }
        self.validate_instance(member_id, instance_id)?;
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration.code());
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress.code());
        }
        Ok(())
    }

    /// The record written to `__consumer_offsets` for this group.
    pub fn to_value(&self) -> GroupValue {
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol_name.clone(),
            leader: self.leader.clone(),
            state_timestamp: self.state_timestamp,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as i32,
                    session_timeout_ms: m.session_timeout.as_millis() as i32,
                    subscription: m.subscription(self.protocol_name.as_deref()),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Restores a group loaded from the log; members must heartbeat within their session.
    pub fn from_value(id: &str, v: GroupValue, now: Instant) -> Group {
        let mut g = Group::new(id);
        g.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
        g.generation = v.generation;
        g.protocol_name = v.protocol.clone();
        g.leader = v.leader;
        g.state_timestamp = v.state_timestamp;
        for m in v.members {
            if let Some(instance) = &m.group_instance_id {
                g.static_members.insert(instance.clone(), m.member_id.clone());
            }
            let session = Duration::from_millis(m.session_timeout_ms.max(0) as u64);
            let protocols = v
                .protocol
                .clone()
                .map(|p| vec![(p, m.subscription.clone())])
                .unwrap_or_default();
            g.members.insert(
                m.member_id.clone(),
                Member {
                    id: m.member_id,
                    instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: session,
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms.max(0) as u64),
                    protocols,
                    assignment: m.assignment,
                    heartbeat_deadline: now + session,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        g.state = if g.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(
        g: &mut Group,
        member: &str,
        instance: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Reply<SyncResult> {
        let req = SyncRequest {
            member_id: member.into(),
            instance_id: instance.map(String::from),
            generation,
            assignments,
            ..SyncRequest::default()
        };
        let reply = g.sync(req, now);
        // The coordinator stores the group after every change; here the store succeeds.
        g.store_completed(Ok(()), now, &limits());
        reply
    }

    fn limits() -> GroupLimits {
        GroupLimits {
            initial_rebalance_delay: Duration::ZERO,
            min_session_timeout: Duration::from_millis(100),
            max_session_timeout: Duration::from_secs(600),
            max_size: 10,
        }
    }

    fn req(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
                .collect(),
            require_known_member_id: true,
        }
    }

    fn now_result<T>(r: Reply<T>) -> T {
        match r {
            Reply::Now(t) => t,
            Reply::Wait(_) => panic!("expected an immediate answer"),
        }
    }

    fn waited<T>(r: Reply<T>) -> oneshot::Receiver<T> {
        match r {
            Reply::Wait(rx) => rx,
            Reply::Now(_) => panic!("expected to wait"),
        }
    }

    /// Joins a new dynamic member through KIP-394's two steps.
    fn join_new(g: &mut Group, protocols: &[&str], now: Instant) -> (String, oneshot::Receiver<JoinResult>) {
        let first = now_result(g.join(req("", protocols), now, &limits()));
        assert_eq!(first.error, ResponseError::MemberIdRequired.code());
        let rx = waited(g.join(req(&first.member_id, protocols), now, &limits()));
        (first.member_id, rx)
    }

    #[test]
    fn two_members_form_a_stable_group() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, mut rx_a) = join_new(&mut g, &["range", "roundrobin"], now);
        // Alone and joined: the rebalance completes at once with no initial delay.
        let ja = rx_a.try_recv().unwrap();
        assert_eq!(
            (ja.generation, ja.leader.as_str(), ja.members.len()),
            (1, a.as_str(), 1)
        );
        // A second member triggers a rebalance; the first must rejoin.
        let (b, mut rx_b) = join_new(&mut g, &["roundrobin", "range"], now);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert!(rx_b.try_recv().is_err(), "waits for the other member");
        assert_eq!(g.heartbeat(&a, None, 1, now), ResponseError::RebalanceInProgress.code());
        let mut rx_a = waited(g.join(req(&a, &["range", "roundrobin"]), now, &limits()));
        let (ja, jb) = (rx_a.try_recv().unwrap(), rx_b.try_recv().unwrap());
        assert_eq!((ja.generation, jb.generation), (2, 2));
        assert_eq!(ja.leader, a, "the leader stays");
        assert_eq!(ja.members.len(), 2);
        assert!(jb.members.is_empty(), "followers get no member list");
        assert_eq!(
            ja.protocol_name.as_deref(),
            Some("range"),
            "a tie goes to the first name"
        );
        // Sync: the follower waits for the leader's assignment.
        let mut sb = waited(sync(&mut g, &b, None, 2, vec![], now));
        let mut sa = waited(sync(
            &mut g,
            &a,
            None,
            2,
            vec![
                (a.clone(), Bytes::from_static(b"A")),
                (b.clone(), Bytes::from_static(b"B")),
            ],
            now,
        ));
        assert_eq!(sa.try_recv().unwrap().assignment, Bytes::from_static(b"A"));
        assert_eq!(sb.try_recv().unwrap().assignment, Bytes::from_static(b"B"));
        assert_eq!(g.state, GroupState::Stable);
        assert!(g.needs_persist);
        assert_eq!(g.heartbeat(&b, None, 2, now), 0);
    }

    #[test]
    fn an_assignment_that_could_not_be_stored_is_not_handed_out() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, mut rx_a) = join_new(&mut g, &["range"], now);
        rx_a.try_recv().unwrap();
        let (b, _) = join_new(&mut g, &["range"], now);
        let mut rx_a = waited(g.join(req(&a, &["range"]), now, &limits()));
        rx_a.try_recv().unwrap();
        let follower = SyncRequest {
            member_id: b.clone(),
            generation: 2,
            ..SyncRequest::default()
        };
        let mut sb = waited(g.sync(follower, now));
        let leader = SyncRequest {
            member_id: a.clone(),
            generation: 2,
            assignments: vec![
                (a.clone(), Bytes::from_static(b"A")),
                (b.clone(), Bytes::from_static(b"B")),
            ],
            ..SyncRequest::default()
        };
        let mut sa = waited(g.sync(leader, now));
        assert!(
            sa.try_recv().is_err(),
            "nobody hears the assignment before it is stored"
        );
        let code = ResponseError::CoordinatorNotAvailable.code();
        g.store_completed(Err(code), now, &limits());
        assert_eq!(
            (sa.try_recv().unwrap().error, sb.try_recv().unwrap().error),
            (code, code)
        );
        assert_eq!(g.state, GroupState::PreparingRebalance, "members must rejoin");
        assert_eq!(g.heartbeat(&b, None, 2, now), ResponseError::RebalanceInProgress.code());
    }

    #[test]
    fn errors_for_strangers_and_stale_generations() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, _rx) = join_new(&mut g, &["range"], now);
        assert_eq!(
            g.heartbeat("nobody", None, 1, now),
            ResponseError::UnknownMemberId.code()
        );
        assert_eq!(g.heartbeat(&a, None, 0, now), ResponseError::IllegalGeneration.code());
        let bad = now_result(g.join(req("", &["sticky"]), now, &limits()));
        assert_eq!(bad.error, ResponseError::InconsistentGroupProtocol.code());
        let mut other_type = req("", &["range"]);
        other_type.protocol_type = "connect".into();
        assert_eq!(
            now_result(g.join(other_type, now, &limits())).error,
            ResponseError::InconsistentGroupProtocol.code()
        );
        assert_eq!(
            now_result(g.join(req("ghost", &["range"]), now, &limits())).error,
            ResponseError::UnknownMemberId.code()
        );
        assert_eq!(
            g.validate_commit("nobody", None, 1),
            Err(ResponseError::UnknownMemberId.code())
        );
        assert_eq!(
            g.validate_commit(&a, None, 7),
            Err(ResponseError::IllegalGeneration.code())
        );
        assert_eq!(
            g.validate_commit(&a, None, 1),
            Err(ResponseError::RebalanceInProgress.code()),
            "until synced"
        );
        let _ = sync(&mut g, &a, None, 1, vec![], now);
        assert_eq!(g.validate_commit(&a, None, 1), Ok(()));
        let mut short = req("", &["range"]);
        short.session_timeout_ms = 1;
        assert_eq!(
            now_result(g.join(short, now, &limits())).error,
            ResponseError::InvalidSessionTimeout.code()
        );
    }

    #[test]
    fn silent_members_expire_and_the_rest_rebalance() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, _) = join_new(&mut g, &["range"], now);
        let (b, rx_b) = join_new(&mut g, &["range"], now);
        drop(rx_b);
        drop(waited(g.join(req(&a, &["range"]), now, &limits())));
        let _ = sync(&mut g, &a, None, 2, vec![], now);
        assert_eq!(g.state, GroupState::Stable);
        // Only a heartbeats.
        let later = now + Duration::from_secs(8);
        assert_eq!(g.heartbeat(&a, None, 2, later), 0);
        let expired = g.tick(now + Duration::from_secs(11), &limits());
        assert_eq!(expired, vec![b]);
        assert_eq!(g.state, GroupState::PreparingRebalance);
    }

    #[test]
    fn leaving_last_member_empties_the_group() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, _) = join_new(&mut g, &["range"], now);
        let _ = sync(&mut g, &a, None, 1, vec![], now);
        assert_eq!(g.leave(&[(a.clone(), None)], now, &limits()), vec![0]);
        assert_eq!(g.state, GroupState::Empty);
        assert_eq!(
            g.leave(&[(a, None)], now, &limits()),
            vec![ResponseError::UnknownMemberId.code()]
        );
        assert_eq!(
            g.validate_commit("", None, -1),
            Ok(()),
            "simple consumers commit to empty groups"
        );
    }

    #[test]
    fn a_restarted_static_member_keeps_its_assignment_without_rebalance() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut r = req("", &["range"]);
        r.instance_id = Some("i-1".into());
        let mut rx = waited(g.join(r.clone(), now, &limits()));
        let first = rx.try_recv().unwrap();
        let _ = sync(
            &mut g,
            &first.member_id,
            Some("i-1"),
            1,
            vec![(first.member_id.clone(), Bytes::from_static(b"P"))],
            now,
        );
        assert_eq!(g.state, GroupState::Stable);
        // Restart: a new process joins with the same instance id and no member id.
        let again = now_result(g.join(r, now, &limits()));
        assert_eq!((again.error, again.generation), (0, 1), "no new generation");
        assert_ne!(again.member_id, first.member_id);
        let s = now_result(sync(&mut g, &again.member_id, Some("i-1"), 1, vec![], now));
        assert_eq!(s.assignment, Bytes::from_static(b"P"));
        // The old identity is fenced.
        assert_eq!(
            g.heartbeat(&first.member_id, Some("i-1"), 1, now),
            ResponseError::FencedInstanceId.code()
        );
        assert_eq!(g.rebalances, 1);
    }

    #[test]
    fn rebalance_timeout_removes_members_that_never_rejoin() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, _) = join_new(&mut g, &["range"], now);
        let _ = sync(&mut g, &a, None, 1, vec![], now);
        let (_b, mut rx_b) = join_new(&mut g, &["range"], now);
        assert!(rx_b.try_recv().is_err());
        g.tick(now + Duration::from_secs(31), &limits());
        let jb = rx_b.try_recv().unwrap();
        assert_eq!(jb.error, 0);
        assert_eq!(g.members.len(), 1, "a did not rejoin in time");
    }

    #[test]
    fn a_static_member_outlives_a_rebalance_timeout_but_not_its_session() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut r = req("", &["range"]);
        r.instance_id = Some("i-1".into());
        r.session_timeout_ms = 60_000;
        let mut rx = waited(g.join(r, now, &limits()));
        let s = rx.try_recv().unwrap().member_id;
        let _ = sync(&mut g, &s, Some("i-1"), 1, vec![], now);
        // A dynamic member joins; the static one is away and does not rejoin.
        let (_d, mut rx_d) = join_new(&mut g, &["range"], now);
        g.tick(now + Duration::from_secs(31), &limits());
        let jd = rx_d.try_recv().unwrap();
        assert_eq!((jd.error, jd.generation), (0, 2));
        assert!(
            g.members.contains_key(&s),
            "the rebalance timeout does not remove a static member"
        );
        let leader_view = if jd.leader == jd.member_id { jd.members.len() } else { 2 };
        assert_eq!(leader_view, 2, "the leader assigns the absent static member too");
        // Its session (60 s from the join's completion, as Kafka counts) does.
        g.tick(now + Duration::from_secs(31 + 59), &limits());
        assert!(g.members.contains_key(&s));
        g.tick(now + Duration::from_secs(31 + 61), &limits());
        assert!(!g.members.contains_key(&s), "the session timeout removes it");
    }

    #[test]
    fn state_round_trips_through_the_record() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, _) = join_new(&mut g, &["range"], now);
        let _ = sync(&mut g, &a, None, 1, vec![(a.clone(), Bytes::from_static(b"X"))], now);
        let restored = Group::from_value("g", g.to_value(), now);
        assert_eq!(restored.state, GroupState::Stable);
        assert_eq!(restored.generation, 1);
        assert_eq!(restored.members[&a].assignment, Bytes::from_static(b"X"));
    }

    /// One step a member or the coordinator takes, on member slot `.0`.
    #[derive(Debug, Clone)]
    enum Step {
        Join(usize),
        Sync(usize),
        Leave(usize),
        Heartbeat(usize),
        /// The coordinator's write of the group record, and whether it succeeded.
        Store(bool),
        Tick(u64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0usize..4).prop_map(Step::Join),
            (0usize..4).prop_map(Step::Sync),
            (0usize..4).prop_map(Step::Leave),
            (0usize..4).prop_map(Step::Heartbeat),
            proptest::bool::weighted(0.8).prop_map(Step::Store),
            (0u64..12_000).prop_map(Step::Tick),
        ]
    }

    proptest::proptest! {
        /// Random joins, syncs, leaves, heartbeats, timer ticks and group
        /// stores (some failing): generations never go back; a group that is
        /// Stable or CompletingRebalance has a leader among its members; and
        /// no member ever gets an assignment (a SyncGroup answered without
        /// error) of a generation whose group record was not stored.
        #[test]
        fn no_assignment_is_handed_out_before_it_is_stored(steps in proptest::collection::vec(step(), 1..60)) {
            let mut now = Instant::now();
            let mut g = Group::new("g");
            let mut ids: Vec<Option<String>> = vec![None; 4];
            let mut stored: std::collections::BTreeSet<i32> = Default::default();
            let mut waiting: Vec<(i32, oneshot::Receiver<SyncResult>)> = Vec::new();
            let mut joins = Vec::new();
            let mut generation = g.generation;
            for step in steps {
                match step {
                    Step::Join(slot) => {
                        let id = match &ids[slot] {
                            Some(id) => id.clone(),
                            None => {
                                let first = g.join(req("", &["range"]), now, &limits());
                                let Reply::Now(first) = first else { continue };
                                if first.error != ResponseError::MemberIdRequired.code() {
                                    continue;
                                }
                                ids[slot] = Some(first.member_id.clone());
                                first.member_id
                            }
                        };
                        joins.push(g.join(req(&id, &["range"]), now, &limits()));
                    }
                    Step::Sync(slot) => {
                        let Some(id) = ids[slot].clone() else { continue };
                        let assignments = if g.leader.as_deref() == Some(id.as_str()) {
                            g.members.keys().map(|m| (m.clone(), Bytes::from(m.clone()))).collect()
                        } else {
                            Vec::new()
                        };
                        let req = SyncRequest {
                            member_id: id,
                            generation: g.generation,
                            assignments,
                            ..SyncRequest::default()
                        };
                        let at = g.generation;
                        match g.sync(req, now) {
                            Reply::Now(r) => proptest::prop_assert!(r.error != 0 || stored.contains(&at)),
                            Reply::Wait(rx) => waiting.push((at, rx)),
                        }
                    }
                    Step::Leave(slot) => {
                        if let Some(id) = ids[slot].take() {
                            g.leave(&[(id, None)], now, &limits());
                        }
                    }
                    Step::Heartbeat(slot) => {
                        if let Some(id) = &ids[slot] {
                            g.heartbeat(id, None, g.generation, now);
                        }
                    }
                    Step::Store(ok) => {
                        g.needs_persist = false;
                        let completing = g.awaits_store() && g.state == GroupState::CompletingRebalance;
                        let at = g.generation;
                        let result = if ok { Ok(()) } else { Err(ResponseError::CoordinatorNotAvailable.code()) };
                        g.store_completed(result, now, &limits());
                        if ok && completing {
                            stored.insert(at);
                        }
                    }
                    Step::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        g.tick(now, &limits());
                    }
                }
                proptest::prop_assert!(g.generation >= generation, "generation went back");
                generation = g.generation;
                if matches!(g.state, GroupState::Stable | GroupState::CompletingRebalance) {
                    let leader = g.leader.clone();
                    proptest::prop_assert!(leader.is_some_and(|l| g.members.contains_key(&l)));
                }
                if g.state == GroupState::Stable {
                    proptest::prop_assert!(stored.contains(&g.generation), "Stable before its record was stored");
                }
                for (at, rx) in &mut waiting {
                    if let Ok(r) = rx.try_recv() {
                        proptest::prop_assert!(r.error != 0 || stored.contains(at), "assignment of generation {} before it was stored", at);
                    }
                }
            }
            drop(joins);
        }
    }
}
