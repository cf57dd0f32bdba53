//! InitProducerId: gives a producer its id and epoch.
//!
//! Idempotent producers get a fresh id (or, re-initialising after lost sequences, KIP-360,
//! the next epoch of their own). Transactional producers get the id of their
//! transactional id with a new epoch from the transaction coordinator, which first aborts
//! whatever an earlier producer with the same transactional id left open.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

use super::{fenced_for, storage_error, Broker};

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = (-1).into();
    response.producer_epoch = -1;
    let current = (request.producer_id.0 >= 0 && request.producer_epoch >= 0)
        .then_some((request.producer_id.0, request.producer_epoch));
    if let Some(transactional_id) = request.transactional_id.filter(|id| !id.is_empty()) {
        let granted = broker
            .txns
            .init_producer(&transactional_id, request.transaction_timeout_ms, current)
            .await;
        match granted {
            Ok((id, epoch)) => {
                response.producer_id = id.into();
                response.producer_epoch = epoch;
            }
            Err(error) => response.error_code = fenced_for(error, version, 4).code(),
        }
        return response;
    }
    // A producer that lost track of its sequences (KIP-360) asks to bump its epoch, which
    // starts its sequences over on every partition.
    if let Some((producer_id, epoch)) = current.filter(|(_, epoch)| *epoch < i16::MAX - 1) {
        if !broker.log.issued_producer_id(producer_id).await {
            response.error_code = ResponseError::InvalidProducerIdMapping.code();
            return response;
        }
        response.producer_id = producer_id.into();
        response.producer_epoch = epoch + 1;
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
