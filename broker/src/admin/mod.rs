//! The admin gRPC service (`proto/admin.proto`) for tools and the operator.

mod transactions;

use std::collections::BTreeMap;
use std::sync::Arc;

use fjord_proto::admin::v1 as pb;
use pb::admin_server::{Admin, AdminServer};
use tonic::{Request, Response, Status};

use crate::context::BrokerContext;
use crate::controller::image::{BrokerRegistration, ConfigOp, OpType, DYNAMIC_BROKER_CONFIGS};
use crate::controller::TopicImage;
use crate::error::Error;
use crate::replica::partition::{EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

pub struct AdminService {
    ctx: Arc<BrokerContext>,
}

impl AdminService {
    pub fn new(ctx: Arc<BrokerContext>) -> AdminServer<AdminService> {
        AdminServer::new(AdminService { ctx })
    }

    /// Every partition as the image has it (leader, epochs, ISR, offline
    /// replicas); the log's offsets where this broker holds a replica, until
    /// `with_leader_offsets` puts the leaders' in.
    fn describe(&self, topic: &TopicImage) -> pb::TopicDescription {
        let image = self.ctx.controller.image();
        let partition_states = (0..topic.partitions)
            .map(|p| {
                let replicas = topic.replicas(p).to_vec();
                let state = topic.state(p);
                let isr = state.map(|s| s.isr.clone()).unwrap_or_default();
                let leader = state.and_then(|s| s.leader());
                let local = self
                    .ctx
                    .replicas
                    .partition(&crate::log::manager::TopicPartition::new(topic.name.clone(), p));
                let moving = topic.reassigning.get(&p);
                pb::PartitionState {
                    adding_replicas: moving.map(|r| r.adding()).unwrap_or_default(),
                    removing_replicas: moving.map(|r| r.removing()).unwrap_or_default(),
                    partition: p,
                    leader: leader.unwrap_or(-1),
                    leader_epoch: state.map_or(-1, |s| s.leader_epoch),
                    partition_epoch: state.map_or(-1, |s| s.partition_epoch),
                    offline_replicas: replicas.iter().copied().filter(|r| !image.is_live(*r)).collect(),
                    under_replicated: isr.len() < replicas.len(),
                    offline: leader.is_none(),
                    hosted_here: local.is_some(),
                    log_start_offset: local.as_ref().map_or(-1, |l| l.log_start_offset()),
                    log_end_offset: local.as_ref().map_or(-1, |l| l.log_end_offset()),
                    high_watermark: local.as_ref().map_or(-1, |l| l.high_watermark()),
                    size_bytes: local.as_ref().map_or(-1, |l| l.size_bytes() as i64),
                    replicas,
                    isr,
                }
            })
            .collect();
        let effective_configs = self
            .ctx
            .controller
            .log_config(&topic.name)
            .map(|c| c.entries().into_iter().map(|e| (e.name.to_string(), e.value)).collect())
            .unwrap_or_default();
        pb::TopicDescription {
            name: topic.name.clone(),
            topic_id: topic.id.to_string(),
            partitions: topic.partitions,
            replication_factor: topic.replication_factor as i32,
            configs: topic.configs.clone().into_iter().collect(),
            effective_configs,
            partition_states,
        }
    }

    /// The topic with every partition's offsets as its leader has them.
    async fn describe_by_name(&self, name: &str, fan_out: bool) -> Result<pb::TopicDescription, Status> {
        let image = self.ctx.controller.image();
        let topic = image
            .topics
            .get(name)
            .ok_or_else(|| Status::not_found(format!("topic '{name}' does not exist")))?;
        let mut described = [self.describe(topic)];
        self.with_leader_offsets(&mut described, fan_out).await;
        let [described] = described;
        Ok(described)
    }

    /// Replaces the log fields of partitions led elsewhere with their
    /// leaders' (a follower's end offset lags, and a broker without a replica
    /// has none). `fan_out` is false on a forwarded call: a broker asked by
    /// another answers for itself only.
    async fn with_leader_offsets(&self, described: &mut [pb::TopicDescription], fan_out: bool) {
        let me = self.ctx.config.node_id;
        let elsewhere: Vec<(String, i32)> = described
            .iter()
            .flat_map(|t| {
                t.partition_states
                    .iter()
                    .filter(|p| p.leader != me)
                    .map(|p| (t.name.clone(), p.partition))
            })
            .collect();
        if elsewhere.is_empty() {
            return;
        }
        let answers: BTreeMap<(String, i32), pb::PartitionOffsets> = self
            .offsets(&elsewhere, LATEST_TIMESTAMP, fan_out)
            .await
            .into_iter()
            .map(|o| ((o.topic.clone(), o.partition), o))
            .collect();
        for topic in described {
            for p in topic.partition_states.iter_mut().filter(|p| p.leader != me) {
                let answer = answers
                    .get(&(topic.name.clone(), p.partition))
                    .filter(|o| o.error.is_empty());
                p.log_start_offset = answer.map_or(-1, |o| o.log_start_offset);
                p.log_end_offset = answer.map_or(-1, |o| o.log_end_offset);
                p.high_watermark = answer.map_or(-1, |o| o.high_watermark);
                p.size_bytes = answer.map_or(-1, |o| o.size_bytes);
            }
        }
    }

    /// Each partition's offsets from its leader: answered here for the
    /// partitions this broker leads, by one forwarded call per other leader
    /// for the rest (when `fan_out`). A partition whose leader does not
    /// answer carries the reason in `error`.
    async fn offsets(&self, wanted: &[(String, i32)], timestamp: i64, fan_out: bool) -> Vec<pb::PartitionOffsets> {
        let image = self.ctx.controller.image();
        let me = self.ctx.config.node_id;
        let mut answered = Vec::with_capacity(wanted.len());
        let mut by_leader: BTreeMap<String, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        for (topic, partition) in wanted {
            let local = self.ctx.replicas.get(topic, *partition);
            let leader = image.topics.get(topic).and_then(|t| image.leader(t, *partition));
            match (local, leader) {
                (Ok(part), _) => answered.push(local_offsets(&part, topic, *partition, me, timestamp)),
                (Err(_), Some(leader)) if leader != me && fan_out => match image.brokers.get(&leader) {
                    Some(b) => by_leader
                        .entry(b.admin.clone())
                        .or_default()
                        .entry(topic.clone())
                        .or_default()
                        .push(*partition),
                    None => answered.push(unanswered(topic, *partition, leader, "its leader is not registered")),
                },
                (Err(e), leader) => {
                    answered.push(unanswered(topic, *partition, leader.unwrap_or(-1), &e.to_string()));
                }
            }
        }
        for (addr, topics) in by_leader {
            let partitions: Vec<pb::TopicPartitions> = topics
                .into_iter()
                .map(|(topic, partitions)| pb::TopicPartitions { topic, partitions })
                .collect();
            let request = pb::ListOffsetsRequest {
                partitions: partitions.clone(),
                timestamp,
            };
            let answer = match peer(&addr).await {
                Ok(mut client) => client.list_offsets(forward(request)).await.map(|r| r.into_inner()),
                Err(e) => Err(e),
            };
            match answer {
                Ok(r) => answered.extend(r.partitions),
                Err(status) => answered.extend(partitions.iter().flat_map(|tp| {
                    tp.partitions
                        .iter()
                        .map(|p| unanswered(&tp.topic, *p, -1, &format!("leader at {addr}: {}", status.message())))
                })),
            }
        }
        answered
    }
}

/// One partition's offsets on its leader, here.
fn local_offsets(
    part: &crate::replica::Partition,
    topic: &str,
    partition: i32,
    me: i32,
    timestamp: i64,
) -> pb::PartitionOffsets {
    let (offset, error) = match part.offset_for(timestamp) {
        Ok((offset, _)) => (offset, String::new()),
        Err(e) => (-1, e.to_string()),
    };
    pb::PartitionOffsets {
        topic: topic.to_string(),
        partition,
        leader: me,
        offset,
        log_start_offset: part.log_start_offset(),
        high_watermark: part.high_watermark(),
        log_end_offset: part.log_end_offset(),
        size_bytes: part.size_bytes() as i64,
        error,
    }
}

fn unanswered(topic: &str, partition: i32, leader: i32, why: &str) -> pb::PartitionOffsets {
    pb::PartitionOffsets {
        topic: topic.to_string(),
        partition,
        leader,
        offset: -1,
        log_start_offset: -1,
        high_watermark: -1,
        log_end_offset: -1,
        size_bytes: -1,
        error: why.to_string(),
    }
}

fn status(e: Error) -> Status {
    e.to_status()
}

/// Set on admin calls one broker makes to another on a client's behalf.
const FORWARDED: &str = "x-fjord-forwarded";

fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

fn forward<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

async fn peer(addr: &str) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>, Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::internal(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(30));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("broker at {addr}: {e}")))?;
    Ok(pb::admin_client::AdminClient::new(channel))
}

