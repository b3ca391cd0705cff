//! Cluster metadata: a Raft quorum of controller voters (openraft) replicates
//! a log of typed records ([`records`]) that every broker applies to its own
//! [`MetadataImage`] (brokers, topics, configs, producer id blocks).
//!
//! Changes run on the active controller, one at a time: the operation is
//! validated against the image by the pure changes of [`image`], and its
//! difference is appended as one entry. A broker that is not the active
//! controller forwards the operation to it. A single node is a quorum of one.

pub mod image;
pub mod leadership;
pub mod liveness;
pub mod network;
pub mod ops;
pub mod placement;
pub mod publisher;
pub mod reassignment;
pub mod records;
pub mod store;

#[cfg(test)]
mod quorum_tests;
#[cfg(test)]
mod reassignment_tests;

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft, ServerState};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::{BrokerConfig, LogConfig};
use crate::error::{Error, Result};
pub use image::{ConfigOp, MetadataImage, TopicImage};
use network::{NetworkFactory, Peers};
use publisher::Published;
pub use records::{ControllerError, ControllerOp, ImageChanges, IsrChange, OpResult};
use store::{LogStore, NodeId, RecordBatch, StateMachine};

const METADATA_DIR: &str = "__cluster_metadata";
/// Producer ids handed out per block, as Kafka's controller does.
const PRODUCER_ID_BLOCK: i64 = 1000;

/// What applying one log entry answers: its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub u64);

openraft::declare_raft_types!(
    /// The metadata quorum's types.
    pub TypeConfig:
        D = RecordBatch,
        R = Applied,
);

/// Told of every applied change: the image after it, and what it changed.
type Listener = Box<dyn Fn(&Arc<MetadataImage>, &ImageChanges) -> Result<()> + Send + Sync>;
pub struct Controller {
    broker: BrokerConfig,
    node_id: NodeId,
    voters: BTreeMap<NodeId, BasicNode>,
    pub(crate) raft: Raft<TypeConfig>,
    published: Arc<Published>,
    peers: Peers,
    /// The active controller runs one operation at a time, so each sees the
    /// previous one's records applied.
    write: tokio::sync::Mutex<()>,
    /// This broker's block of producer ids: next, end.
    producer_ids: tokio::sync::Mutex<(i64, i64)>,
    /// On the active controller: each broker incarnation's session.
    sessions: Mutex<HashMap<(i32, uuid::Uuid), Session>>,
    /// Brokers this one suspects dead (its fetches to them broke).
    suspicions: liveness::Suspicions,
}

/// The metadata quorum as one node sees it.
#[derive(Debug, Clone, Copy)]
pub struct QuorumState {
    pub active: bool,
    pub term: u64,
    pub log_end: u64,
    pub applied: u64,
}

/// A broker's session with the active controller.
struct Session {
    last_heartbeat: tokio::time::Instant,
    /// The metadata log index the broker must have applied to be unfenced.
    catch_up_to: u64,
}

/// A broker's liveness report to the active controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: i32,
    pub incarnation_id: uuid::Uuid,
    /// The index of the last metadata log entry the broker has applied.
    pub applied: u64,
    /// Brokers whose connections broke under this one: the controller
    /// probes them and fences those that are gone.
    #[serde(default)]
    pub unreachable: Vec<i32>,
}

/// The controller's answer: whether it knows this incarnation (if not, the
/// broker registers again) and whether the broker is unfenced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub registered: bool,
    pub active: bool,
}

impl Controller {
    /// Opens the quorum's state under the data directory and starts Raft. A
    /// voter whose log is empty proposes the configured voters as the first
    /// membership (every voter proposing the same one is safe).
    pub async fn start(data_dir: &Path, broker: BrokerConfig) -> Result<Arc<Controller>> {
        let peers = Peers::default();
        let network = NetworkFactory { peers: peers.clone() };
        Controller::start_with(data_dir, broker, network, peers).await
    }

