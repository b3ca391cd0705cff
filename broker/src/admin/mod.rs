//! The admin gRPC service (`proto/admin.proto`) for tools and the operator.

use std::collections::BTreeMap;
use std::sync::Arc;

use fjord_proto::admin::v1 as pb;
use pb::admin_server::{Admin, AdminServer};
use tonic::{Request, Response, Status};

use crate::broker::BrokerContext;
use crate::controller::image::{ConfigOp, OpType};
use crate::controller::TopicImage;
use crate::error::Error;

pub struct AdminService {
    ctx: Arc<BrokerContext>,
}

impl AdminService {
    pub fn new(ctx: Arc<BrokerContext>) -> AdminServer<AdminService> {
        AdminServer::new(AdminService { ctx })
    }

    fn describe(&self, topic: &TopicImage) -> pb::TopicDescription {
        let node = self.ctx.config.node_id;
        let partition_states = (0..topic.partitions)
            .filter_map(|p| self.ctx.replicas.get(&topic.name, p).ok())
            .map(|part| pb::PartitionState {
                partition: part.tp.partition,
                leader: node,
                leader_epoch: part.leader_epoch(),
                replicas: vec![node],
                isr: vec![node],
                log_start_offset: part.log.log_start_offset(),
                log_end_offset: part.log.log_end_offset(),
                high_watermark: part.high_watermark(),
                size_bytes: part.log.size_bytes() as i64,
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

    fn describe_by_name(&self, name: &str) -> Result<pb::TopicDescription, Status> {
        let image = self.ctx.controller.image();
        let topic = image
            .topics
            .get(name)
            .ok_or_else(|| Status::not_found(format!("topic '{name}' does not exist")))?;
        Ok(self.describe(topic))
    }
}

fn status(e: Error) -> Status {
    e.to_status()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn describe_cluster(
        &self,
        _: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        let c = &self.ctx;
        Ok(Response::new(pb::DescribeClusterResponse {
            cluster_id: c.controller.image().cluster_id.clone(),
            controller_id: c.config.node_id,
            brokers: vec![pb::Broker {
                id: c.config.node_id,
                host: c.advertised.host.clone(),
                port: c.advertised.port as i32,
                rack: c.config.broker_rack.clone(),
            }],
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn list_topics(&self, _: Request<pb::ListTopicsRequest>) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let image = self.ctx.controller.image();
        Ok(Response::new(pb::ListTopicsResponse {
            topics: image.topics.values().map(|t| self.describe(t)).collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        Ok(Response::new(self.describe_by_name(&request.into_inner().name)?))
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
            .create_topic(&r.name, partitions, replication, configs, r.validate_only)
            .map_err(status)?;
        if r.validate_only {
            return Ok(Response::new(self.describe(&topic)));
        }
        tracing::info!(topic = %r.name, partitions = topic.partitions, "created topic (admin)");
        Ok(Response::new(self.describe_by_name(&r.name)?))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        let topic = self.ctx.controller.delete_topic(&name).map_err(|e| match e {
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
            .create_partitions(&r.name, r.count, r.validate_only)
            .map_err(|e| match e {
                Error::UnknownTopicOrPartition => Status::not_found(format!("topic '{}' does not exist", r.name)),
                other => status(other),
            })?;
        Ok(Response::new(self.describe_by_name(&r.name)?))
    }

    async fn alter_topic_configs(
        &self,
        request: Request<pb::AlterTopicConfigsRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let r = request.into_inner();
        let ops = r
            .ops
            .into_iter()
            .map(|o| {
                let op = OpType::from_code(o.op as i8)
                    .ok_or_else(|| Status::invalid_argument(format!("unknown op {}", o.op)))?;
                Ok(ConfigOp {
                    name: o.name,
                    op,
                    value: o.value,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        self.ctx
            .controller
            .alter_topic_configs(&r.name, &ops, r.validate_only)
            .map_err(|e| match e {
                Error::UnknownTopicOrPartition => Status::not_found(format!("topic '{}' does not exist", r.name)),
                other => status(other),
            })?;
        Ok(Response::new(self.describe_by_name(&r.name)?))
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
        .add_service(AdminService::new(ctx))
        .serve_with_incoming_shutdown(incoming, async move {
            crate::broker::stopped(&mut shutdown).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin API failed");
    }
}
