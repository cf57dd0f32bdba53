//! EndTxn: commit or abort a transaction. Answered once the markers (and, on commit, the
//! offsets) are durable, so read_committed consumers see the outcome right after.

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use super::{fenced_for, Broker};

pub async fn handle(broker: &Broker, version: i16, request: EndTxnRequest) -> EndTxnResponse {
    let mut response = EndTxnResponse::default();
    let ended = broker
        .txns
        .end_txn(
            &request.transactional_id,
            request.producer_id.0,
            request.producer_epoch,
            request.committed,
        )
        .await;
    if let Err(error) = ended {
        response.error_code = fenced_for(error, version, 2).code();
    }
    response
}