    /// [`Controller::start`] over a given Raft transport (tests partition an
    /// in-process one); `peers` still carries forwarded writes and heartbeats.
    async fn start_with<N: openraft::RaftNetworkFactory<TypeConfig>>(
        data_dir: &Path,
        broker: BrokerConfig,
        network: N,
        peers: Peers,
    ) -> Result<Arc<Controller>> {
        let dir = data_dir.join(METADATA_DIR);
        let voters: BTreeMap<NodeId, BasicNode> = broker
            .quorum_voters()?
            .into_iter()
            .map(|(id, addr)| (id as NodeId, BasicNode::new(addr)))
            .collect();
        let node_id = broker.node_id as NodeId;
        if broker.is_controller() && !voters.contains_key(&node_id) {
            return Err(Error::InvalidConfig(format!(
                "node.id {node_id} has the controller role but is not among controller.quorum.voters ({})",
                broker.controller_quorum_voters
            )));
        }
        let log = LogStore::open(&dir)?;
        let fresh = log.is_empty();
        let snapshot_every = broker.metadata_log_max_record_bytes_between_snapshots.max(1) as u64;
        let state = StateMachine::open(&dir, broker.node_id, snapshot_every)?;
        let published = state.published();
        let mut snapshot_due = state.snapshot_due.subscribe();
        let config = openraft::Config {
            cluster_name: "fjord".into(),
            heartbeat_interval: 150,
            election_timeout_min: 800,
            election_timeout_max: 1600,
            // Snapshots are taken by size (see `snapshot_due` below).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 100,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let raft = Raft::new(node_id, Arc::new(config), network, log, state)
            .await
            .map_err(|e| Error::Storage(std::io::Error::other(e.to_string())))?;
        // Ends with the state machine (its sender), when the quorum shuts down.
        let snapshots = raft.clone();
        tokio::spawn(async move {
            while snapshot_due.wait_for(|due| *due).await.is_ok() {
                if snapshots.trigger().snapshot().await.is_err() {
                    return;
                }
                // Asked; wait until it is taken before asking again.
                if snapshot_due.wait_for(|due| !*due).await.is_err() {
                    return;
                }
            }
        });
        if fresh && broker.is_controller() {
            match raft.initialize(voters.clone()).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(Error::Storage(std::io::Error::other(e.to_string()))),
            }
        }
        Ok(Arc::new(Controller {
            broker,
            node_id,
            voters,
            raft,
            published,
            peers,
            write: tokio::sync::Mutex::new(()),
            producer_ids: tokio::sync::Mutex::new((0, 0)),
            sessions: Mutex::new(HashMap::new()),
            suspicions: liveness::Suspicions::default(),
        }))
    }

    /// Called with every applied image (and at once with the current one).
    pub fn subscribe(&self, listener: Listener) -> Result<()> {
        self.published.subscribe(listener)
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.published.image.read().clone()
    }

    pub fn broker_config(&self) -> &BrokerConfig {
        &self.broker
    }

    /// The active controller's node id, when one is known.
    pub fn active_controller(&self) -> Option<i32> {
        self.raft.metrics().borrow().current_leader.map(|id| id as i32)
    }

    pub fn is_active(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// The brokers clients are told about: registered and unfenced, ordered
    /// by id; this broker alone until its registration is applied.
    pub fn live_brokers(&self, this: &image::BrokerRegistration) -> Vec<image::BrokerRegistration> {
        let image = self.image();
        let mut live: Vec<_> = image.brokers.values().filter(|b| !b.fenced).cloned().collect();
        if !live.iter().any(|b| b.id == this.id) {
            live.push(this.clone());
            live.sort_by_key(|b| b.id);
        }
        live
    }

    /// The quorum as this node sees it, for metrics.
    pub fn quorum_state(&self) -> QuorumState {
        let m = self.raft.metrics();
        let m = m.borrow();
        QuorumState {
            active: m.state == ServerState::Leader && m.current_leader == Some(self.node_id),
            term: m.current_term,
            log_end: m.last_log_index.unwrap_or(0),
            applied: *self.published.applied.borrow(),
        }
    }

    /// How many metadata records each node's copy of the quorum log is
    /// behind this one's, when this node is the active controller (openraft's
    /// replication progress; the controller itself is 0). A broker the
    /// controller does not replicate to yet is missing.
    pub fn metadata_lags(&self) -> Option<BTreeMap<i32, u64>> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader {
            return None;
        }
        let end = m.last_log_index.unwrap_or(0);
        let mut lags: BTreeMap<i32, u64> = m
            .replication
            .as_ref()?
            .iter()
            .map(|(id, matched)| {
                let lag = match matched {
                    Some(log_id) => end.saturating_sub(log_id.index),
                    None => end + 1,
                };
                (*id as i32, lag)
            })
            .collect();
        lags.insert(self.node_id as i32, 0);
        Some(lags)
    }

