//! OffsetDelete: drop a group's committed offsets for partitions it no longer reads.

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse, TopicName};

use super::{str_bytes, Broker};

pub async fn handle(broker: &Broker, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let wanted = request
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t.partitions.iter().map(|p| p.partition_index).collect();
            (t.name.to_string(), partitions)
        })
        .collect();
    let mut response = OffsetDeleteResponse::default();
    match broker
        .groups
        .delete_offsets(&request.group_id, wanted)
        .await
    {
        Ok(results) => {
            response.topics = results
                .into_iter()
                .map(|(topic, partitions)| {
                    let mut topic_response = OffsetDeleteResponseTopic::default();
                    topic_response.name = TopicName(str_bytes(topic));
                    topic_response.partitions = partitions
                        .into_iter()
                        .map(|(index, error)| {
                            let mut partition = OffsetDeleteResponsePartition::default();
                            partition.partition_index = index;
                            partition.error_code = error.map_or(0, |e| e.code());
                            partition
                        })
                        .collect();
                    topic_response
                })
                .collect();
        }
        Err(error) => response.error_code = error.code(),
    }
    response
}
