//! IncrementalAlterConfigs: set, delete, append to or subtract from single topic configs.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::config::{topic_config_def, topic_config_value, ConfigType};
use super::{outcome, ApiError, Broker};

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

pub async fn handle(
    broker: &Broker,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut response = IncrementalAlterConfigsResponse::default();
    for resource in request.resources {
        let altered = broker
            .alter_topic_configs(
                resource.resource_type,
                &resource.resource_name,
                request.validate_only,
                |current| {
                    let mut configs = current.clone();
                    for op in &resource.configs {
                        apply(&mut configs, op)?;
                    }
                    Ok(configs)
                },
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

fn apply(configs: &mut BTreeMap<String, String>, op: &AlterableConfig) -> Result<(), ApiError> {
    let name = op.name.as_str();
    let invalid = |message: String| ApiError::new(ResponseError::InvalidConfig, message);
    let def = topic_config_def(name)
        .ok_or_else(|| invalid(format!("Unknown topic config name: {name}")))?;
    let value = op.value.as_ref().map(|v| v.to_string());
    match op.config_operation {
        SET => {
            let value = value.ok_or_else(|| invalid(format!("Null value for config {name}")))?;
            configs.insert(name.to_string(), value);
        }
        DELETE => {
            configs.remove(name);
        }
        APPEND | SUBTRACT if def.kind != ConfigType::List => {
            return Err(invalid(format!(
                "Config {name} is not a list; it cannot be appended to or subtracted from"
            )));
        }
        APPEND | SUBTRACT => {
            let current = topic_config_value(configs, name).unwrap_or_default();
            let mut items: Vec<String> = current
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            for item in value
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                if op.config_operation == APPEND && !items.iter().any(|i| i == item) {
                    items.push(item.to_string());
                } else if op.config_operation == SUBTRACT {
                    items.retain(|i| i != item);
                }
            }
            configs.insert(name.to_string(), items.join(","));
        }
        other => {
            return Err(ApiError::new(
                ResponseError::InvalidRequest,
                format!("Unknown config operation {other}"),
            ));
        }
    }
    Ok(())
}
