//! DescribeCluster: this broker as the whole cluster and its controller.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{authorized, str, Apis};

pub fn describe(apis: &Apis, request: DescribeClusterRequest) -> DescribeClusterResponse {
    let node = BrokerId(apis.node_id());
    let rack = (!apis.config.broker_rack.is_empty()).then(|| str(apis.config.broker_rack.clone()));
    DescribeClusterResponse::default()
        .with_cluster_id(str(apis.controller.image().cluster_id.clone()))
        .with_controller_id(node)
        .with_cluster_authorized_operations(authorized::when(
            request.include_cluster_authorized_operations,
            authorized::CLUSTER,
        ))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(node)
            .with_host(str(apis.advertised.host.clone()))
            .with_port(apis.advertised.port as i32)
            .with_rack(rack)])
}
