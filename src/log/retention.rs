//! Retention: a background pass that drops whole segments from the old end of each topic's
//! chain, by time (`retention.ms`), size (`retention.bytes` per partition), DeleteRecords
//! (every partition's start moved past the segment) or topic deletion, then has SlateDB
//! drain them so their files are deleted. Live records are never rewritten.
//!
//! A drop is one atomic write: the segment records go and the affected partitions' log
//! start offsets move, so after a crash a segment is either still fully readable or gone.
//! Draining follows; a segment whose record is gone but whose data SlateDB still holds
//! (a crash between the two) is drained by the next pass.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use slatedb::compactor::{CompactionSpec, SourceId};
use slatedb::config::{FlushOptions, FlushType};
use slatedb::WriteBatch;
use uuid::Uuid;

use super::batch::BatchView;
use super::read::prefix_range;
use super::segments::{self, PartitionSpan, SegmentRecord, SegmentStats};
use super::{now_ms, LogError, LogStore, Topic};
use crate::storage::keys::{self, BatchKey, StoredBatch};

/// A drain is resubmitted only if the segment is still there this much later.
const DRAIN_RETRY_MS: i64 = 30_000;

/// Runs a retention pass every `interval` while the store is alive.
pub fn spawn(store: &Arc<LogStore>, interval: Duration) {
    let store: Weak<LogStore> = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else {
                return;
            };
            if let Err(e) = store.enforce_retention().await {
                tracing::warn!(error = %e, "retention pass failed; retrying");
            }
        }
    });
}

impl LogStore {
    /// One retention pass over every topic.
    pub async fn enforce_retention(&self) -> Result<(), LogError> {
        self.seal_idle_segments().await?;
        self.compute_missing_stats().await?;
        let topics = self.topics();
        let live: HashSet<Uuid> = topics.iter().map(|t| t.id).collect();
        let deleted: Vec<(Uuid, Vec<u32>)> = {
            let segments = self.read_segments();
            segments
                .chains
                .iter()
                .filter(|(id, _)| !live.contains(id))
                .map(|(id, chain)| (*id, chain.iter().map(|s| s.id).collect()))
                .collect()
        };
        for (topic_id, ids) in deleted {
            tracing::info!(topic_id = %topic_id, segments = ids.len(), "dropping the segments of a deleted topic");
            self.drop_segments(None, topic_id, &ids, BTreeMap::new())
                .await?;
        }
        for topic in topics {
            // One topic's failure does not hold back the others' retention.
            if let Err(error) = self.enforce_topic_retention(&topic).await {
                tracing::warn!(topic = %topic.name, %error, "retention of a topic failed; retrying");
            }
        }
        self.drain_unrecorded().await
    }

    async fn enforce_topic_retention(&self, topic: &Topic) -> Result<(), LogError> {
        let (ids, starts) = self.droppable(topic).await?;
        if !ids.is_empty() {
            self.drop_segments(Some(topic), topic.id, &ids, starts)
                .await?;
        }
        if topic.policy.compact {
            self.compact_topic(topic).await?;
        }
        Ok(())
    }

    /// Seals active segments older than their topic's `segment.ms` (or of deleted topics),
    /// so retention can judge them even when no more records arrive. Takes the append lock:
    /// no append can be writing into a segment as it is sealed.
    async fn seal_idle_segments(&self) -> Result<(), LogError> {
        let now = now_ms();
        let _appends = self.append.lock().await;
        let idle: Vec<(Uuid, u32, SegmentRecord)> = {
            let segments = self.read_segments();
            segments
                .chains
                .iter()
                .filter_map(|(topic_id, chain)| {
                    let last = chain.last().filter(|s| !s.record.sealed)?;
                    let segment_ms = self
                        .topic_by_id(*topic_id)
                        .map_or(0, |t| t.policy.roll.segment_ms);
                    (now - last.record.created_ms >= segment_ms)
                        .then(|| (*topic_id, last.id, last.record.clone()))
                })
                .collect()
        };
        if idle.is_empty() {
            return Ok(());
        }
        let mut write = WriteBatch::new();
        for (_, id, record) in &idle {
            let sealed = SegmentRecord {
                sealed: true,
                ..record.clone()
            };
            write.put(keys::segment_key(*id), segments::encode(&sealed));
        }
        self.db.write(write).await?;
        let mut segments = self.write_segments();
        for (topic_id, id, _) in idle {
            if let Some(segment) = segments
                .chains
                .get_mut(&topic_id)
                .and_then(|c| c.iter_mut().find(|s| s.id == id))
            {
                segment.record.sealed = true;
            }
        }
        Ok(())
    }

