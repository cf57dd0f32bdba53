//! ListTransactions: the transactional ids this coordinator knows, filtered by state,
//! producer id and (v1) how long they have been open.

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{ListTransactionsRequest, ListTransactionsResponse};

use super::txn_coordinator::TxnState;
use super::{str_bytes, Broker};
use crate::log::now_ms;

pub async fn handle(broker: &Broker, request: ListTransactionsRequest) -> ListTransactionsResponse {
    let mut response = ListTransactionsResponse::default();
    let mut states = Vec::new();
    for filter in &request.state_filters {
        match TxnState::from_name(filter) {
            Some(state) => states.push(state),
            None => response.unknown_state_filters.push(filter.clone()),
        }
    }
    let now = now_ms();
    response.transaction_states = broker
        .txns
        .list()
        .await
        .into_iter()
        .filter(|t| request.state_filters.is_empty() || states.contains(&t.state))
        .filter(|t| {
            request.producer_id_filters.is_empty()
                || request.producer_id_filters.contains(&t.producer_id.into())
        })
        .filter(|t| {
            request.duration_filter < 0
                || (t.state == TxnState::Ongoing && now - t.start_ms >= request.duration_filter)
        })
        .map(|t| {
            let mut state = TransactionState::default();
            state.transactional_id = str_bytes(t.transactional_id).into();
            state.producer_id = t.producer_id.into();
            state.transaction_state = str_bytes(t.state.name());
            state
        })
        .collect();
    response
}
