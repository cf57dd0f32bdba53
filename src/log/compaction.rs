//! Log compaction for `cleanup.policy=compact` topics: in sealed segments, a record is
//! removed once a later record in the sealed segments has the same key, and a tombstone
//! (null value) once it is also older than `delete.retention.ms`. Offsets never change:
//! a rewritten batch keeps its key and its records keep their offsets, so consumers see
//! gaps and read on. The active segment is never touched, and neither are transactional or
//! control batches, nor each partition's last sealed batch (it keeps the partition's end
//! offset across restarts).
//!
//! This is the one place Shale rewrites stored batches: compaction exists to drop records
//! from the middle of a log, which dropping whole segments cannot do.

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};
use slatedb::WriteBatch;

use super::batch::BatchView;
use super::batch_objects::ObjectReader;
use super::decode;
use super::read::prefix_range;
use super::{now_ms, LogError, LogStore, PartitionLog, Topic};
use crate::storage::keys::{self, BatchKey, KeyIndexEntry};

/// Compaction reads a partition from start to end: its scan and batch-object reader read
/// this far ahead.
const COMPACTION_READ_AHEAD: usize = 4 << 20;

impl LogStore {
    /// Compacts a topic's sealed segments if a segment was sealed since its last compaction.
    pub(super) async fn compact_topic(&self, topic: &Topic) -> Result<(), LogError> {
        let (sealed, done): (Vec<u32>, Option<u32>) = {
            let segments = self.read_segments();
            let sealed = segments
                .chains
                .get(&topic.id)
                .map(|chain| {
                    chain
                        .iter()
                        .filter(|s| s.record.sealed)
                        .map(|s| s.id)
                        .collect()
                })
                .unwrap_or_default();
            (sealed, segments.compacted_through.get(&topic.id).copied())
        };
        let Some(&newest) = sealed.last() else {
            return Ok(());
        };
        if done == Some(newest) {
            return Ok(());
        }
        let horizon = now_ms().saturating_sub(topic.policy.delete_retention_ms);
        let mut removed = 0;
        for partition in &topic.partitions {
            removed += self.compact_partition(partition, &sealed, horizon).await?;
        }
        self.write_segments()
            .compacted_through
            .insert(topic.id, newest);
        if removed > 0 {
            tracing::info!(topic = %topic.name, removed, segments = sealed.len(), "compacted topic");
        }
        Ok(())
    }

    /// Returns how many records were removed.
    async fn compact_partition(
        &self,
        partition: &PartitionLog,
        sealed: &[u32],
        tombstone_horizon: i64,
    ) -> Result<usize, LogError> {
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        let mut last_batch: Option<Bytes> = None;
        self.for_each_batch(partition, sealed, |key, _, records| {
            last_batch = Some(key.clone());
            if let Some(records) = records {
                for record in records {
                    if let Some(k) = &record.key {
                        latest.insert(k.clone(), record.offset);
                    }
                }
            }
        })
        .await?;
        let mut write = WriteBatch::new();
        let mut removed = 0;
        let mut removed_by_key: HashMap<(u32, Bytes), HashSet<i64>> = HashMap::new();
        self.for_each_batch(partition, sealed, |key, batch, records| {
            let Some(records) = records else {
                return;
            };
            if last_batch.as_ref() == Some(key) {
                return;
            }
            let kept: Vec<&Record> = records
                .iter()
                .filter(|r| match &r.key {
                    None => true,
                    Some(k) => {
                        latest.get(k) == Some(&r.offset)
                            && (r.value.is_some() || r.timestamp >= tombstone_horizon)
                    }
                })
                .collect();
            if kept.len() == records.len() {
                return;
            }
            removed += records.len() - kept.len();
            let segment = BatchKey::decode(key).map_or(0, |k| k.segment);
            let kept_offsets: HashSet<i64> = kept.iter().map(|r| r.offset).collect();
            for record in records {
                if let Some(k) = &record.key {
                    if !kept_offsets.contains(&record.offset) {
                        removed_by_key
                            .entry((segment, k.clone()))
                            .or_default()
                            .insert(record.offset);
                    }
                }
            }
            if kept.is_empty() {
                write.delete(key.clone());
                return;
            }
            let options = RecordEncodeOptions {
                version: 2,
                compression: compression_of(batch),
            };
            let mut rewritten = BytesMut::new();
            match RecordBatchEncoder::encode(&mut rewritten, kept, &options) {
                Ok(()) => write.put(key.clone(), rewritten.freeze()),
                Err(e) => tracing::warn!(error = %e, "cannot re-encode a batch; left uncompacted"),
            }
        })
        .await?;
        for ((segment, key), offsets) in removed_by_key {
            self.drop_index_copies(partition, segment, &key, &offsets, &mut write)
                .await?;
        }
        if removed > 0 {
            self.db.write(write).await?;
        }
        Ok(removed)
    }

