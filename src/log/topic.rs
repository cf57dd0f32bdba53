//! Topics: a name, a stable id, partitions and the configs set on them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::partition::PartitionLog;

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
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<&Arc<PartitionLog>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }

    pub(super) fn from_record(record: TopicRecord) -> Self {
        let partitions = (0..record.partitions as i32)
            .map(|index| Arc::new(PartitionLog::new(record.id, index)))
            .collect();
        Topic {
            name: record.name,
            id: record.id,
            partitions,
            configs: record.configs,
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
        let topic = Topic::from_record(back);
        assert_eq!(topic.partitions.len(), 3);
        assert_eq!(topic.partition(2).unwrap().index, 2);
        assert!(topic.partition(3).is_none());
        assert!(topic.partition(-1).is_none());
        assert_eq!(topic.to_record(), record);
    }
}
