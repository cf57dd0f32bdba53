//! DescribeTransactions: state, producer, timeout and partitions of transactional ids.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, TopicName,
};

use super::{str_bytes, Broker};

pub async fn handle(
    broker: &Broker,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let ids: Vec<String> = request
        .transactional_ids
        .iter()
        .map(|id| id.to_string())
        .collect();
    let described = broker.txns.describe(&ids).await;
    let mut response = DescribeTransactionsResponse::default();
    for (id, description) in request.transactional_ids.into_iter().zip(described) {
        let mut state = TransactionState::default();
        state.transactional_id = id;
        match description {
            None => state.error_code = ResponseError::TransactionalIdNotFound.code(),
            Some(t) => {
                state.transaction_state = str_bytes(t.state.name());
                state.transaction_timeout_ms = t.timeout_ms;
                state.transaction_start_time_ms = t.start_ms;
                state.producer_id = t.producer_id.into();
                state.producer_epoch = t.producer_epoch;
                state.topics = t
                    .partitions
                    .into_iter()
                    .map(|(topic, partitions)| {
                        let mut data = TopicData::default();
                        data.topic = TopicName(str_bytes(topic));
                        data.partitions = partitions;
                        data
                    })
                    .collect();
            }
        }
        response.transaction_states.push(state);
    }
    response
}
