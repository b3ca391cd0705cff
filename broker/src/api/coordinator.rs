//! FindCoordinator for group and transaction keys (batched from v4).
//!
//! A group's coordinator is the leader of its `__consumer_offsets` partition.
//! Transactional ids stay with the broker asked (transactions are not
//! supported yet).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use kafka_protocol::protocol::StrBytes;

use super::{str, Apis};

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// Groups live in `__consumer_offsets`: a group lookup, join or commit
/// creates it (a failure shows in the coordinator's answer).
pub(super) async fn ensure_offsets_topic(apis: &Apis) {
    if let Err(e) = apis.groups.ensure_offsets_topic().await {
        tracing::warn!(error = %e, "creating {} failed", crate::group::OFFSETS_TOPIC);
    }
}

pub async fn find(apis: &Apis, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let node = BrokerId(apis.node_id());
    let host = str(apis.advertised.host.clone());
    let port = apis.advertised.port as i32;
    let known_type = matches!(request.key_type, KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION);
    // Group coordination lives in __consumer_offsets: create it on first lookup, as Kafka does.
    if request.key_type == KEY_TYPE_GROUP {
        ensure_offsets_topic(apis).await;
    }
    // The broker leading a group's partition of __consumer_offsets.
    let group_coordinator = |group: &str| -> Option<(BrokerId, StrBytes, i32)> {
        let image = apis.controller.image();
        let topic = image.topics.get(crate::group::OFFSETS_TOPIC)?;
        let leader = image.leader(topic, apis.groups.partition_for(group))?;
        if leader == node.0 {
            // Until its partition is open and its groups loaded here, the
            // coordinator is not available yet (the client looks again).
            return apis.groups.is_ready_for(group).then(|| (node, host.clone(), port));
        }
        let b = image.brokers.get(&leader)?;
        Some((BrokerId(b.id), str(b.host.clone()), b.port))
    };
    let is_group = request.key_type == KEY_TYPE_GROUP;
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key.clone());
                if is_group {
                    match group_coordinator(key.as_str()) {
                        Some((id, h, p)) => c.with_node_id(id).with_host(h).with_port(p),
                        None => c
                            .with_node_id(BrokerId(-1))
                            .with_port(-1)
                            .with_error_code(ResponseError::CoordinatorNotAvailable.code()),
                    }
                } else if known_type {
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
    if is_group {
        return match group_coordinator(request.key.as_str()) {
            Some((id, h, p)) => FindCoordinatorResponse::default()
                .with_node_id(id)
                .with_host(h)
                .with_port(p),
            None => FindCoordinatorResponse::default()
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_node_id(BrokerId(-1))
                .with_port(-1),
        };
    }
    FindCoordinatorResponse::default()
        .with_node_id(node)
        .with_host(host)
        .with_port(port)
}
