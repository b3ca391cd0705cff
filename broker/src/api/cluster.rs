//! DescribeCluster: the live brokers, and this broker as the one to send
//! admin changes to (it forwards them to the active controller).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{authorized, str, Apis};

pub fn describe(apis: &Apis, request: DescribeClusterRequest) -> DescribeClusterResponse {
    let node = BrokerId(apis.node_id());
    let brokers = apis
        .live_brokers()
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(str(b.host))
                .with_port(b.port)
                .with_rack((!b.rack.is_empty()).then(|| str(b.rack)))
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(str(apis.controller.image().cluster_id.clone()))
        // A live broker, as in Metadata: it forwards admin changes to the active controller.
        .with_controller_id(node)
        .with_cluster_authorized_operations(authorized::when(
            request.include_cluster_authorized_operations,
            authorized::CLUSTER,
        ))
        .with_brokers(brokers)
}