    /// Reads each sealed segment without stats once and stores what it holds.
    async fn compute_missing_stats(&self) -> Result<(), LogError> {
        let missing: Vec<(Uuid, u32, SegmentRecord)> = {
            let segments = self.read_segments();
            segments
                .chains
                .iter()
                .flat_map(|(topic_id, chain)| chain.iter().map(move |s| (*topic_id, s)))
                .filter(|(_, s)| s.record.sealed && s.record.stats.is_none())
                .map(|(topic_id, s)| (topic_id, s.id, s.record.clone()))
                .collect()
        };
        for (topic_id, id, record) in missing {
            let stats = self.segment_stats(id).await?;
            let record = SegmentRecord {
                stats: Some(stats),
                ..record
            };
            self.db
                .put(keys::segment_key(id), segments::encode(&record))
                .await?;
            let mut segments = self.write_segments();
            if let Some(segment) = segments
                .chains
                .get_mut(&topic_id)
                .and_then(|c| c.iter_mut().find(|s| s.id == id))
            {
                segment.record = record;
            }
        }
        Ok(())
    }

    async fn segment_stats(&self, segment: u32) -> Result<SegmentStats, LogError> {
        let mut stats = SegmentStats {
            max_timestamp: -1,
            ..SegmentStats::default()
        };
        let options = LogStore::scan_options(4 << 20, slatedb::IterationOrder::Ascending);
        let range = prefix_range(&keys::segment_batches_prefix(segment));
        let mut scan = self.db.scan_with_options(range, &options).await?;
        while let Some(entry) = scan.next().await? {
            let key = BatchKey::decode(&entry.key)
                .ok_or_else(|| LogError::Corrupt("record batch key".into()))?;
            let stored = StoredBatch::decode(entry.value)
                .ok_or_else(|| LogError::Corrupt("batch location".into()))?;
            let view = BatchView::new(stored.header())
                .ok_or_else(|| LogError::Corrupt("short record batch".into()))?;
            let bytes = view.stored_len() as u64;
            stats.max_timestamp = stats.max_timestamp.max(view.max_timestamp());
            stats.bytes += bytes;
            let span = stats
                .partitions
                .entry(key.partition)
                .or_insert(PartitionSpan {
                    end_offset: 0,
                    bytes: 0,
                });
            span.end_offset = span.end_offset.max(key.last_offset + 1);
            span.bytes += bytes;
        }
        Ok(stats)
    }

    /// The sealed segments at the old end of a topic's chain that retention drops now, and
    /// the log start offsets their partitions move to.
    async fn droppable(&self, topic: &Topic) -> Result<(Vec<u32>, BTreeMap<i32, i64>), LogError> {
        let chain: Vec<(u32, Option<SegmentStats>, bool)> = {
            let segments = self.read_segments();
            match segments.chains.get(&topic.id) {
                Some(chain) => chain
                    .iter()
                    .map(|s| (s.id, s.record.stats.clone(), s.record.sealed))
                    .collect(),
                None => return Ok((Vec::new(), BTreeMap::new())),
            }
        };
        let policy = topic.policy;
        let now = now_ms();
        let mut dropped = Vec::new();
        let mut starts: BTreeMap<i32, i64> = BTreeMap::new();
        for (index, (id, stats, sealed)) in chain.iter().enumerate() {
            let Some(stats) = stats.as_ref().filter(|_| *sealed) else {
                break;
            };
            let expired = policy.delete
                && policy.retention_ms >= 0
                && stats.max_timestamp < now.saturating_sub(policy.retention_ms);
            let later_bytes = |partition: i32| -> u64 {
                chain[index + 1..]
                    .iter()
                    .filter_map(|(_, s, _)| s.as_ref()?.partitions.get(&partition))
                    .map(|span| span.bytes)
                    .sum()
            };
            let oversized = policy.delete
                && policy.retention_bytes >= 0
                && stats
                    .partitions
                    .keys()
                    .all(|p| later_bytes(*p) >= policy.retention_bytes as u64);
            let mut deleted = true;
            for (partition, span) in &stats.partitions {
                let start = match topic.partition(*partition) {
                    Some(log) => self.offsets(log).await?.log_start_offset,
                    None => i64::MAX,
                };
                deleted &= span.end_offset <= start;
            }
            if !(expired || oversized || deleted) {
                break;
            }
            tracing::info!(
                topic = %topic.name,
                segment = id,
                bytes = stats.bytes,
                reason = if deleted { "records deleted" } else if expired { "retention.ms" } else { "retention.bytes" },
                "dropping segment"
            );
            dropped.push(*id);
            for (partition, span) in &stats.partitions {
                let start = starts.entry(*partition).or_insert(span.end_offset);
                *start = (*start).max(span.end_offset);
            }
        }
        Ok((dropped, starts))
    }

