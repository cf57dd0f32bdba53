//! Topics: a name, a stable id, partitions and the configs set on them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::partition::PartitionLog;
use super::segments::RollPolicy;

/// A topic as the broker serves it. Replaced as a whole when partitions or configs change,
/// so a request works on one consistent snapshot.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    /// Stable for the topic's life; record keys use it, so a re-created topic of the same
    /// name never sees the old topic's data.
    pub id: Uuid,
    pub partitions: Vec<Arc<PartitionLog>>,
    /// Only the configs set explicitly; defaults are the broker's to fill in.
    pub configs: BTreeMap<String, String>,
    /// What the log acts on: segment rolls and retention.
    pub policy: TopicPolicy,
}

/// Broker-wide defaults (`shale serve` flags) for topics that do not set these configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicDefaults {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    /// `shale.key.index`.
    pub key_index: bool,
}

impl Default for TopicDefaults {
    /// Kafka's: 7 days, no size limit, 1 GiB or 7-day segments; and the key index on.
    fn default() -> Self {
        TopicDefaults {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            key_index: true,
        }
    }
}

impl TopicDefaults {
    pub fn roll(&self) -> RollPolicy {
        RollPolicy {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
        }
    }

    /// The broker's default for the topic config `name`, for those a flag sets; what
    /// DescribeConfigs reports for a topic that does not set it.
    pub fn value_of(&self, name: &str) -> Option<String> {
        Some(match name {
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "shale.key.index" => self.key_index.to_string(),
            _ => return None,
        })
    }
}

/// The topic configs the log acts on, with the broker's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPolicy {
    pub roll: RollPolicy,
    /// `retention.ms`: -1 keeps records forever.
    pub retention_ms: i64,
    /// `retention.bytes` per partition: -1 for no limit.
    pub retention_bytes: i64,
    /// `cleanup.policy` includes `compact`.
    pub compact: bool,
    /// `cleanup.policy` includes `delete` (the default): time and size retention apply.
    pub delete: bool,
    /// `delete.retention.ms`: how long compaction keeps a tombstone.
    pub delete_retention_ms: i64,
    /// `shale.key.index`: records are indexed by message key as they are appended.
    pub key_index: bool,
    /// `shale.key.index.copy.max.bytes`: a keyed record whose value and headers fit is
    /// copied into its index entry, so reading its key stream needs no batch look-up.
    pub key_copy_max_bytes: usize,
}

/// The `cleanup.policy` values set on a topic (Kafka's default: `delete`).
fn cleanup_policy(configs: &BTreeMap<String, String>) -> impl Iterator<Item = &str> {
    configs
        .get("cleanup.policy")
        .map_or("delete", String::as_str)
        .split(',')
        .map(str::trim)
}

impl TopicPolicy {
    pub fn from_configs(configs: &BTreeMap<String, String>, defaults: &TopicDefaults) -> Self {
        let number = |name: &str, default: i64| {
            configs
                .get(name)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(default)
        };
        TopicPolicy {
            roll: RollPolicy {
                segment_bytes: number("segment.bytes", defaults.segment_bytes as i64).max(1) as u64,
                segment_ms: number("segment.ms", defaults.segment_ms).max(1),
            },
            retention_ms: number("retention.ms", defaults.retention_ms),
            retention_bytes: number("retention.bytes", defaults.retention_bytes),
            compact: cleanup_policy(configs).any(|p| p == "compact"),
            delete: cleanup_policy(configs).any(|p| p == "delete"),
            delete_retention_ms: number("delete.retention.ms", 86_400_000),
            key_index: configs
                .get("shale.key.index")
                .map_or(defaults.key_index, |v| !v.eq_ignore_ascii_case("false")),
            key_copy_max_bytes: number("shale.key.index.copy.max.bytes", 256).max(0) as usize,
        }
    }
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<&Arc<PartitionLog>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }

    pub(super) fn from_record(record: TopicRecord, defaults: &TopicDefaults) -> Self {
        let partitions = (0..record.partitions as i32)
            .map(|index| Arc::new(PartitionLog::new(record.id, index)))
            .collect();
        let policy = TopicPolicy::from_configs(&record.configs, defaults);
        Topic {
            name: record.name,
            id: record.id,
            partitions,
            configs: record.configs,
            policy,
        }
    }

    pub(super) fn to_record(&self) -> TopicRecord {
        TopicRecord {
            name: self.name.clone(),
            id: self.id,
            partitions: self.partitions.len() as u32,
            configs: self.configs.clone(),
        }
    }
}

/// The stored form of a topic (value of a `Topic` key), JSON so it can grow fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct TopicRecord {
    pub name: String,
    pub id: Uuid,
    pub partitions: u32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_record_round_trips_through_json() {
        let record = TopicRecord {
            name: "orders".into(),
            id: Uuid::new_v4(),
            partitions: 3,
            configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
        };
        let json = serde_json::to_vec(&record).unwrap();
        let back: TopicRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, record);
        let defaults = TopicDefaults::default();
        let topic = Topic::from_record(back, &defaults);
        assert_eq!(topic.policy.retention_ms, 1000);
        assert_eq!(topic.policy.retention_bytes, defaults.retention_bytes);
        assert!(topic.policy.delete && !topic.policy.compact && topic.policy.key_index);
        assert_eq!(topic.policy.key_copy_max_bytes, 256);
        let policy = |value: &str| {
            let configs = BTreeMap::from([("cleanup.policy".to_string(), value.to_string())]);
            let policy = TopicPolicy::from_configs(&configs, &defaults);
            (policy.compact, policy.delete)
        };
        assert_eq!(policy("compact"), (true, false));
        assert_eq!(policy("compact, delete"), (true, true));
        assert_eq!(policy("delete"), (false, true));
        assert_eq!(topic.partitions.len(), 3);
        assert_eq!(topic.partition(2).unwrap().index, 2);
        assert!(topic.partition(3).is_none());
        assert!(topic.partition(-1).is_none());
        assert_eq!(topic.to_record(), record);
    }

    #[test]
    fn the_broker_default_of_the_key_index_applies_where_a_topic_does_not_set_it() {
        let off = TopicDefaults {
            key_index: false,
            ..TopicDefaults::default()
        };
        let key_index = |set: Option<&str>| {
            let configs = set
                .map(|v| BTreeMap::from([("shale.key.index".to_string(), v.to_string())]))
                .unwrap_or_default();
            TopicPolicy::from_configs(&configs, &off).key_index
        };
        assert!(!key_index(None));
        assert!(key_index(Some("true")));
        assert!(!key_index(Some("FALSE")));
        assert_eq!(off.value_of("shale.key.index").as_deref(), Some("false"));
        assert_eq!(off.value_of("retention.ms").as_deref(), Some("604800000"));
        assert_eq!(off.value_of("cleanup.policy"), None);
    }
}
