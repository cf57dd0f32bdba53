//! Segments: each topic's records live in a chain of SlateDB segments (key prefixes with
//! their own LSM trees), oldest first. Appends go to the topic's newest segment, which
//! rolls when it reaches `segment.bytes` or `segment.ms`; retention drops whole sealed
//! segments from the old end and has SlateDB drain them, so live data is never rewritten.
//!
//! Segment 1 of stores written before per-topic segments holds every topic's records; it is
//! read for every topic and dropped only once all of them are gone.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The stored form of a segment (value of a `Segment` key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct SegmentRecord {
    /// The topic whose records the segment holds; `None` for a shared segment.
    #[serde(default)]
    pub topic_id: Option<Uuid>,
    #[serde(default)]
    pub created_ms: i64,
    /// No more records go in; retention may drop it.
    #[serde(default)]
    pub sealed: bool,
    /// What a sealed segment holds, computed once by the retention task.
    #[serde(default)]
    pub stats: Option<SegmentStats>,
}

pub(super) fn encode(record: &SegmentRecord) -> Bytes {
    Bytes::from(serde_json::to_vec(record).expect("segment records serialise"))
}

/// What one sealed segment holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentStats {
    /// The newest record timestamp: time retention drops the segment once it is older.
    pub max_timestamp: i64,
    pub bytes: u64,
    /// Per partition: the end offset (last offset + 1) and bytes of its records here.
    pub partitions: BTreeMap<i32, PartitionSpan>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionSpan {
    pub end_offset: i64,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub id: u32,
    pub record: SegmentRecord,
    /// Bytes appended since the broker started (the roll-by-size check; a restart resets
    /// it, so a segment may grow past `segment.bytes` once).
    pub appended_bytes: u64,
    /// The same per partition, for partition sizes until the segment's stats exist.
    pub appended_by_partition: HashMap<i32, u64>,
}

/// All segments of a store.
#[derive(Debug, Default)]
pub(super) struct Segments {
    pub shared: Vec<u32>,
    pub chains: HashMap<Uuid, Vec<Segment>>,
    pub next_id: u32,
    /// Per compacted topic, the newest sealed segment its last compaction covered.
    pub compacted_through: HashMap<Uuid, u32>,
}

impl Segments {
    pub fn load(records: Vec<(u32, SegmentRecord)>, first_data_segment: u32) -> Self {
        let mut segments = Segments {
            next_id: first_data_segment,
            ..Segments::default()
        };
        for (id, record) in records {
            segments.next_id = segments.next_id.max(id + 1);
            match record.topic_id {
                None => segments.shared.push(id),
                Some(topic_id) => segments.chains.entry(topic_id).or_default().push(Segment {
                    id,
                    record,
                    appended_bytes: 0,
                    appended_by_partition: HashMap::new(),
                }),
            }
        }
        for chain in segments.chains.values_mut() {
            chain.sort_by_key(|s| s.id);
        }
        segments
    }

    /// Every segment holding data.
    pub fn all(&self) -> Vec<u32> {
        let chains = self.chains.values().flatten().map(|s| s.id);
        let mut all: Vec<u32> = self.shared.iter().copied().chain(chains).collect();
        all.sort_unstable();
        all
    }

    /// The segments a partition of `topic_id` may have records in, oldest first.
    pub fn of_topic(&self, topic_id: Uuid) -> Vec<u32> {
        let chain = self.chains.get(&topic_id).into_iter().flatten();
        self.shared
            .iter()
            .copied()
            .chain(chain.map(|s| s.id))
            .collect()
    }

    /// The segments of `topic_id` that may hold records at or after `since_ms`: sealed
    /// segments known to be older are left out.
    pub fn of_topic_since(&self, topic_id: Uuid, since_ms: Option<i64>) -> Vec<u32> {
        let Some(since) = since_ms else {
            return self.of_topic(topic_id);
        };
        let chain = self.chains.get(&topic_id).into_iter().flatten();
        let recent = chain.filter(|s| {
            s.record
                .stats
                .as_ref()
                .is_none_or(|stats| stats.max_timestamp >= since)
        });
        self.shared
            .iter()
            .copied()
            .chain(recent.map(|s| s.id))
            .collect()
    }

    /// The segment appends to `topic_id` go to now, if it may take more records.
    pub fn active(&self, topic_id: Uuid, roll: &RollPolicy, now_ms: i64) -> Option<u32> {
        let segment = self.chains.get(&topic_id)?.last()?;
        let fresh = !segment.record.sealed
            && segment.appended_bytes < roll.segment_bytes
            && now_ms - segment.record.created_ms < roll.segment_ms;
        fresh.then_some(segment.id)
    }

    /// Records a new active segment (and the sealing of the previous one) once written.
    pub fn push(&mut self, topic_id: Uuid, id: u32, record: SegmentRecord) {
        let chain = self.chains.entry(topic_id).or_default();
        if let Some(previous) = chain.last_mut() {
            previous.record.sealed = true;
        }
        chain.push(Segment {
            id,
            record,
            appended_bytes: 0,
            appended_by_partition: HashMap::new(),
        });
        self.next_id = self.next_id.max(id + 1);
    }

    pub fn add_appended(&mut self, topic_id: Uuid, id: u32, partition: i32, bytes: u64) {
        if let Some(segment) = self
            .chains
            .get_mut(&topic_id)
            .and_then(|c| c.iter_mut().rev().find(|s| s.id == id))
        {
            segment.appended_bytes += bytes;
            *segment.appended_by_partition.entry(partition).or_default() += bytes;
        }
    }

    /// A partition's stored bytes: sealed segments' stats, and what was appended since
    /// start to segments without stats yet (so it undercounts an active segment after a
    /// restart).
    pub fn partition_bytes(&self, topic_id: Uuid, partition: i32) -> u64 {
        self.chains
            .get(&topic_id)
            .into_iter()
            .flatten()
            .map(|s| match &s.record.stats {
                Some(stats) => stats.partitions.get(&partition).map_or(0, |p| p.bytes),
                None => s
                    .appended_by_partition
                    .get(&partition)
                    .copied()
                    .unwrap_or(0),
            })
            .sum()
    }
}

/// When a topic's active segment rolls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollPolicy {
    pub segment_bytes: u64,
    pub segment_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_load_in_order_and_roll_by_size_and_age() {
        let topic = Uuid::new_v4();
        let record = |created_ms| SegmentRecord {
            topic_id: Some(topic),
            created_ms,
            ..SegmentRecord::default()
        };
        let mut segments = Segments::load(
            vec![
                (1, SegmentRecord::default()),
                (4, record(100)),
                (2, record(0)),
            ],
            1,
        );
        assert_eq!(segments.shared, vec![1]);
        assert_eq!(segments.of_topic(topic), vec![1, 2, 4]);
        assert_eq!(segments.next_id, 5);
        let roll = RollPolicy {
            segment_bytes: 1000,
            segment_ms: 60_000,
        };
        assert_eq!(segments.active(topic, &roll, 1_000), Some(4));
        assert_eq!(segments.active(topic, &roll, 60_100), None);
        segments.add_appended(topic, 4, 0, 1000);
        assert_eq!(segments.partition_bytes(topic, 0), 1000);
        assert_eq!(segments.active(topic, &roll, 1_000), None);
        segments.push(topic, 5, record(2_000));
        assert_eq!(segments.active(topic, &roll, 2_000), Some(5));
        assert!(segments.chains[&topic][1].record.sealed);
        assert_eq!(segments.active(Uuid::new_v4(), &roll, 0), None);
    }
}
