//! DescribeProducers: the idempotent and transactional producers active on partitions
//! (`kafka-transactions describe-producers`), with each one's open transaction.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse};

use super::{storage_error, Broker};

pub async fn handle(
    broker: &Broker,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let mut response = DescribeProducersResponse::default();
    for wanted in request.topics {
        let topic = broker.log.topic(&wanted.name);
        let mut topic_response = TopicResponse::default();
        topic_response.name = wanted.name;
        for index in wanted.partition_indexes {
            let mut partition = PartitionResponse::default();
            partition.partition_index = index;
            let Some(log) = topic.as_ref().and_then(|t| t.partition(index)) else {
                partition.error_code = ResponseError::UnknownTopicOrPartition.code();
                topic_response.partitions.push(partition);
                continue;
            };
            match broker.log.producers(log).await {
                Ok(producers) => {
                    partition.active_producers = producers
                        .into_iter()
                        .map(|(id, entry)| {
                            let mut state = ProducerState::default();
                            state.producer_id = id.into();
                            state.producer_epoch = i32::from(entry.epoch);
                            state.last_sequence =
                                entry.batches.back().map_or(-1, |b| b.last_sequence);
                            // The broker's clock at the producer's last write here, where
                            // Kafka gives that batch's max timestamp.
                            state.last_timestamp = entry.last_write_ms;
                            state.coordinator_epoch = -1;
                            state.current_txn_start_offset = entry.txn_first_offset.unwrap_or(-1);
                            state
                        })
                        .collect();
                }
                Err(e) => partition.error_code = storage_error(&e).code(),
            }
            topic_response.partitions.push(partition);
        }
        response.topics.push(topic_response);
    }
    response
}