#[tonic::async_trait]
impl Admin for AdminService {
    /// Answered by the active controller (forwarded to it), which alone knows
    /// how far behind each broker's copy of the metadata log is; by this
    /// broker, with unknown lags, when it cannot be asked.
    async fn describe_cluster(
        &self,
        request: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        let c = &self.ctx;
        let lags = c.controller.metadata_lags();
        if lags.is_none() && !forwarded(&request) {
            let controller_admin = c
                .controller
                .active_controller()
                .filter(|id| *id != c.config.node_id)
                .and_then(|id| c.controller.image().brokers.get(&id).map(|b| b.admin.clone()));
            if let Some(addr) = controller_admin {
                match peer(&addr).await {
                    Ok(mut client) => match client.describe_cluster(forward(pb::DescribeClusterRequest {})).await {
                        Ok(answer) => return Ok(answer),
                        Err(e) => tracing::debug!(error = %e, "the active controller did not describe the cluster"),
                    },
                    Err(e) => tracing::debug!(error = %e, "the active controller is unreachable"),
                }
            }
        }
        let image = c.controller.image();
        let voters = c.controller.voter_ids();
        let as_pb = |b: &BrokerRegistration| pb::Broker {
            id: b.id,
            host: b.host.clone(),
            port: b.port,
            rack: b.rack.clone(),
            fenced: b.fenced,
            controller_voter: voters.contains(&b.id),
            leader_count: image.leader_count(b.id) as i32,
            replica_count: image.replica_count(b.id) as i32,
            metadata_lag: lags
                .as_ref()
                .and_then(|l| l.get(&b.id))
                .map_or(-1, |lag| i64::try_from(*lag).unwrap_or(i64::MAX)),
        };
        let mut brokers: Vec<pb::Broker> = image.brokers.values().map(as_pb).collect();
        // Before its registration is applied, this broker still answers for itself.
        if !image.brokers.contains_key(&c.config.node_id) {
            brokers.push(as_pb(&c.registration));
        }
        Ok(Response::new(pb::DescribeClusterResponse {
            cluster_id: image.cluster_id.clone(),
            controller_id: c.controller.active_controller().unwrap_or(c.config.node_id),
            brokers,
            version: env!("CARGO_PKG_VERSION").to_string(),
            broker_configs: image.broker_overrides.clone().into_iter().collect(),
        }))
    }

