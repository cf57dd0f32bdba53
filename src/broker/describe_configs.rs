//! DescribeConfigs: topic configs (set or default) and the broker's read-only settings.

use std::borrow::Cow;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::config::{effective_topic_configs, ConfigSynonym, ConfigType, SOURCE_STATIC_BROKER};
use super::{str_bytes, Broker, RESOURCE_BROKER, RESOURCE_TOPIC};

struct Entry {
    name: &'static str,
    value: String,
    source: i8,
    kind: ConfigType,
    doc: &'static str,
    read_only: bool,
    /// Where the value could come from, most specific first (see
    /// [`super::config::EffectiveConfig::synonyms`]).
    synonyms: Vec<ConfigSynonym<'static>>,
}

pub fn handle(
    broker: &Broker,
    version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        match entries(broker, resource.resource_type, &resource.resource_name) {
            Ok(entries) => {
                // Null or empty both mean every config, as in Kafka.
                let keys = resource
                    .configuration_keys
                    .as_ref()
                    .filter(|k| !k.is_empty());
                result.configs = entries
                    .into_iter()
                    .filter(|e| keys.is_none_or(|keys| keys.iter().any(|k| k.as_str() == e.name)))
                    .map(|e| {
                        describe(
                            e,
                            version,
                            request.include_synonyms,
                            request.include_documentation,
                        )
                    })
                    .collect();
            }
            Err((code, message)) => {
                result.error_code = code.code();
                result.error_message = Some(str_bytes(message));
            }
        }
        response.results.push(result);
    }
    response
}

fn entries(
    broker: &Broker,
    resource_type: i8,
    name: &StrBytes,
) -> Result<Vec<Entry>, (ResponseError, String)> {
    match resource_type {
        RESOURCE_TOPIC => {
            let topic = broker.log.topic(name).ok_or_else(|| {
                (
                    ResponseError::UnknownTopicOrPartition,
                    format!("Topic '{}' does not exist.", name.as_str()),
                )
            })?;
            Ok(
                effective_topic_configs(&topic.configs, broker.log.topic_defaults())
                    .map(|config| Entry {
                        name: config.def.name,
                        value: config.value().to_owned(),
                        source: config.source(),
                        kind: config.def.kind,
                        doc: config.def.doc,
                        read_only: false,
                        synonyms: config
                            .synonyms
                            .into_iter()
                            .map(ConfigSynonym::into_owned)
                            .collect(),
                    })
                    .collect(),
            )
        }
        RESOURCE_BROKER
            if name.is_empty() || name.as_str() == broker.config.node_id.to_string() =>
        {
            Ok(broker_entries(broker))
        }
        RESOURCE_BROKER => Err((
            ResponseError::InvalidRequest,
            format!("Unknown broker {}", name.as_str()),
        )),
        other => Err((
            ResponseError::InvalidRequest,
            format!("Shale describes topic and broker configs only, not resource type {other}"),
        )),
    }
}

/// The broker settings clients and tools commonly look at, set by `shale serve` flags.
fn broker_entries(broker: &Broker) -> Vec<Entry> {
    let config = &broker.config;
    let setting = |name, value: String, kind, doc| Entry {
        name,
        synonyms: vec![ConfigSynonym {
            name,
            value: Cow::Owned(value.clone()),
            source: SOURCE_STATIC_BROKER,
        }],
        value,
        source: SOURCE_STATIC_BROKER,
        kind,
        doc,
        read_only: true,
    };
    vec![
        setting(
            "advertised.listeners",
            format!(
                "PLAINTEXT://{}:{}",
                config.advertised_host, config.advertised_port
            ),
            ConfigType::String,
            "Listener given to clients (--advertise).",
        ),
        setting(
            "auto.create.topics.enable",
            config.auto_create_topics.to_string(),
            ConfigType::Boolean,
            "Create topics on first use (--auto-create-topics).",
        ),
        setting(
            "default.replication.factor",
            "1".into(),
            ConfigType::Int,
            "Shale is a single node; data durability comes from the object store.",
        ),
        setting(
            "message.max.bytes",
            "1048588".into(),
            ConfigType::Int,
            "Default max.message.bytes of topics.",
        ),
        setting(
            "node.id",
            config.node_id.to_string(),
            ConfigType::Int,
            "This broker's id.",
        ),
        setting(
            "num.partitions",
            config.default_partitions.to_string(),
            ConfigType::Int,
            "Partitions of auto-created topics (--default-partitions).",
        ),
        setting(
            "connections.max.idle.ms",
            config.connections_max_idle.as_millis().to_string(),
            ConfigType::Long,
            "Idle time after which a connection is closed (--connections-max-idle-ms).",
        ),
        setting(
            "producer.id.expiration.ms",
            config.producer_id_expiration.as_millis().to_string(),
            ConfigType::Long,
            "How long an idle producer's state on a partition is kept (--producer-id-expiration-ms).",
        ),
        setting(
            "transactional.id.expiration.ms",
            config.transactional_id_expiration.as_millis().to_string(),
            ConfigType::Long,
            "How long an unused transactional id is kept (--transactional-id-expiration-ms).",
        ),
        setting(
            "offsets.retention.minutes",
            config
                .offsets_retention
                .as_millis()
                .div_ceil(60_000)
                .to_string(),
            ConfigType::Int,
            "How long committed offsets are kept, rounded up to minutes (--offsets-retention-ms).",
        ),
        setting(
            "queued.max.request.bytes",
            config.queued_max_request_bytes.to_string(),
            ConfigType::Long,
            "Request bytes held at once over all connections (--queued-max-request-bytes).",
        ),
        setting(
            "socket.request.max.bytes",
            config.max_request_bytes.to_string(),
            ConfigType::Int,
            "Largest request accepted (--max-request-bytes).",
        ),
    ]
}

fn describe(
    entry: Entry,
    version: i16,
    synonyms: bool,
    documentation: bool,
) -> DescribeConfigsResourceResult {
    let mut result = DescribeConfigsResourceResult::default();
    result.name = str_bytes(entry.name);
    result.value = Some(str_bytes(entry.value));
    result.read_only = entry.read_only;
    result.config_source = entry.source;
    if synonyms {
        result.synonyms = entry
            .synonyms
            .into_iter()
            .map(|synonym| {
                let mut described = DescribeConfigsSynonym::default();
                described.name = str_bytes(synonym.name);
                described.value = Some(str_bytes(synonym.value.into_owned()));
                described.source = synonym.source;
                described
            })
            .collect();
    }
    if version >= 3 {
        result.config_type = entry.kind as i8;
        if documentation {
            result.documentation = Some(str_bytes(entry.doc));
        }
    }
    result
}
