//! CreateTopics: validated names, partition counts, replication factor 1, and configs.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::config::{effective_topic_configs, validate_topic_config, validate_topic_name};
use super::{outcome, str_bytes, ApiError, Broker};

/// More partitions than this in one topic is almost surely a typo.
pub const MAX_PARTITIONS: i32 = 100_000;

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for topic in request.topics {
        let mut result = CreatableTopicResult::default();
        result.name = topic.name.clone();
        let created = create(broker, &topic, request.validate_only).await;
        (result.error_code, result.error_message) = outcome(&created);
        if let Ok((partitions, configs)) = created {
            if version >= 5 {
                result.num_partitions = partitions as i32;
                result.replication_factor = 1;
                result.configs = Some(
                    effective_topic_configs(&configs, broker.log.topic_defaults())
                        .map(|config| {
                            let mut entry = CreatableTopicConfigs::default();
                            entry.name = str_bytes(config.def.name);
                            entry.value = Some(str_bytes(config.value().to_owned()));
                            entry.config_source = config.source();
                            entry
                        })
                        .collect(),
                );
            }
            if let Some(created) = broker.log.topic(&topic.name) {
                result.topic_id = created.id;
            }
        }
        response.topics.push(result);
    }
    response
}

async fn create(
    broker: &Broker,
    topic: &CreatableTopic,
    validate_only: bool,
) -> Result<(u32, BTreeMap<String, String>), ApiError> {
    let name = topic.name.as_str();
    validate_topic_name(name)
        .map_err(|m| ApiError::new(ResponseError::InvalidTopicException, m))?;
    if broker.log.topic(name).is_some() {
        return Err(ApiError::new(
            ResponseError::TopicAlreadyExists,
            format!("Topic '{name}' already exists."),
        ));
    }
    let partitions = if topic.assignments.is_empty() {
        match topic.num_partitions {
            -1 => broker.config.default_partitions as i32,
            n if n > 0 && n <= MAX_PARTITIONS => n,
            n => {
                return Err(ApiError::new(
                    ResponseError::InvalidPartitions,
                    format!(
                        "Number of partitions must be between 1 and {MAX_PARTITIONS}, not {n}."
                    ),
                ))
            }
        }
    } else {
        let node = broker.config.node_id;
        let valid = topic.num_partitions == -1
            && topic.assignments.iter().enumerate().all(|(i, a)| {
                a.partition_index == i as i32 && a.broker_ids.iter().all(|b| b.0 == node)
            });
        if !valid {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                format!("Replica assignments must name partitions 0..n in order, on broker {node} only."),
            ));
        }
        topic.assignments.len() as i32
    };
    if !matches!(topic.replication_factor, -1 | 1) {
        return Err(ApiError::new(
            ResponseError::InvalidReplicationFactor,
            format!(
                "Unable to replicate the partition {} time(s): The target replication factor of {} cannot be reached because only 1 broker(s) are registered.",
                topic.replication_factor, topic.replication_factor
            ),
        ));
    }
    let mut configs = BTreeMap::new();
    for config in &topic.configs {
        let value = config.value.as_ref().map(|v| v.as_str());
        validate_topic_config(config.name.as_str(), value)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.0))?;
        configs.insert(
            config.name.to_string(),
            value.unwrap_or_default().to_string(),
        );
    }
    if !validate_only {
        broker
            .log
            .create_topic(name, partitions as u32, configs.clone())
            .await?;
        tracing::info!(topic = name, partitions, "created topic");
    }
    Ok((partitions as u32, configs))
}