    /// Removes the record copies from the key-index entries of removed records. The
    /// entries stay (a key's version is its entry count and never drops); key-stream reads
    /// fall back to the batch and find the record gone.
    async fn drop_index_copies(
        &self,
        partition: &PartitionLog,
        segment: u32,
        key: &[u8],
        offsets: &HashSet<i64>,
        write: &mut WriteBatch,
    ) -> Result<(), LogError> {
        let prefix = keys::key_index_prefix(segment, partition.topic_id, key);
        let mut scan = self.db.scan(prefix_range(&prefix)).await?;
        while let Some(stored) = scan.next().await? {
            let entry = KeyIndexEntry::decode(&stored.key, &stored.value)
                .ok_or_else(|| LogError::Corrupt("key index entry".into()))?;
            if entry.record.is_some()
                && entry.partition == partition.index
                && offsets.contains(&entry.offset)
            {
                let (index_key, value) = entry.without_record(partition.topic_id, key);
                write.put(index_key, value);
            }
        }
        Ok(())
    }

    /// Calls `visit` with each stored batch of `partition` in `segments`: its key, bytes,
    /// and its decoded records (`None` for transactional and control batches, which
    /// compaction leaves alone).
    async fn for_each_batch(
        &self,
        partition: &PartitionLog,
        segments: &[u32],
        mut visit: impl FnMut(&Bytes, &Bytes, Option<&[Record]>),
    ) -> Result<(), LogError> {
        for &segment in segments {
            let prefix = keys::partition_prefix(segment, partition.topic_id, partition.index);
            let options =
                LogStore::scan_options(COMPACTION_READ_AHEAD, slatedb::IterationOrder::Ascending);
            let mut scan = self
                .db
                .scan_with_options(prefix_range(&prefix), &options)
                .await?;
            let mut objects = ObjectReader::new(self.objects.clone(), COMPACTION_READ_AHEAD);
            while let Some(entry) = scan.next().await? {
                BatchKey::decode(&entry.key)
                    .ok_or_else(|| LogError::Corrupt("record batch key".into()))?;
                let batch = objects
                    .batch(partition.topic_id, partition.index, entry.value)
                    .await?;
                let view = BatchView::new(&batch)
                    .ok_or_else(|| LogError::Corrupt("short record batch".into()))?;
                if view.is_transactional() || view.is_control() {
                    visit(&entry.key, &batch, None);
                    continue;
                }
                match decode::records(&batch) {
                    Ok(records) => visit(&entry.key, &batch, Some(&records)),
                    Err(error) => {
                        // Stored while the key index was off (nothing read its records then):
                        // kept whole. Its keys are unknown, so it loses no record and
                        // supersedes none.
                        tracing::warn!(
                            topic_id = %partition.topic_id,
                            partition = partition.index,
                            %error,
                            "compaction keeps a batch whose records cannot be read"
                        );
                        visit(&entry.key, &batch, None);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The compression codec in a batch's attributes (the low three bits).
fn compression_of(batch: &[u8]) -> Compression {
    let attributes = BatchView::new(batch).map_or(0, |v| v.attributes());
    match attributes & 0x07 {
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => Compression::None,
    }
}
