//! AlterConfigs (the legacy, non-incremental API): a topic's configs become exactly the
//! ones given.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::{outcome, ApiError, Broker};

pub async fn handle(broker: &Broker, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut response = AlterConfigsResponse::default();
    for resource in request.resources {
        let replacement = || {
            let mut configs = BTreeMap::new();
            for config in &resource.configs {
                let value = config.value.as_ref().ok_or_else(|| {
                    ApiError::new(
                        ResponseError::InvalidConfig,
                        format!("Null value for config {}", config.name.as_str()),
                    )
                })?;
                configs.insert(config.name.to_string(), value.to_string());
            }
            Ok(configs)
        };
        let altered = broker
            .alter_topic_configs(
                resource.resource_type,
                &resource.resource_name,
                request.validate_only,
                |_| replacement(),
            )
            .await;
        let mut result = AlterConfigsResourceResponse::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name;
        (result.error_code, result.error_message) = outcome(&altered);
        response.responses.push(result);
    }
    response
}