    async fn alter_broker_configs(
        &self,
        request: Request<pb::AlterBrokerConfigsRequest>,
    ) -> Result<Response<pb::AlterBrokerConfigsResponse>, Status> {
        let r = request.into_inner();
        let ops = r
            .ops
            .into_iter()
            .map(|o| {
                if !DYNAMIC_BROKER_CONFIGS.contains(&o.name.as_str()) {
                    return Err(Status::invalid_argument(format!(
                        "'{}' is not a broker config Fjord changes at run time; set it in the brokers' config",
                        o.name
                    )));
                }
                config_op(o)
            })
            .collect::<Result<Vec<_>, Status>>()?;
        self.ctx
            .controller
            .alter_broker_configs(&ops, true, r.validate_only)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AlterBrokerConfigsResponse {
            broker_configs: self
                .ctx
                .controller
                .image()
                .broker_overrides
                .clone()
                .into_iter()
                .collect(),
        }))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let image = self.ctx.controller.image();
        let mut topics: Vec<pb::TopicDescription> = image.topics.values().map(|t| self.describe(t)).collect();
        self.with_leader_offsets(&mut topics, !forwarded(&request)).await;
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let fan_out = !forwarded(&request);
        Ok(Response::new(
            self.describe_by_name(&request.into_inner().name, fan_out).await?,
        ))
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let fan_out = !forwarded(&request);
        let r = request.into_inner();
        let wanted: Vec<(String, i32)> = r
            .partitions
            .into_iter()
            .flat_map(|tp| tp.partitions.into_iter().map(move |p| (tp.topic.clone(), p)))
            .collect();
        Ok(Response::new(pb::ListOffsetsResponse {
            partitions: self.offsets(&wanted, r.timestamp, fan_out).await,
        }))
    }

    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let r = request.into_inner();
        let partitions = if r.partitions == 0 { -1 } else { r.partitions };
        let replication = if r.replication_factor == 0 {
            -1
        } else {
            r.replication_factor
        };
        let replication = i16::try_from(replication)
            .map_err(|_| Status::invalid_argument(format!("replication factor {replication} is out of range")))?;
        let configs: BTreeMap<String, String> = r.configs.into_iter().collect();
        let topic = self
            .ctx
            .controller
            .create_topic(&r.name, partitions, replication, configs, None, r.validate_only)
            .await
            .map_err(status)?;
        if r.validate_only {
            return Ok(Response::new(self.describe(&topic)));
        }
        tracing::info!(topic = %r.name, partitions = topic.partitions, "created topic (admin)");
        Ok(Response::new(self.describe_by_name(&r.name, true).await?))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        let topic = self.ctx.controller.delete_topic(&name).await.map_err(|e| match e {
            Error::UnknownTopicOrPartition => Status::not_found(format!("topic '{name}' does not exist")),
            other => status(other),
        })?;
        tracing::info!(topic = %name, "deleted topic (admin)");
        Ok(Response::new(pb::DeleteTopicResponse {
            topic_id: topic.id.to_string(),
        }))
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let r = request.into_inner();
        self.ctx
            .controller
            .create_partitions(&r.name, r.count, None, r.validate_only)
            .await
            .map_err(|e| match e {
                Error::UnknownTopicOrPartition => Status::not_found(format!("topic '{}' does not exist", r.name)),
                other => status(other),
            })?;
        Ok(Response::new(self.describe_by_name(&r.name, true).await?))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let mut listed = self.local_groups()?;
        // Each broker coordinates some groups: ask the others too (once).
        if !forwarded(&request) {
            for addr in self.other_brokers() {
                let mut peer = peer(&addr).await?;
                let theirs = peer.list_groups(forward(pb::ListGroupsRequest {})).await?.into_inner();
                listed.extend(theirs.groups);
            }
            listed.sort_by(|a, b| a.group_id.cmp(&b.group_id));
            listed.dedup_by(|a, b| a.group_id == b.group_id);
        }
        Ok(Response::new(pb::ListGroupsResponse { groups: listed }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        if let Some(addr) = self.coordinator_elsewhere(&request, &request.get_ref().group_id) {
            return peer(&addr).await?.describe_group(forward(request.into_inner())).await;
        }
        Ok(Response::new(
            self.group_description(&request.into_inner().group_id).await?,
        ))
    }

    async fn reset_group_offsets(
        &self,
        request: Request<pb::ResetGroupOffsetsRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        use crate::group::coordinator::CommitRequest;
        use pb::reset_group_offsets_request::To;
        // As FindCoordinator does: a reset may be the group's first write.
        self.ctx
            .groups
            .ensure_offsets_topic()
            .await
            .map_err(|e| Status::unavailable(format!("creating {} failed: {e}", crate::group::OFFSETS_TOPIC)))?;
        if let Some(addr) = self.coordinator_elsewhere(&request, &request.get_ref().group_id) {
            return peer(&addr)
                .await?
                .reset_group_offsets(forward(request.into_inner()))
                .await;
        }
        let r = request.into_inner();
        let to = To::try_from(r.to).map_err(|_| Status::invalid_argument(format!("unknown reset target {}", r.to)))?;
        let d = self
            .ctx
            .groups
            .describe(&r.group_id)
            .map_err(|code| Status::unavailable(format!("error {code}")))?;
        if !d.members.is_empty() {
            return Err(Status::with_details(
                tonic::Code::FailedPrecondition,
                format!(
                    "group '{}' has {} active members; offsets can only be reset while it is empty",
                    r.group_id,
                    d.members.len()
                ),
                bytes::Bytes::from_static(fjord_proto::reason::GROUP_NOT_EMPTY),
            ));
        }
        let image = self.ctx.controller.image();
        let mut wanted = Vec::new();
        for topic in &r.topics {
            let t = image
                .topics
                .get(topic)
                .ok_or_else(|| Status::not_found(format!("topic '{topic}' does not exist")))?;
            wanted.extend((0..t.partitions).map(|p| (topic.clone(), p)));
        }
        // Kafka's reset-offsets: each partition's target from its leader.
        let timestamp = match to {
            To::Earliest => EARLIEST_TIMESTAMP,
            To::Timestamp => r.value,
            To::Latest | To::Offset => LATEST_TIMESTAMP,
        };
        let answers = self.offsets(&wanted, timestamp, true).await;
        let failed: Vec<String> = answers
            .iter()
            .filter(|o| !o.error.is_empty())
            .map(|o| format!("{}-{}: {}", o.topic, o.partition, o.error))
            .collect();
        if !failed.is_empty() {
            return Err(Status::unavailable(format!(
                "no offsets from the leaders of {}",
                failed.join("; ")
            )));
        }
        let mut commits = Vec::new();
        for o in answers {
            let offset = match to {
                To::Offset => r.value.clamp(o.log_start_offset, o.high_watermark),
                // No record at or after the timestamp: the end, as Kafka's tool does.
                To::Timestamp if o.offset < 0 => o.high_watermark,
                To::Earliest | To::Latest | To::Timestamp => o.offset,
            };
            commits.push(CommitRequest {
                topic: o.topic,
                partition: o.partition,
                offset,
                leader_epoch: -1,
                metadata: None,
            });
        }
        for (topic, partition, code) in self.ctx.groups.commit(&r.group_id, "", None, -1, commits).await {
            if code == 0 {
                continue;
            }
            let message = format!("resetting {topic}-{partition} failed with Kafka error {code}");
            // An error the protocol calls retriable (e.g. the coordinator cannot write
            // below min.insync.replicas): the caller may retry; anything else is final.
            let retriable = kafka_protocol::error::ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable());
            return Err(if retriable {
                Status::unavailable(message)
            } else {
                Status::failed_precondition(message)
            });
        }
        tracing::info!(group = %r.group_id, to = ?to, topics = ?r.topics, "reset group offsets (admin)");
        Ok(Response::new(self.group_description(&r.group_id).await?))
    }

    async fn alter_topic_configs(
        &self,
        request: Request<pb::AlterTopicConfigsRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let r = request.into_inner();
        let ops = r.ops.into_iter().map(config_op).collect::<Result<Vec<_>, Status>>()?;
        self.ctx
            .controller
            .alter_topic_configs(&r.name, &ops, r.validate_only)
            .await
            .map_err(|e| match e {
                Error::UnknownTopicOrPartition => Status::not_found(format!("topic '{}' does not exist", r.name)),
                other => status(other),
            })?;
        Ok(Response::new(self.describe_by_name(&r.name, true).await?))
    }

    async fn alter_partition_reassignments(
        &self,
        request: Request<pb::AlterPartitionReassignmentsRequest>,
    ) -> Result<Response<pb::AlterPartitionReassignmentsResponse>, Status> {
        let asked = request.into_inner().reassignments;
        let changes = asked
            .iter()
            .map(|r| {
                let target = (!r.cancel).then(|| r.target_replicas.clone());
                (r.topic.clone(), r.partition, target)
            })
            .collect();
        let outcomes = self
            .ctx
            .controller
            .alter_reassignments(changes, true)
            .await
            .map_err(status)?;
        let results = asked
            .into_iter()
            .zip(outcomes)
            .map(|(r, outcome)| pb::ReassignmentResult {
                error: outcome.err().map(|e| e.to_string()).unwrap_or_default(),
                topic: r.topic,
                partition: r.partition,
            })
            .collect();
        Ok(Response::new(pb::AlterPartitionReassignmentsResponse { results }))
    }

    async fn list_partition_reassignments(
        &self,
        _: Request<pb::ListPartitionReassignmentsRequest>,
    ) -> Result<Response<pb::ListPartitionReassignmentsResponse>, Status> {
        let image = self.ctx.controller.image();
        let reassignments = image
            .reassignments()
            .into_iter()
            .map(|(topic, partition, r)| pb::OngoingReassignment {
                topic: topic.to_string(),
                partition,
                replicas: r.replicas(),
                adding_replicas: r.adding(),
                removing_replicas: r.removing(),
            })
            .collect();
        Ok(Response::new(pb::ListPartitionReassignmentsResponse { reassignments }))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        self.list_transactions_rpc(request).await
    }

    async fn describe_producers(
        &self,
        request: Request<pb::DescribeProducersRequest>,
    ) -> Result<Response<pb::DescribeProducersResponse>, Status> {
        self.describe_producers_rpc(request).await
    }

    async fn abort_transaction(
        &self,
        request: Request<pb::AbortTransactionRequest>,
    ) -> Result<Response<pb::AbortTransactionResponse>, Status> {
        self.abort_transaction_rpc(request).await
    }

    async fn elect_preferred_leaders(
        &self,
        _: Request<pb::ElectPreferredLeadersRequest>,
    ) -> Result<Response<pb::ElectPreferredLeadersResponse>, Status> {
        let n = self.elect_preferred().await.map_err(status)?;
        tracing::info!(partitions = n, "elected preferred leaders (admin)");
        Ok(Response::new(pb::ElectPreferredLeadersResponse {
            partitions_elected: n as i32,
        }))
    }

    async fn drain_broker(
        &self,
        request: Request<pb::DrainBrokerRequest>,
    ) -> Result<Response<pb::DrainBrokerResponse>, Status> {
        let id = request.into_inner().broker_id;
        let moving = self.ctx.controller.drain_broker(id).await.map_err(status)?;
        tracing::info!(broker = id, partitions = moving, "draining broker (admin)");
        Ok(Response::new(pb::DrainBrokerResponse {
            partitions_moving: moving as i32,
            replica_count: self.ctx.controller.image().replica_count(id) as i32,
        }))
    }
}

