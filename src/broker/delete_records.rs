//! DeleteRecords (`kafka-delete-records`, admin `delete_records`): moves partitions' log
//! start offsets forward at once. Fetches below the new start get OFFSET_OUT_OF_RANGE; the
//! records' space is reclaimed when retention drops the segments holding them.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::{storage_error, Broker};

pub async fn handle(broker: &Broker, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut response = DeleteRecordsResponse::default();
    for wanted in request.topics {
        let topic = broker.log.topic(&wanted.name);
        let mut topic_result = DeleteRecordsTopicResult::default();
        topic_result.name = wanted.name;
        for partition in wanted.partitions {
            let mut result = DeleteRecordsPartitionResult::default();
            result.partition_index = partition.partition_index;
            result.low_watermark = -1;
            match topic
                .as_ref()
                .and_then(|t| t.partition(partition.partition_index))
            {
                None => result.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(log) => match broker.log.delete_records(log, partition.offset).await {
                    Ok(start) => result.low_watermark = start,
                    Err(e) => result.error_code = storage_error(&e).code(),
                },
            }
            topic_result.partitions.push(result);
        }
        response.topics.push(topic_result);
    }
    response
}
