//! OffsetFetch: a group's committed positions; -1 (and no error) where none is committed.
//! v8+ asks for several groups at once.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use std::collections::HashSet;

use kafka_protocol::error::ResponseError;

use super::{str_bytes, Broker};
use crate::storage::keys::OffsetValue;

type Committed = Vec<(String, Vec<(i32, Option<OffsetValue>)>)>;

/// `(offset, leader epoch, metadata)` as clients expect them for a possibly missing commit.
fn fields(value: Option<OffsetValue>) -> (i64, i32, String) {
    value.map_or((-1, -1, String::new()), |v| {
        (v.offset, v.leader_epoch, v.metadata)
    })
}

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    if version >= 8 {
        for group in request.groups {
            let wanted = group.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name.to_string(), t.partition_indexes))
                    .collect()
            });
            let committed = broker.groups.committed(&group.group_id, wanted).await;
            let unstable = unstable(broker, &group.group_id, request.require_stable).await;
            let mut group_response = OffsetFetchResponseGroup::default();
            group_response.group_id = group.group_id;
            group_response.topics = v8_topics(committed, &unstable);
            response.groups.push(group_response);
        }
        return response;
    }
    let wanted = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    let committed = broker.groups.committed(&request.group_id, wanted).await;
    let unstable = unstable(broker, &request.group_id, request.require_stable).await;
    response.topics = committed
        .into_iter()
        .map(|(topic, partitions)| {
            let mut topic_response = OffsetFetchResponseTopic::default();
            topic_response.name = TopicName(str_bytes(topic.clone()));
            topic_response.partitions = partitions
                .into_iter()
                .map(|(index, value)| {
                    let mut partition = OffsetFetchResponsePartition::default();
                    if unstable.contains(&(topic.clone(), index)) {
                        partition.error_code = ResponseError::UnstableOffsetCommit.code();
                    }
                    let (offset, epoch, metadata) = fields(value);
                    partition.partition_index = index;
                    partition.committed_offset = offset;
                    partition.committed_leader_epoch = epoch;
                    partition.metadata = Some(str_bytes(metadata));
                    partition
                })
                .collect();
            topic_response
        })
        .collect();
    response
}

/// Partitions with offsets in an open transaction, when the client asks for stable
/// offsets only (read_committed consumers do, KIP-447): they get UNSTABLE_OFFSET_COMMIT and
/// retry until the transaction ends.
async fn unstable(broker: &Broker, group: &str, require_stable: bool) -> HashSet<(String, i32)> {
    if require_stable {
        broker.txns.pending_offsets(group).await
    } else {
        HashSet::new()
    }
}

fn v8_topics(
    committed: Committed,
    unstable: &HashSet<(String, i32)>,
) -> Vec<OffsetFetchResponseTopics> {
    committed
        .into_iter()
        .map(|(topic, partitions)| {
            let mut topic_response = OffsetFetchResponseTopics::default();
            topic_response.name = TopicName(str_bytes(topic.clone()));
            topic_response.partitions = partitions
                .into_iter()
                .map(|(index, value)| {
                    let mut partition = OffsetFetchResponsePartitions::default();
                    if unstable.contains(&(topic.clone(), index)) {
                        partition.error_code = ResponseError::UnstableOffsetCommit.code();
                    }
                    let (offset, epoch, metadata) = fields(value);
                    partition.partition_index = index;
                    partition.committed_offset = offset;
                    partition.committed_leader_epoch = epoch;
                    partition.metadata = Some(str_bytes(metadata));
                    partition
                })
                .collect();
            topic_response
        })
        .collect()
}
