//! AddPartitionsToTxn: registers the partitions a transaction writes to (versions 0-3, the
//! client form; 4+ is Kafka's broker-to-broker batch form and is not offered).

use std::collections::BTreeMap;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, TopicName};

use super::{fenced_for, str_bytes, Broker};

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let wanted: Vec<(String, i32)> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.to_string(), *p)))
        .collect();
    let results = broker
        .txns
        .add_partitions(
            &request.v3_and_below_transactional_id,
            request.v3_and_below_producer_id.0,
            request.v3_and_below_producer_epoch,
            wanted.clone(),
        )
        .await;
    let codes: Vec<((String, i32), i16)> = match results {
        Ok(results) => results
            .into_iter()
            .map(|(p, e)| (p, e.map_or(0, |e| e.code())))
            .collect(),
        Err(error) => {
            let code = fenced_for(error, version, 2).code();
            wanted.into_iter().map(|p| (p, code)).collect()
        }
    };
    let mut by_topic: BTreeMap<String, Vec<AddPartitionsToTxnPartitionResult>> = BTreeMap::new();
    for ((topic, partition), code) in codes {
        let mut result = AddPartitionsToTxnPartitionResult::default();
        result.partition_index = partition;
        result.partition_error_code = code;
        by_topic.entry(topic).or_default().push(result);
    }
    let mut response = AddPartitionsToTxnResponse::default();
    response.results_by_topic_v3_and_below = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            let mut result = AddPartitionsToTxnTopicResult::default();
            result.name = TopicName(str_bytes(topic));
            result.results_by_partition = partitions;
            result
        })
        .collect();
    response
}
