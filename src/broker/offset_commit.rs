//! OffsetCommit: store a group's positions, acknowledged once durable.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::group_coordinator::OffsetCommit;
use super::Broker;

pub async fn handle(broker: &Broker, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let offsets: Vec<OffsetCommit> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|p| OffsetCommit {
                topic: topic.name.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            })
        })
        .collect();
    let outcome = broker
        .groups
        .commit(
            &request.group_id,
            request.generation_id_or_member_epoch,
            &request.member_id,
            request.group_instance_id.as_deref(),
            offsets,
        )
        .await;
    let mut errors = match &outcome {
        Ok(errors) => errors.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let mut response = OffsetCommitResponse::default();
    for topic in request.topics {
        let mut topic_response = OffsetCommitResponseTopic::default();
        topic_response.name = topic.name;
        for partition in topic.partitions {
            let mut result = OffsetCommitResponsePartition::default();
            result.partition_index = partition.partition_index;
            let error = match &outcome {
                Ok(_) => errors.next().flatten(),
                Err(group_error) => Some(*group_error),
            };
            result.error_code = error.map_or(0, |e| e.code());
            topic_response.partitions.push(result);
        }
        response.topics.push(topic_response);
    }
    response
}
