//! CreatePartitions: grow a topic's partition count.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::create_topics::MAX_PARTITIONS;
use super::{outcome, ApiError, Broker};
use crate::log::Topic;

pub async fn handle(broker: &Broker, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    for wanted in request.topics {
        let mut result = CreatePartitionsTopicResult::default();
        result.name = wanted.name.clone();
        let grown = if request.validate_only {
            match broker.log.topic(&wanted.name) {
                Some(topic) => plan(broker, &topic, &wanted).map(|_| ()),
                None => Err(unknown()),
            }
        } else {
            broker
                .log
                .update_topic(&wanted.name, |topic| {
                    plan(broker, topic, &wanted).map(|n| (n, topic.configs.clone()))
                })
                .await
                .map(|_| ())
        };
        (result.error_code, result.error_message) = outcome(&grown);
        response.results.push(result);
    }
    response
}

fn unknown() -> ApiError {
    ApiError::new(
        ResponseError::UnknownTopicOrPartition,
        "This server does not host this topic.",
    )
}

/// The new partition count, if the request may grow `topic` to it.
fn plan(broker: &Broker, topic: &Topic, wanted: &CreatePartitionsTopic) -> Result<u32, ApiError> {
    let current = topic.partitions.len() as i32;
    if wanted.count <= current {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!("Topic currently has {current} partitions, which is higher than or equal to the requested {}.", wanted.count),
        ));
    }
    if wanted.count > MAX_PARTITIONS {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!("Number of partitions must be at most {MAX_PARTITIONS}."),
        ));
    }
    if let Some(assignments) = &wanted.assignments {
        let node = broker.config.node_id;
        let valid = assignments.len() as i32 == wanted.count - current
            && assignments
                .iter()
                .all(|a| a.broker_ids.iter().all(|b| b.0 == node));
        if !valid {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                format!("Each new partition must be assigned to broker {node} only."),
            ));
        }
    }
    Ok(wanted.count as u32)
}
