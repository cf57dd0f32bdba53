//! TxnOffsetCommit: offsets a transaction commits for a consumer group; they become the
//! group's committed offsets only when the transaction commits.

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::txn_coordinator::TxnOffsetCommit;
use super::{fenced_for, Broker};

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let offsets: Vec<TxnOffsetCommit> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|p| TxnOffsetCommit {
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
        .txns
        .commit_offsets(
            &request.transactional_id,
            &request.group_id,
            request.producer_id.0,
            request.producer_epoch,
            request.generation_id,
            &request.member_id,
            request.group_instance_id.as_deref(),
            offsets,
        )
        .await;
    let mut errors = match &outcome {
        Ok(errors) => errors.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let mut response = TxnOffsetCommitResponse::default();
    for topic in request.topics {
        let mut topic_response = TxnOffsetCommitResponseTopic::default();
        topic_response.name = topic.name;
        for partition in topic.partitions {
            let mut result = TxnOffsetCommitResponsePartition::default();
            result.partition_index = partition.partition_index;
            let error = match &outcome {
                Ok(_) => errors.next().flatten(),
                Err(error) => Some(fenced_for(*error, version, 2)),
            };
            result.error_code = error.map_or(0, |e| e.code());
            topic_response.partitions.push(result);
        }
        response.topics.push(topic_response);
    }
    response
}
