//! InitProducerId for idempotent producers (no transactional id).

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::Apis;
use crate::error::Error;

pub async fn handle(apis: &Apis, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default();
    if request.transactional_id.is_some() {
        // Transactions arrive with their own issue; refuse clearly until then.
        return response.with_error_code(Error::TransactionsUnsupported.code());
    }
    match apis.controller.allocate_producer_id().await {
        Ok(id) => response.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "allocating a producer id failed");
            response
                .with_error_code(e.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}