    pub fn voter_ids(&self) -> Vec<i32> {
        self.voters.keys().map(|id| *id as i32).collect()
    }

    /// Waits until the quorum has a cluster id (the first active controller
    /// sets it), proposing it when this node leads and there is none yet.
    pub async fn wait_for_cluster_id(&self) -> Result<()> {
        // A broker that is not a voter receives the log only once it has
        // registered (as a learner); its registration waits for the id.
        if !self.voters.contains_key(&self.node_id) {
            return Ok(());
        }
        loop {
            if !self.image().cluster_id.is_empty() {
                return Ok(());
            }
            if self.is_active() {
                let id = if self.broker.cluster_id.is_empty() {
                    uuid::Uuid::new_v4().simple().to_string()[..22].to_string()
                } else {
                    self.broker.cluster_id.clone()
                };
                match self.execute_local(ControllerOp::SetClusterId(id)).await {
                    Ok(_) | Err(ControllerError::NotController(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The broker config with dynamic cluster-wide overrides applied.
    pub fn effective_broker_config(&self) -> BrokerConfig {
        effective(&self.broker, &self.image())
    }

    pub fn log_config(&self, topic: &str) -> Result<LogConfig> {
        let image = self.image();
        let overrides = image.topics.get(topic).map(|t| t.configs.clone()).unwrap_or_default();
        Ok(LogConfig::with_overrides(&effective(&self.broker, &image), &overrides)?)
    }

    /// Runs an operation on the active controller: here, or forwarded to it.
    /// Returns once this broker's image holds the change.
    pub async fn execute(&self, op: ControllerOp) -> Result<OpResult> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let outcome = match self.active_controller() {
                Some(id) if id as NodeId == self.node_id => self.execute_local(op.clone()).await,
                _ => self.to_controller(network::Rpc::Write, &op).await,
            };
            match outcome {
                Ok((result, index)) => {
                    // Forwarded: wait until this broker has applied it too.
                    let mut applied = self.published.applied.subscribe();
                    let _ = tokio::time::timeout_at(deadline, applied.wait_for(|i| *i >= index)).await;
                    return Ok(result);
                }
                Err(ControllerError::NotController(reason)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%reason, "waiting for the active controller");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A controller RPC to the active controller. A broker that is not a
    /// voter does not know it before it follows the log (it is added as a
    /// learner when it registers), so it asks each voter in turn.
    async fn to_controller<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        rpc: network::Rpc,
        req: &Req,
    ) -> std::result::Result<Resp, ControllerError> {
        if let Some(id) = self.active_controller() {
            return self.call_controller(id as NodeId, rpc, req).await;
        }
        if self.voters.contains_key(&self.node_id) {
            return Err(ControllerError::NotController("no active controller yet".into()));
        }
        for id in self.voters.keys() {
            match self.call_controller(*id, rpc, req).await {
                Err(ControllerError::NotController(_)) => continue,
                answer => return answer,
            }
        }
        Err(ControllerError::NotController(
            "no voter is the active controller".into(),
        ))
    }

    /// On the active controller: a broker that is not a voter follows the
    /// metadata log as a Raft learner (it never votes).
    async fn add_learner(&self, registration: &image::BrokerRegistration) -> std::result::Result<(), ControllerError> {
        let id = registration.id as NodeId;
        let known = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some_and(|n| n.addr == registration.admin);
        if known || self.voters.contains_key(&id) {
            return Ok(());
        }
        tracing::info!(broker = id, admin = %registration.admin, "adding a broker to the metadata quorum as a learner");
        self.raft
            .add_learner(id, BasicNode::new(registration.admin.clone()), false)
            .await
            .map(|_| ())
            .map_err(|e| ControllerError::NotController(e.to_string()))
    }

    /// A controller RPC to node `id`; its answer carries the controller's own result.
    async fn call_controller<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        id: NodeId,
        rpc: network::Rpc,
        req: &Req,
    ) -> std::result::Result<Resp, ControllerError> {
        let addr = self
            .node_addr(id)
            .ok_or_else(|| ControllerError::NotController(format!("no address for controller {id}")))?;
        let reply: std::result::Result<Resp, ControllerError> = self
            .peers
            .call(&addr, rpc, req, None)
            .await
            .map_err(|s| ControllerError::NotController(format!("controller {id} at {addr}: {}", s.message())))?;
        reply
    }

    /// Runs an operation here, as the active controller: validates it against
    /// the image, appends its records and waits for them to apply. Answers the
    /// result and the log index that holds it.
    pub async fn execute_local(&self, op: ControllerOp) -> std::result::Result<(OpResult, u64), ControllerError> {
        let _one_at_a_time = self.write.lock().await;
        if let ControllerOp::RegisterBroker(registration) = &op {
            self.add_learner(registration).await?;
        }
        // Our image must hold everything committed before we judge the operation.
        self.raft
            .ensure_linearizable()
            .await
            .map_err(|e| ControllerError::NotController(e.to_string()))?;
        let (result, batch) = ops::run(&self.broker, &op, &self.image())?;
        if batch.is_empty() {
            return Ok((result, *self.published.applied.borrow()));
        }
        match self.raft.client_write(batch).await {
            Ok(response) => Ok((result, response.data.0)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ControllerError::NotController(
                format!("controller moved to {:?}", f.leader_id),
            )),
            Err(e) => Err(ControllerError::NotController(e.to_string())),
        }
    }

    /// Runs an operation, or with `validate_only` makes only the checks the
    /// active controller would make, against this broker's image.
    async fn execute_or_validate(&self, op: ControllerOp, validate_only: bool) -> Result<OpResult> {
        if validate_only {
            return Ok(ops::run(&self.broker, &op, &self.image())?.0);
        }
        self.execute(op).await
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> Result<TopicImage> {
        let op = ControllerOp::CreateTopic {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs,
            assignments,
        };
        match self.execute_or_validate(op, validate_only).await? {
            OpResult::Topic(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<TopicImage> {
        match self.execute(ControllerOp::DeleteTopic(name.to_string())).await? {
            OpResult::Topic(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> Result<()> {
        let op = ControllerOp::CreatePartitions {
            name: name.to_string(),
            count,
            assignments,
        };
        self.execute_or_validate(op, validate_only).await.map(|_| ())
    }

    pub async fn alter_topic_configs(&self, name: &str, ops: &[ConfigOp], validate_only: bool) -> Result<()> {
        let op = ControllerOp::AlterTopicConfigs {
            name: name.to_string(),
            ops: ops.to_vec(),
        };
        self.execute_or_validate(op, validate_only).await.map(|_| ())
    }

    pub async fn alter_broker_configs(
        &self,
        ops: &[ConfigOp],
        default_entity: bool,
        validate_only: bool,
    ) -> Result<()> {
        let op = ControllerOp::AlterBrokerConfigs {
            ops: ops.to_vec(),
            default_entity,
        };
        self.execute_or_validate(op, validate_only).await.map(|_| ())
    }

    /// AlterPartitionReassignments: per change (topic, partition, target or
    /// `None` to cancel), whether the controller took it.
    pub async fn alter_reassignments(
        &self,
        changes: Vec<(String, i32, Option<Vec<i32>>)>,
        allow_rf_change: bool,
    ) -> Result<Vec<Result<()>>> {
        match self
            .execute(ControllerOp::AlterReassignments {
                changes,
                allow_rf_change,
            })
            .await?
        {
            OpResult::Reassigned(results) => Ok(results.into_iter().map(|r| r.map_err(Error::from)).collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Starts moving every replica off broker `id`; answers how many partitions move.
    pub async fn drain_broker(&self, id: i32) -> Result<usize> {
        match self.execute(ControllerOp::DrainBroker { id }).await? {
            OpResult::Moved(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// A new producer id from this broker's block; blocks come from the
    /// controller, so ids never repeat across brokers or restarts.
    pub async fn allocate_producer_id(&self) -> Result<i64> {
        let mut ids = self.producer_ids.lock().await;
        if ids.0 >= ids.1 {
            let start = match self
                .execute(ControllerOp::AllocateProducerIds {
                    block: PRODUCER_ID_BLOCK,
                })
                .await?
            {
                OpResult::ProducerIdBlock(start) => start,
                other => return Err(unexpected(other)),
            };
            *ids = (start, start + PRODUCER_ID_BLOCK);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// On the active controller: a broker's heartbeat. A fenced broker (just
    /// registered, or silent for a session) is unfenced once it has applied
    /// the metadata log as far as this controller had when it first asked, so
    /// it never leads with an image older than its own registration.
    pub async fn receive_heartbeat(&self, hb: Heartbeat) -> std::result::Result<HeartbeatReply, ControllerError> {
        if !self.is_active() {
            return Err(ControllerError::NotController("not the active controller".into()));
        }
        let key = (hb.id, hb.incarnation_id);
        let fenced = match self.image().brokers.get(&hb.id) {
            Some(b) if b.incarnation_id == hb.incarnation_id => b.fenced,
            _ => return Ok(HeartbeatReply::default()),
        };
        let caught_up = {
            let mut sessions = self.sessions.lock();
            let applied = *self.published.applied.borrow();
            let session = sessions.entry(key).or_insert(Session {
                last_heartbeat: tokio::time::Instant::now(),
                catch_up_to: applied,
            });
            session.last_heartbeat = tokio::time::Instant::now();
            hb.applied >= session.catch_up_to
        };
        if fenced && caught_up {
            self.execute_local(ControllerOp::UnfenceBroker {
                id: hb.id,
                incarnation_id: hb.incarnation_id,
            })
            .await?;
        }
        for suspect in hb.unreachable.iter().filter(|s| **s != hb.id) {
            self.fence_if_gone(*suspect, "its connections broke under another broker")
                .await;
        }
        Ok(HeartbeatReply {
            registered: true,
            active: !fenced || caught_up,
        })
    }

    /// The brokers to fence now: unfenced, and silent for the session timeout.
    /// A newly active controller gives every broker a full session first.
    fn expired_brokers(&self, session: Duration) -> Vec<(i32, uuid::Uuid)> {
        let now = tokio::time::Instant::now();
        let applied = *self.published.applied.borrow();
        let mut sessions = self.sessions.lock();
        self.image()
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| (b.id, b.incarnation_id))
            .filter(|key| {
                let s = sessions.entry(*key).or_insert(Session {
                    last_heartbeat: now,
                    catch_up_to: applied,
                });
                now.duration_since(s.last_heartbeat) > session
            })
            .collect()
    }

    fn heartbeat(&self, registration: &image::BrokerRegistration) -> Heartbeat {
        Heartbeat {
            id: registration.id,
            incarnation_id: registration.incarnation_id,
            applied: *self.published.applied.borrow(),
            unreachable: self.suspicions.take(),
        }
    }

    /// A broker this one's fetches can no longer reach: reported to the
    /// active controller with a heartbeat sent now.
    pub fn suspect(&self, broker: i32) {
        if broker != self.node_id as i32 {
            self.suspicions.raise(broker);
        }
    }

    /// On the active controller: fences `broker` when its listener proves it
    /// gone (a dead process refuses connections; a slow one still accepts
    /// them and keeps its session), so its partitions move now rather than
    /// after `broker.session.timeout.ms`.
    async fn fence_if_gone(&self, broker: i32, why: &str) {
        let Some(b) = self.image().brokers.get(&broker).filter(|b| !b.fenced).cloned() else {
            return;
        };
        if broker == self.node_id as i32 {
            return;
        }
        let addr = format!("{}:{}", b.host, b.port);
        if liveness::probe(&addr).await != liveness::Probe::Gone {
            return;
        }
        tracing::warn!(broker, %addr, why, "fencing a broker whose listener refuses connections");
        let op = ControllerOp::FenceBroker {
            id: broker,
            incarnation_id: b.incarnation_id,
        };
        if let Err(e) = self.execute_local(op).await {
            tracing::debug!(broker, error = ?e, "fencing a gone broker failed");
        }
    }

    /// On the active controller: unfenced brokers whose last heartbeat is
    /// older than `late` (but within their session).
    fn late_brokers(&self, late: Duration) -> Vec<i32> {
        let now = tokio::time::Instant::now();
        let sessions = self.sessions.lock();
        self.image()
            .brokers
            .values()
            .filter(|b| !b.fenced && b.id != self.node_id as i32)
            .filter(|b| {
                sessions
                    .get(&(b.id, b.incarnation_id))
                    .is_some_and(|s| now.duration_since(s.last_heartbeat) > late)
            })
            .map(|b| b.id)
            .collect()
    }

    /// Registers this broker with the active controller and waits until it is
    /// unfenced (caught up with the metadata log). Waits as long as there is
    /// no quorum, as a Kafka broker does.
    pub async fn register(&self, registration: &image::BrokerRegistration) -> Result<()> {
        loop {
            if let Err(e) = self.execute(ControllerOp::RegisterBroker(registration.clone())).await {
                tracing::warn!(error = %e, "registering with the controller failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            loop {
                match self.send_heartbeat(self.heartbeat(registration)).await {
                    Ok(reply) if reply.active => {
                        // The controller has unfenced us; wait until our own image
                        // says so too, so that what runs next (loading the groups
                        // of the partitions we lead) sees our leadership.
                        self.wait_for_own_unfencing(registration).await;
                        tracing::info!(
                            node_id = registration.id,
                            cluster_id = %self.image().cluster_id,
                            "registered with the controller and unfenced"
                        );
                        return Ok(());
                    }
                    Ok(reply) if !reply.registered => break,
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = ?e, "heartbeat failed"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    async fn wait_for_own_unfencing(&self, registration: &image::BrokerRegistration) {
        let mut applied = self.published.applied.subscribe();
        let unfenced = |image: &MetadataImage| {
            image
                .brokers
                .get(&registration.id)
                .is_some_and(|b| b.incarnation_id == registration.incarnation_id && !b.fenced)
        };
        let wait = async {
            while !unfenced(&self.published.acted_on()) {
                if applied.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(15), wait).await.is_err() {
            tracing::warn!("the unfencing record has not reached this broker's image yet");
        }
    }

    /// Heartbeats to the active controller and registers again when it no
    /// longer knows this incarnation. On the active controller, also fences
    /// brokers that stopped heartbeating.
    pub async fn run_lifecycle(
        self: Arc<Self>,
        registration: image::BrokerRegistration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let interval = Duration::from_millis(self.broker.broker_heartbeat_interval_ms.clamp(10, 60_000) as u64);
        let session = Duration::from_millis(self.broker.broker_session_timeout_ms.clamp(100, 3_600_000) as u64);
        let imbalance_check =
            Duration::from_secs(self.broker.leader_imbalance_check_interval_seconds.clamp(1, 86_400) as u64);
        let mut last_imbalance_check = tokio::time::Instant::now();
        let mut was_active = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                // A suspicion goes out at once (at most every 50 ms).
                () = self.suspicions.raised() => tokio::time::sleep(Duration::from_millis(50)).await,
                () = crate::shutdown::stopped(&mut shutdown) => return,
            }
            match self.send_heartbeat(self.heartbeat(&registration)).await {
                Ok(reply) if !reply.registered => {
                    if let Err(e) = self.execute(ControllerOp::RegisterBroker(registration.clone())).await {
                        tracing::warn!(error = %e, "registering again with the controller failed");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = ?e, "heartbeat failed"),
            }
            let active = self.is_active();
            if active && !was_active {
                self.sessions.lock().clear();
            }
            was_active = active;
            if active {
                // Two heartbeats missed: a broker that died is gone now, not
                // at the end of its session. Probed off this loop: a host
                // that drops connection attempts costs the probe's timeout,
                // which must not hold back this broker's own heartbeats.
                for id in self.late_brokers(2 * interval) {
                    let controller = self.clone();
                    tokio::spawn(async move { controller.fence_if_gone(id, "its heartbeats stopped").await });
                }
                for (id, incarnation_id) in self.expired_brokers(session) {
                    tracing::warn!(broker = id, "fencing a broker without a heartbeat for {session:?}");
                    let _ = self
                        .execute_local(ControllerOp::FenceBroker { id, incarnation_id })
                        .await;
                }
                if last_imbalance_check.elapsed() >= imbalance_check {
                    last_imbalance_check = tokio::time::Instant::now();
                    self.rebalance_leaders().await;
                }
            }
        }
    }

    /// Controlled shutdown (on SIGTERM, before the listeners close): the
    /// controller fences this broker and elects new leaders for what it led,
    /// so clients move while this broker still answers them. A partition whose
    /// ISR is this broker alone goes offline until it returns, as in Kafka.
    pub async fn controlled_shutdown(&self, registration: &image::BrokerRegistration) -> Result<()> {
        // Bounded: without a quorum (the last voters stopping) nobody can
        // move anything, and the broker must still stop.
        let timeout = Duration::from_millis(self.broker.broker_session_timeout_ms.clamp(100, 5_000) as u64);
        let op = ControllerOp::FenceBroker {
            id: registration.id,
            incarnation_id: registration.incarnation_id,
        };
        match tokio::time::timeout(timeout, self.execute(op)).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(Error::NotController(format!(
                "no active controller answered within {timeout:?}"
            ))),
        }
    }

    /// On the active controller: moves leadership back to preferred replicas
    /// where a broker's leader imbalance is above the configured share.
    async fn rebalance_leaders(&self) {
        if !self.broker.auto_leader_rebalance_enable {
            return;
        }
        let percent = self.effective_broker_config().leader_imbalance_per_broker_percentage;
        if self.image().preferred_leader_moves(percent).is_empty() {
            return;
        }
        match self
            .execute_local(ControllerOp::ElectPreferredLeaders { partitions: None })
            .await
        {
            Ok((OpResult::Elected(n), _)) if n > 0 => {
                tracing::info!(partitions = n, "moved leadership back to preferred replicas");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = ?e, "preferred leader election failed"),
        }
    }

    async fn send_heartbeat(&self, hb: Heartbeat) -> std::result::Result<HeartbeatReply, ControllerError> {
        match self.active_controller() {
            Some(id) if id as NodeId == self.node_id => self.receive_heartbeat(hb).await,
            _ => self.to_controller(network::Rpc::Heartbeat, &hb).await,
        }
    }

    fn node_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .or_else(|| self.voters.get(&id).map(|n| n.addr.clone()))
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

fn unexpected(result: OpResult) -> Error {
    Error::Storage(std::io::Error::other(format!(
        "unexpected controller answer {result:?}"
    )))
}

pub(crate) fn effective(broker: &BrokerConfig, image: &MetadataImage) -> BrokerConfig {
    let mut config = broker.clone();
    for (k, v) in &image.broker_overrides {
        let _ = config.set(k, v);
    }
    config
}