impl AdminService {
    async fn elect_preferred(&self) -> Result<usize, Error> {
        use crate::controller::{ControllerOp, OpResult};
        match self
            .ctx
            .controller
            .execute(ControllerOp::ElectPreferredLeaders { partitions: None })
            .await?
        {
            OpResult::Elected(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// This broker's groups (those it coordinates).
    fn local_groups(&self) -> Result<Vec<pb::GroupSummary>, Status> {
        let groups = self
            .ctx
            .groups
            .list()
            .map_err(|code| Status::unavailable(format!("group coordinator not ready (error {code})")))?;
        let members: std::collections::HashMap<String, usize> = self
            .ctx
            .groups
            .member_counts()
            .into_iter()
            .map(|(g, n, _)| (g, n))
            .collect();
        Ok(groups
            .into_iter()
            .map(|(group_id, protocol_type, state)| pb::GroupSummary {
                members: members.get(&group_id).copied().unwrap_or(0) as i32,
                group_id,
                state: state.to_string(),
                protocol_type,
            })
            .collect())
    }

    /// The admin address of the broker coordinating `group_id` (the leader of
    /// its `__consumer_offsets` partition) when that is another broker and
    /// the request was not already forwarded (stale images on two brokers
    /// must not bounce it back and forth).
    fn coordinator_elsewhere<T>(&self, request: &Request<T>, group_id: &str) -> Option<String> {
        if forwarded(request) {
            return None;
        }
        let image = self.ctx.controller.image();
        let topic = image.topics.get(crate::group::OFFSETS_TOPIC)?;
        let leader = image.leader(topic, self.ctx.groups.partition_for(group_id))?;
        if leader == self.ctx.config.node_id {
            return None;
        }
        image.brokers.get(&leader).map(|b| b.admin.clone())
    }

    /// The admin addresses of the other live brokers.
    fn other_brokers(&self) -> Vec<String> {
        let image = self.ctx.controller.image();
        image
            .brokers
            .values()
            .filter(|b| !b.fenced && b.id != self.ctx.config.node_id)
            .map(|b| b.admin.clone())
            .collect()
    }

    async fn group_description(&self, group_id: &str) -> Result<pb::GroupDescription, Status> {
        let groups = &self.ctx.groups;
        let d = groups
            .describe(group_id)
            .map_err(|code| Status::unavailable(format!("group coordinator not ready (error {code})")))?;
        let committed = groups
            .committed(group_id)
            .map_err(|code| Status::unavailable(format!("error {code}")))?;
        let wanted: Vec<(String, i32)> = committed.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let ends: BTreeMap<(String, i32), i64> = self
            .offsets(&wanted, LATEST_TIMESTAMP, true)
            .await
            .into_iter()
            .map(|o| ((o.topic, o.partition), o.high_watermark))
            .collect();
        let offsets: Vec<pb::PartitionOffset> = committed
            .into_iter()
            .map(|(topic, partition, c)| {
                let end = ends.get(&(topic.clone(), partition)).copied().unwrap_or(-1);
                pb::PartitionOffset {
                    lag: if end >= 0 { (end - c.offset).max(0) } else { 0 },
                    topic,
                    partition,
                    committed_offset: c.offset,
                    metadata: c.metadata,
                    log_end_offset: end,
                }
            })
            .collect();
        Ok(pb::GroupDescription {
            group_id: d.group_id,
            state: d.state.to_string(),
            protocol_type: d.protocol_type.clone(),
            protocol: d.protocol,
            total_lag: offsets.iter().map(|o| o.lag).sum(),
            members: d
                .members
                .into_iter()
                .map(|m| pb::GroupMember {
                    assignment: if d.protocol_type == "consumer" {
                        decode_assignment(&m.assignment)
                    } else {
                        Vec::new()
                    },
                    member_id: m.member_id,
                    group_instance_id: m.instance_id.unwrap_or_default(),
                    client_id: m.client_id,
                    client_host: m.client_host,
                })
                .collect(),
            offsets,
        })
    }
}

/// The partitions in a consumer-protocol assignment (version prefix, then the body).
fn decode_assignment(bytes: &bytes::Bytes) -> Vec<pb::TopicPartitions> {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Decodable;
    if bytes.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]).clamp(0, 3);
    let mut body = bytes.slice(2..);
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ConsumerProtocolAssignment::decode(&mut body, version)
    }));
    match decoded {
        Ok(Ok(a)) => a
            .assigned_partitions
            .into_iter()
            .map(|tp| pb::TopicPartitions {
                topic: tp.topic.as_str().to_string(),
                partitions: tp.partitions,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Serves the admin API until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<BrokerContext>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let result = tonic::transport::Server::builder()
        .add_service(crate::controller::network::QuorumService::new(ctx.controller.clone()))
        .add_service(AdminService::new(ctx))
        .serve_with_incoming_shutdown(incoming, async move {
            crate::shutdown::stopped(&mut shutdown).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin API failed");
    }
}

/// An admin API config operation as the controller takes it.
fn config_op(o: pb::ConfigOp) -> Result<ConfigOp, Status> {
    let op = OpType::from_code(o.op as i8).ok_or_else(|| Status::invalid_argument(format!("unknown op {}", o.op)))?;
    Ok(ConfigOp {
        name: o.name,
        op,
        value: o.value,
    })
}
