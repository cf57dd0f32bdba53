//! DescribeLogDirs (`kafka-log-dirs --describe`, admin `describe_log_dirs`): each
//! partition's stored size, which shows retention and compaction at work. Shale has one
//! "log dir", its store; its total and usable bytes are unknown (-1) on object storage.

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse};

use super::{str_bytes, Broker};

pub fn handle(broker: &Broker, request: DescribeLogDirsRequest) -> DescribeLogDirsResponse {
    let wanted: Vec<(String, Option<Vec<i32>>)> = match request.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.topic.to_string(), Some(t.partitions)))
            .collect(),
        None => broker
            .log
            .topics()
            .iter()
            .map(|t| (t.name.clone(), None))
            .collect(),
    };
    let mut result = DescribeLogDirsResult::default();
    result.log_dir = str_bytes("shale");
    result.total_bytes = -1;
    result.usable_bytes = -1;
    for (name, partitions) in wanted {
        let Some(topic) = broker.log.topic(&name) else {
            continue;
        };
        let indexes: Vec<i32> =
            partitions.unwrap_or_else(|| (0..topic.partitions.len() as i32).collect());
        let mut described = DescribeLogDirsTopic::default();
        described.name = str_bytes(topic.name.clone()).into();
        for index in indexes {
            let Some(log) = topic.partition(index) else {
                continue;
            };
            let mut partition = DescribeLogDirsPartition::default();
            partition.partition_index = index;
            partition.partition_size = broker.log.partition_bytes(log) as i64;
            described.partitions.push(partition);
        }
        result.topics.push(described);
    }
    let mut response = DescribeLogDirsResponse::default();
    response.results.push(result);
    response
}