    /// Drops segments in one durable write (their records, and the partitions' new log
    /// start offsets), then drains them.
    async fn drop_segments(
        &self,
        topic: Option<&Topic>,
        topic_id: Uuid,
        ids: &[u32],
        starts: BTreeMap<i32, i64>,
    ) -> Result<(), LogError> {
        {
            let _starts = self.start_offsets.lock().await;
            let mut write = WriteBatch::new();
            for id in ids {
                write.delete(keys::segment_key(*id));
            }
            let mut moved = Vec::new();
            for (partition, start) in starts {
                let Some(log) = topic.and_then(|t| t.partition(partition)) else {
                    continue;
                };
                let current = self.offsets(log).await?.log_start_offset;
                if start > current {
                    write.put(
                        keys::partition_start_key(topic_id, partition),
                        start.to_be_bytes(),
                    );
                    moved.push((log.clone(), start));
                }
            }
            let written = self.db.write(write).await?;
            self.pending_write(written).durable().await?;
            for (log, start) in moved {
                self.state(&log).await?.advance_log_start(start);
            }
            let mut segments = self.write_segments();
            if let Some(chain) = segments.chains.get_mut(&topic_id) {
                chain.retain(|s| !ids.contains(&s.id));
                if chain.is_empty() {
                    segments.chains.remove(&topic_id);
                }
            }
        }
        self.drain(ids).await
    }

    /// Has SlateDB drop the files of segments no longer recorded.
    async fn drain(&self, ids: &[u32]) -> Result<(), LogError> {
        let now = now_ms();
        let due: Vec<u32> = {
            let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
            let due: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|id| draining.get(id).is_none_or(|at| now - at >= DRAIN_RETRY_MS))
                .collect();
            for id in &due {
                draining.insert(*id, now);
            }
            due
        };
        if due.is_empty() {
            return Ok(());
        }
        // Records still in the memtable would escape the drain: flush them to the segments'
        // trees first.
        self.db
            .flush_with_options(FlushOptions {
                flush_type: FlushType::MemTable,
            })
            .await?;
        let view = self.admin.read_compactor_state_view().await?;
        for id in due {
            // Deleted first: the drain takes their registrations with it.
            self.delete_segment_objects(id).await?;
            let prefix = bytes::Bytes::copy_from_slice(&id.to_be_bytes());
            let Some(segment) = view.manifest().segment(&prefix) else {
                continue;
            };
            let mut sources: Vec<SourceId> = segment
                .l0()
                .iter()
                .map(|v| SourceId::SstView(v.id))
                .collect();
            sources.extend(
                segment
                    .compacted()
                    .iter()
                    .map(|r| SourceId::SortedRun(r.id)),
            );
            if sources.is_empty() {
                continue;
            }
            self.admin
                .submit_compaction(CompactionSpec::drain_segment(prefix, sources))
                .await?;
            tracing::info!(segment = id, "segment drain submitted");
        }
        Ok(())
    }

    /// Drains segments SlateDB still holds that Shale no longer records (a crash between
    /// dropping a segment and draining it), and lets the files of finished drains go.
    async fn drain_unrecorded(&self) -> Result<(), LogError> {
        let view = self.admin.read_compactor_state_view().await?;
        let finished: Vec<u32> = {
            let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
            let finished: Vec<u32> = draining
                .keys()
                .copied()
                .filter(|id| {
                    view.manifest()
                        .segment(&id.to_be_bytes())
                        .is_none_or(|s| s.l0().is_empty() && s.compacted().is_empty())
                })
                .collect();
            for id in &finished {
                draining.remove(id);
            }
            finished
        };
        if !finished.is_empty() {
            // SlateDB's garbage collector deletes an unreferenced file only once a newer L0
            // exists; on an idle broker none would come, so write one: the cluster id again.
            self.db
                .put(keys::cluster_id_key(), self.cluster_id.as_bytes())
                .await?;
            self.db
                .flush_with_options(FlushOptions {
                    flush_type: FlushType::MemTable,
                })
                .await?;
            tracing::info!(segments = ?finished, "segments drained; their files are deleted after --reclaim-delay-ms");
        }
        // Appends record a new segment in memory before releasing this lock, so every
        // segment with data in `view` is known once it is taken.
        let recorded: HashSet<u32> = {
            let _appends = self.append.lock().await;
            self.read_segments().all().into_iter().collect()
        };
        let stale: Vec<u32> = view
            .manifest()
            .segments()
            .iter()
            .filter(|s| !s.l0().is_empty() || !s.compacted().is_empty())
            .filter_map(|s| Some(u32::from_be_bytes(s.prefix().as_ref().try_into().ok()?)))
            .filter(|id| *id != keys::META_SEGMENT && !recorded.contains(id))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        self.drain(&stale).await
    }
}
