//! FindCoordinator for group and transaction keys (batched from v4).
//!
//! A group's coordinator is the leader of its `__consumer_offsets` partition,
//! a transactional id's the leader of its `__transaction_state` partition;
//! the lookup creates the topic, as Kafka does.

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
    // Coordination lives in __consumer_offsets and __transaction_state: the
    // first lookup creates the topic, as Kafka does.
    if request.key_type == KEY_TYPE_GROUP {
        ensure_offsets_topic(apis).await;
    } else if request.key_type == KEY_TYPE_TRANSACTION {
        if let Err(e) = apis.txns.ensure_state_topic().await {
            tracing::warn!(error = %e, "creating {} failed", crate::txn::TRANSACTION_STATE_TOPIC);
        }
    }
    let is_group = request.key_type == KEY_TYPE_GROUP;
    // The broker leading the key's partition of its topic.
    let lookup = |key: &str| -> Option<(BrokerId, StrBytes, i32)> {
        let image = apis.controller.image();
        let (topic, partition) = if is_group {
            (crate::group::OFFSETS_TOPIC, apis.groups.partition_for(key))
        } else {
            (crate::txn::TRANSACTION_STATE_TOPIC, apis.txns.partition_for(key))
        };
        let leader = image.leader(image.topics.get(topic)?, partition)?;
        if leader == node.0 {
            // Until its partition is open and loaded here, the coordinator
            // is not available yet (the client looks again).
            let ready = if is_group {
                apis.groups.is_ready_for(key)
            } else {
                apis.txns.unavailable(key).is_none()
            };
            return ready.then(|| (node, host.clone(), port));
        }
        let b = image.brokers.get(&leader)?;
        Some((BrokerId(b.id), str(b.host.clone()), b.port))
    };
    let coordinator_for = |key: &str| {
        let found = lookup(key);
        tracing::debug!(key, is_group, coordinator = ?found.as_ref().map(|c| c.0 .0), "FindCoordinator");
        found
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key.clone());
                if known_type {
                    match coordinator_for(key.as_str()) {
                        Some((id, h, p)) => c.with_node_id(id).with_host(h).with_port(p),
                        None => c
                            .with_node_id(BrokerId(-1))
                            .with_port(-1)
                            .with_error_code(ResponseError::CoordinatorNotAvailable.code()),
                    }
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
    match coordinator_for(request.key.as_str()) {
        Some((id, h, p)) => FindCoordinatorResponse::default()
            .with_node_id(id)
            .with_host(h)
            .with_port(p),
        None => FindCoordinatorResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    }
}
