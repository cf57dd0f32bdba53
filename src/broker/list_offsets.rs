//! ListOffsets: earliest, latest, by timestamp, and the max-timestamp record.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::{storage_error, Broker};
use crate::log::PartitionLog;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
/// Isolation level of consumers that see only committed transactions: "latest" is the
/// last stable offset for them.
const READ_COMMITTED: i8 = 1;

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    let read_committed = request.isolation_level == READ_COMMITTED;
    for topic in request.topics {
        let found = broker.log.topic(&topic.name);
        let mut topic_response = ListOffsetsTopicResponse::default();
        topic_response.name = topic.name;
        for wanted in topic.partitions {
            let mut partition = ListOffsetsPartitionResponse::default();
            partition.partition_index = wanted.partition_index;
            partition.timestamp = -1;
            partition.offset = -1;
            if version >= 4 {
                partition.leader_epoch = 0;
            }
            match found
                .as_ref()
                .and_then(|t| t.partition(wanted.partition_index))
            {
                None => partition.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(log) => match lookup(broker, log, wanted.timestamp, read_committed).await {
                    Ok(Some((offset, timestamp))) => {
                        partition.offset = offset;
                        partition.timestamp = timestamp;
                    }
                    Ok(None) => {}
                    Err(error) => partition.error_code = error.code(),
                },
            }
            topic_response.partitions.push(partition);
        }
        response.topics.push(topic_response);
    }
    response
}

/// `(offset, timestamp)` for a query; `None` when no record matches (answered as -1, -1).
async fn lookup(
    broker: &Broker,
    log: &PartitionLog,
    query: i64,
    read_committed: bool,
) -> Result<Option<(i64, i64)>, ResponseError> {
    let result = match query {
        LATEST => broker.log.offsets(log).await.map(|o| {
            let end = if read_committed {
                o.last_stable_offset
            } else {
                o.high_watermark
            };
            Some((end, -1))
        }),
        EARLIEST => broker
            .log
            .offsets(log)
            .await
            .map(|o| Some((o.log_start_offset, -1))),
        MAX_TIMESTAMP => broker.log.offset_of_max_timestamp(log).await,
        timestamp if timestamp >= 0 => broker.log.offset_for_timestamp(log, timestamp).await,
        _ => return Err(ResponseError::InvalidRequest),
    };
    result.map_err(|e| storage_error(&e))
}
