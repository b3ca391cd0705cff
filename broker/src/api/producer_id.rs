//! InitProducerId: a producer id for an idempotent producer, or, with a
//! transactional id, the id and a bumped epoch from its transaction
//! coordinator.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::Apis;
use crate::error::fenced_for_version;

/// InitProducerId answers PRODUCER_FENCED from this version (KIP-588).
const FENCED_FROM: i16 = 4;

pub async fn handle(apis: &Apis, request: InitProducerIdRequest, version: i16) -> InitProducerIdResponse {
    let failed = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if let Some(id) = request.transactional_id.as_ref() {
        // KIP-360: a producer resuming after an error names its id and epoch.
        let expected = (request.producer_id.0 >= 0 && request.producer_epoch >= 0)
            .then_some((request.producer_id.0, request.producer_epoch));
        return match apis
            .txns
            .init_producer_id(id.as_str(), request.transaction_timeout_ms, expected)
            .await
        {
            Ok((producer_id, epoch)) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch),
            Err(e) => failed(fenced_for_version(e, version, FENCED_FROM).code()),
        };
    }
    match apis.controller.allocate_producer_id().await {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "allocating a producer id failed");
            failed(e.code())
        }
    }
}
