//! The quorum's transport: openraft's RPCs, forwarded controller writes and
//! broker heartbeats over gRPC (`proto/controller.proto`) on the admin
//! listener. Payloads are JSON; a peer that cannot be reached is reported to
//! openraft as unreachable, which backs off and retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fjord_proto::controller::v1::quorum_client::QuorumClient;
use fjord_proto::controller::v1::quorum_server::{Quorum, QuorumServer};
use fjord_proto::controller::v1::Payload;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::store::NodeId;
use super::{Controller, TypeConfig};

fn encode<T: Serialize>(value: &T) -> Result<Payload, Status> {
    serde_json::to_vec(value)
        .map(|json| Payload { json })
        .map_err(|e| Status::internal(e.to_string()))
}

fn decode<T: DeserializeOwned>(payload: &Payload) -> Result<T, Status> {
    serde_json::from_slice(&payload.json).map_err(|e| Status::invalid_argument(format!("malformed payload: {e}")))
}

/// The quorum's RPCs (`proto/controller.proto`).
#[derive(Debug, Clone, Copy)]
pub enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Write,
    Heartbeat,
}

/// Channels to the other nodes, by address, shared by every Raft client and forwarder.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    fn client(&self, addr: &str) -> Result<QuorumClient<Channel>, Status> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(QuorumClient::new(c.clone()));
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(QuorumClient::new(channel))
    }

    /// One RPC to the node at `addr`: the request as JSON, the reply decoded.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        rpc: Rpc,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, Status> {
        let mut client = self.client(addr)?;
        let mut request = Request::new(encode(req)?);
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
            Rpc::Write => client.write(request).await,
            Rpc::Heartbeat => client.heartbeat(request).await,
        }?;
        decode(reply.get_ref())
    }
}

pub struct NetworkFactory {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    peers: Peers,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(&self, rpc: Rpc, req: &Req, timeout: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<NodeId, E>> = self
            .peers
            .call(&self.addr, rpc, req, Some(timeout))
            .await
            .map_err(|s| RPCError::Unreachable(Unreachable::new(&s)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}

/// The server side, on the admin listener.
pub struct QuorumService {
    controller: Arc<Controller>,
}

impl QuorumService {
    pub fn new(controller: Arc<Controller>) -> QuorumServer<QuorumService> {
        QuorumServer::new(QuorumService { controller })
    }
}

#[tonic::async_trait]
impl Quorum for QuorumService {
    async fn append_entries(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
        let result = self.controller.raft.append_entries(req).await;
        encode(&result).map(Response::new)
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let req: VoteRequest<NodeId> = decode(request.get_ref())?;
        let result = self.controller.raft.vote(req).await;
        encode(&result).map(Response::new)
    }

    async fn install_snapshot(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let req: InstallSnapshotRequest<TypeConfig> = decode(request.get_ref())?;
        let result = self.controller.raft.install_snapshot(req).await;
        encode(&result).map(Response::new)
    }

    async fn write(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let op = decode(request.get_ref())?;
        let result = self.controller.execute_local(op).await;
        encode(&result).map(Response::new)
    }

    async fn heartbeat(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let heartbeat = decode(request.get_ref())?;
        let result = self.controller.receive_heartbeat(heartbeat).await;
        encode(&result).map(Response::new)
    }
}
