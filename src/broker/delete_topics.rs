//! DeleteTopics, by name (v0-v5) or by name or id (v6).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use uuid::Uuid;

use super::{outcome, str_bytes, ApiError, Broker};

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let wanted: Vec<(Option<TopicName>, Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|name| (Some(name), Uuid::nil()))
            .collect()
    };
    let mut response = DeleteTopicsResponse::default();
    for (name, topic_id) in wanted {
        let mut result = DeletableTopicResult::default();
        let found = match &name {
            Some(name) => broker
                .log
                .topic(name)
                .ok_or(ResponseError::UnknownTopicOrPartition),
            None => broker
                .log
                .topic_by_id(topic_id)
                .ok_or(ResponseError::UnknownTopicId),
        };
        let deleted = match found {
            Ok(topic) => broker
                .log
                .delete_topic(&topic.name)
                .await
                .map_err(ApiError::from),
            Err(code) => Err(ApiError {
                code,
                message: None,
            }),
        };
        (result.error_code, result.error_message) = outcome(&deleted);
        match deleted {
            Ok(topic) => {
                tracing::info!(topic = %topic.name, "deleted topic");
                result.name = Some(TopicName(str_bytes(topic.name.clone())));
                result.topic_id = topic.id;
            }
            Err(_) => {
                result.name = name;
                result.topic_id = topic_id;
            }
        }
        response.responses.push(result);
    }
    response
}
