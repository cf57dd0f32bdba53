//! InitProducerId: gives an idempotent producer its id and epoch.
//!
//! Transactions are not implemented yet, so a transactional id is refused with
//! UNSUPPORTED_VERSION, which clients report as an unsupported feature at
//! `init_transactions()` instead of failing later mid-transaction.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

use super::{storage_error, Broker};

pub async fn handle(broker: &Broker, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = (-1).into();
    response.producer_epoch = -1;
    if let Some(transactional_id) = &request.transactional_id {
        tracing::warn!(transactional_id = %transactional_id.0.as_str(), "transactions are not supported yet");
        response.error_code = ResponseError::UnsupportedVersion.code();
        return response;
    }
    // A producer that lost track of its sequences (KIP-360) asks to bump its epoch, which
    // starts its sequences over on every partition.
    let bumped = request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX - 1;
    if bumped && !broker.log.issued_producer_id(request.producer_id.0).await {
        response.error_code = ResponseError::InvalidProducerIdMapping.code();
        return response;
    }
    if bumped {
        response.producer_id = request.producer_id;
        response.producer_epoch = request.producer_epoch + 1;
        return response;
    }
    match broker.log.allocate_producer_id().await {
        Ok(id) => {
            response.producer_id = id.into();
            response.producer_epoch = 0;
        }
        Err(e) => response.error_code = storage_error(&e).code(),
    }
    response
}
