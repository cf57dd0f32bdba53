//! AddOffsetsToTxn: a transaction will commit a consumer group's offsets
//! (send_offsets_to_transaction), sent before the TxnOffsetCommit itself.

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use super::{fenced_for, Broker};

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let mut response = AddOffsetsToTxnResponse::default();
    let added = broker
        .txns
        .add_offsets(
            &request.transactional_id,
            request.producer_id.0,
            request.producer_epoch,
            &request.group_id,
        )
        .await;
    if let Err(error) = added {
        response.error_code = fenced_for(error, version, 2).code();
    }
    response
}
