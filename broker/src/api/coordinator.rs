//! FindCoordinator for group and transaction keys (batched from v4).
//!
//! On one node this broker leads every partition of the internal topics, so
//! it coordinates every group and transactional id.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::{str, Apis};

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub fn find(apis: &Apis, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let node = BrokerId(apis.node_id());
    let host = str(apis.advertised.host.clone());
    let port = apis.advertised.port as i32;
    let known_type = matches!(request.key_type, KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION);
    // Group coordination lives in __consumer_offsets: create it on first lookup, as Kafka does.
    if request.key_type == KEY_TYPE_GROUP {
        if let Err(e) = apis.groups.ensure_offsets_topic() {
            tracing::warn!(error = %e, "creating the offsets topic failed");
        }
    }
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key);
                if known_type {
                    c.with_node_id(node).with_host(host.clone()).with_port(port)
                } else {
                    c.with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(ResponseError::InvalidRequest.code())
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    if !known_type {
        return FindCoordinatorResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_node_id(BrokerId(-1))
            .with_port(-1);
    }
    FindCoordinatorResponse::default()
        .with_node_id(node)
        .with_host(host)
        .with_port(port)
}
