//! Topics: a name, a stable id, partitions and the configs set on them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::partition::PartitionLog;
use super::retention::RetentionDefaults;
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
    pub fn from_configs(configs: &BTreeMap<String, String>, defaults: &RetentionDefaults) -> Self {
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
            key_index: !configs
                .get("shale.key.index")
                .is_some_and(|v| v.eq_ignore_ascii_case("false")),
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

    pub(super) fn from_record(record: TopicRecord, defaults: &RetentionDefaults) -> Self {
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
        let defaults = RetentionDefaults::default();
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
}
