//! Metadata: brokers, topics and partitions; auto-creates topics clients ask for.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};

use super::{authorized_operations, str_bytes, Broker};
use crate::log::Topic;

pub async fn handle(broker: &Broker, version: i16, request: MetadataRequest) -> MetadataResponse {
    let config = &broker.config;
    let mut node = MetadataResponseBroker::default();
    node.node_id = config.node_id.into();
    node.host = str_bytes(config.advertised_host.clone());
    node.port = config.advertised_port;

    let mut response = MetadataResponse::default();
    response.brokers = vec![node];
    response.cluster_id = Some(str_bytes(broker.log.cluster_id()));
    response.controller_id = config.node_id.into();
    if request.include_cluster_authorized_operations {
        response.cluster_authorized_operations = authorized_operations::CLUSTER;
    }
    let operations = request.include_topic_authorized_operations;

    // v0 asks for every topic with an empty list; v1+ with a null one.
    let requested = request
        .topics
        .filter(|t| version == 0 && !t.is_empty() || version > 0);
    let Some(requested) = requested else {
        response.topics = broker
            .log
            .topics()
            .iter()
            .map(|t| describe(broker, t, operations))
            .collect();
        return response;
    };
    // v4+ lets the client opt out of auto-creation.
    let allow_auto_create = version < 4 || request.allow_auto_topic_creation;
    for wanted in requested {
        let found = match &wanted.name {
            Some(name) => broker.topic_or_auto_create(name, allow_auto_create).await,
            None => broker
                .log
                .topic_by_id(wanted.topic_id)
                .ok_or(ResponseError::UnknownTopicId),
        };
        response.topics.push(match found {
            Ok(topic) => describe(broker, &topic, operations),
            Err(error) => {
                let mut entry = MetadataResponseTopic::default();
                entry.error_code = error.code();
                entry.name = wanted.name;
                entry.topic_id = wanted.topic_id;
                entry
            }
        });
    }
    response
}

/// `operations`: the client asked for the topic's authorized operations (v8+).
fn describe(broker: &Broker, topic: &Topic, operations: bool) -> MetadataResponseTopic {
    let node = broker.config.node_id;
    let mut entry = MetadataResponseTopic::default();
    if operations {
        entry.topic_authorized_operations = authorized_operations::TOPIC;
    }
    entry.name = Some(TopicName(str_bytes(topic.name.clone())));
    entry.topic_id = topic.id;
    entry.partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let mut partition = MetadataResponsePartition::default();
            partition.partition_index = p.index;
            partition.leader_id = node.into();
            partition.leader_epoch = 0;
            partition.replica_nodes = vec![node.into()];
            partition.isr_nodes = vec![node.into()];
            partition
        })
        .collect();
    entry
}
