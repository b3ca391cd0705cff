//! The metadata quorum under network partitions: three controllers in one
//! process over an in-process transport whose links the test cuts and heals.
//! Whatever is cut, there is never more than one active controller in a Raft
//! term, an isolated controller commits nothing, and after healing every node
//! holds the same image.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft, ServerState};
use parking_lot::Mutex;

use super::network::Peers;
use super::store::NodeId;
use super::{Controller, ControllerOp, TypeConfig};
use crate::config::BrokerConfig;

/// Every node's Raft, and the links that are cut (both directions).
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft<TypeConfig>>>>,
    cut: Arc<Mutex<BTreeSet<(NodeId, NodeId)>>>,
}

impl Router {
    // The error type is openraft's; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    fn reach<E: std::error::Error>(
        &self,
        from: NodeId,
        to: NodeId,
    ) -> Result<Raft<TypeConfig>, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let unreachable = || RPCError::Unreachable(Unreachable::new(&std::io::Error::other("link cut")));
        if self.cut.lock().contains(&(from.min(to), from.max(to))) {
            return Err(unreachable());
        }
        self.nodes.lock().get(&to).cloned().ok_or_else(unreachable)
    }

    /// Cuts every link between `node` and the others.
    fn isolate(&self, node: NodeId) {
        let mut cut = self.cut.lock();
        for other in self.nodes.lock().keys().filter(|o| **o != node) {
            cut.insert((node.min(*other), node.max(*other)));
        }
    }

    fn heal(&self) {
        self.cut.lock().clear();
    }
}

struct Net {
    from: NodeId,
    router: Router,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Link {
        Link {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

struct Link {
    from: NodeId,
    to: NodeId,
    router: Router,
}

type Rpc<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let raft = self.router.reach(self.from, self.to)?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let raft = self.router.reach(self.from, self.to)?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>, openraft::error::Infallible> {
        let raft = self.router.reach(self.from, self.to)?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

async fn start(dir: &std::path::Path, router: &Router) -> BTreeMap<NodeId, Arc<Controller>> {
    let voters = "1@127.0.0.1:1,2@127.0.0.1:2,3@127.0.0.1:3";
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        let config = BrokerConfig {
            node_id: id,
            controller_quorum_voters: voters.into(),
            ..BrokerConfig::default()
        };
        let net = Net {
            from: id as NodeId,
            router: router.clone(),
        };
        let c = Controller::start_with(&dir.join(id.to_string()), config, net, Peers::default())
            .await
            .unwrap();
        router.nodes.lock().insert(id as NodeId, c.raft.clone());
        nodes.insert(id as NodeId, c);
    }
    nodes
}

/// Polls until `f` holds, at most 60 s (elections on a loaded two-core CI
/// machine can take several rounds).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The leader the nodes in `among` agree on, if they all do.
fn agreed_leader(nodes: &BTreeMap<NodeId, Arc<Controller>>, among: &[NodeId]) -> Option<NodeId> {
    let leaders: BTreeSet<Option<NodeId>> = among
        .iter()
        .map(|id| nodes[id].raft.metrics().borrow().current_leader)
        .collect();
    match leaders.into_iter().collect::<Vec<_>>()[..] {
        [Some(l)] if among.contains(&l) && nodes[&l].is_active() => Some(l),
        _ => None,
    }
}

fn topic(name: &str) -> ControllerOp {
    ControllerOp::CreateTopic {
        name: name.into(),
        partitions: 1,
        replication_factor: 1,
        configs: BTreeMap::new(),
        assignments: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_never_make_two_active_controllers() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let nodes = start(dir.path(), &router).await;
    let all: Vec<NodeId> = nodes.keys().copied().collect();

    // Watches every node's view, all along: (term, leader) pairs.
    let leaders_by_term: Arc<Mutex<BTreeMap<u64, BTreeSet<NodeId>>>> = Arc::default();
    let watch = {
        let (nodes, seen) = (nodes.clone(), leaders_by_term.clone());
        tokio::spawn(async move {
            loop {
                for (id, c) in &nodes {
                    let m = c.raft.metrics().borrow().clone();
                    if m.state == ServerState::Leader {
                        seen.lock().entry(m.current_term).or_default().insert(*id);
                    }
                }
                // Often enough to see every term's leader (terms last far
                // longer), rarely enough not to starve the nodes themselves.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    until("a first active controller", || agreed_leader(&nodes, &all).is_some()).await;
    let mut written = Vec::new();
    // Isolate whoever leads, three times over; a deterministic order of cuts.
    for round in 0..3 {
        let old = agreed_leader(&nodes, &all).expect("one leader for all");
        let name = format!("before-{round}");
        nodes[&old].execute_local(topic(&name)).await.unwrap();
        written.push(name);

        router.isolate(old);
        let rest: Vec<NodeId> = all.iter().copied().filter(|id| *id != old).collect();
        until("a new active controller among the majority", || {
            agreed_leader(&nodes, &rest).is_some_and(|l| l != old)
        })
        .await;
        let new = agreed_leader(&nodes, &rest).unwrap();
        // The isolated one cannot commit: a majority is needed.
        let stale = tokio::time::timeout(
            Duration::from_secs(2),
            nodes[&old].execute_local(topic(&format!("lost-{round}"))),
        )
        .await;
        assert!(!matches!(stale, Ok(Ok(_))), "an isolated controller committed a change");
        let name = format!("during-{round}");
        nodes[&new].execute_local(topic(&name)).await.unwrap();
        written.push(name);

        router.heal();
        until("the old controller following again", || {
            !nodes[&old].is_active() && agreed_leader(&nodes, &all).is_some()
        })
        .await;
    }
    // Every node ends with the same image: everything the majority wrote, nothing the isolated ones tried.
    let last = written.last().unwrap().clone();
    until("every node applied the last change", || {
        nodes.values().all(|c| c.image().topics.contains_key(&last))
    })
    .await;
    let images: Vec<_> = nodes.values().map(|c| c.image()).collect();
    for image in &images {
        assert_eq!(**image, *images[0]);
        for name in &written {
            assert!(image.topics.contains_key(name), "{name}");
        }
        assert!(!image.topics.keys().any(|t| t.starts_with("lost-")));
    }
    watch.abort();
    let seen = leaders_by_term.lock().clone();
    assert!(seen.len() >= 4, "elections happened: {seen:?}");
    for (term, leaders) in &seen {
        assert_eq!(leaders.len(), 1, "term {term} had leaders {leaders:?}");
    }
    for c in nodes.values() {
        c.shutdown().await;
    }
}
