//! Event-store reads over the key logs: one message key's records in a topic (from the key
//! index), the global log of every append in sequence order, and appends conditional on a
//! key's version (its record count). Only durable records are returned, as with Fetch.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kafka_protocol::records::Record;
use slatedb::IterationOrder;
use uuid::Uuid;

use super::batch::BatchView;
use super::read::prefix_range;
use super::{LogError, LogStore, PartitionAppend, PartitionLog, Topic};
use crate::storage::keys::{self, BatchKey, KeyIndexEntry, SequenceEntry};

/// Batch look-ups a key-stream read keeps in flight.
const CONCURRENT_LOOKUPS: usize = 16;

/// One record as the HTTP API shows it.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub sequence: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// A page of a key stream or of the global log, and where the next page starts.
#[derive(Debug, Clone)]
pub struct StreamPage {
    pub records: Vec<StreamRecord>,
    /// For a key stream, the position after the last index entry read (records that
    /// compaction removed are skipped but counted); for the global log, the sequence after
    /// the last record.
    pub next: u64,
}

/// Where a conditional append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAppend {
    pub partition: i32,
    pub offset: i64,
    /// The key's version after the append.
    pub version: u64,
}

fn stream_record(topic: &str, partition: i32, sequence: u64, record: &Record) -> StreamRecord {
    StreamRecord {
        topic: topic.to_string(),
        partition,
        offset: record.offset,
        sequence,
        timestamp: record.timestamp,
        key: record.key.clone(),
        value: record.value.clone(),
        headers: record
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

/// `record` with its fields copied out of the batch they were cut from, so the batch's
/// buffer is freed with the rest of its records.
fn detached(record: Record) -> Record {
    let copy = |bytes: Bytes| Bytes::copy_from_slice(&bytes);
    Record {
        key: record.key.map(copy),
        value: record.value.map(copy),
        headers: record
            .headers
            .into_iter()
            .map(|(name, value)| (name, value.map(copy)))
            .collect(),
        ..record
    }
}

fn decode(batch: &Bytes) -> Result<Vec<Record>, LogError> {
    super::decode::records(batch)
        .map_err(|e| LogError::Corrupt(format!("stored record batch: {e}")))
}

/// Reads pages from `from` on until one has records or `next` stops moving, so a page that
/// held only skipped entries (transaction markers, aborted or removed records, records below
/// the log start) never reaches the reader as an empty page in the middle of a stream.
async fn first_filled_page<F, Fut>(mut from: u64, mut page: F) -> Result<StreamPage, LogError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<StreamPage, LogError>>,
{
    loop {
        let read = page(from).await?;
        if !read.records.is_empty() || read.next == from {
            return Ok(read);
        }
        from = read.next;
    }
}

impl LogStore {
    /// A receiver that changes whenever appended records become durable: how key-stream
    /// and global-log readers wait at the tail.
    pub fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durability.appended()
    }

    /// Index entries of `key` in `topic`, in sequence order, from position `from`.
    async fn key_entries(
        &self,
        topic_id: Uuid,
        key: &[u8],
        from: u64,
        limit: usize,
    ) -> Result<Vec<KeyIndexEntry>, LogError> {
        let mut entries = Vec::new();
        let mut position = 0u64;
        let segments = self.read_segments().of_topic(topic_id);
        for segment in segments {
            let prefix = keys::key_index_prefix(segment, topic_id, key);
            let mut scan = self.db.scan(prefix_range(&prefix)).await?;
            while let Some(entry) = scan.next().await? {
                if position >= from {
                    if entries.len() == limit {
                        return Ok(entries);
                    }
                    entries.push(
                        KeyIndexEntry::decode(&entry.key, &entry.value)
                            .ok_or_else(|| LogError::Corrupt("key index entry".into()))?,
                    );
                }
                position += 1;
            }
        }
        Ok(entries)
    }

    /// How many records `key` has in `topic` (its version), durable or not, less those of
    /// aborted transactions (a transaction still open counts: it may commit).
    pub async fn key_version(&self, topic: &Topic, key: &[u8]) -> Result<u64, LogError> {
        let mut version = 0;
        for entry in self.key_entries(topic.id, key, 0, usize::MAX).await? {
            let aborted = match topic.partition(entry.partition) {
                Some(partition) => {
                    self.is_aborted(partition, entry.transactional_producer, entry.offset)
                        .await?
                }
                None => false,
            };
            version += u64::from(!aborted);
        }
        Ok(version)
    }

    /// Committed records of `key` in `topic`, from position `from` (0 is the first): durable,
    /// below the last stable offset, and not in an aborted transaction. Entries holding a
    /// copy of their record are served from the index alone; the rest cost one point
    /// look-up per batch. A page is empty only at the end of what is readable.
    pub async fn key_records(
        &self,
        topic: &Topic,
        key: &[u8],
        from: u64,
        limit: usize,
    ) -> Result<StreamPage, LogError> {
        first_filled_page(from, |from| self.key_page(topic, key, from, limit)).await
    }

    async fn key_page(
        &self,
        topic: &Topic,
        key: &[u8],
        from: u64,
        limit: usize,
    ) -> Result<StreamPage, LogError> {
        let mut entries = Vec::new();
        let mut next = from;
        let mut offsets = HashMap::new();
        for entry in self.key_entries(topic.id, key, from, limit).await? {
            let Some(partition) = topic.partition(entry.partition) else {
                next += 1;
                continue;
            };
            let bounds = match offsets.get(&entry.partition) {
                Some(bounds) => *bounds,
                None => *offsets
                    .entry(entry.partition)
                    .or_insert(self.offsets(partition).await?),
            };
            if entry.offset >= bounds.last_stable_offset {
                break;
            }
            next += 1;
            if entry.offset >= bounds.log_start_offset
                && !self
                    .is_aborted(partition, entry.transactional_producer, entry.offset)
                    .await?
            {
                entries.push(entry);
            }
        }
        // The entries without a copy name their batches: one point look-up per batch,
        // several in flight.
        let mut wanted: Vec<(u32, i32, i64)> = entries
            .iter()
            .filter(|e| e.record.is_none())
            .map(|e| (e.segment, e.partition, e.batch_last_offset))
            .collect();
        wanted.dedup();
        let lookups: Vec<_> = wanted
            .iter()
            .map(|&(segment, partition, last_offset)| {
                let key = BatchKey {
                    segment,
                    topic_id: topic.id,
                    partition,
                    last_offset,
                };
                self.batch_records(key)
            })
            .collect();
        // Each batch gives up the records the page needs, copied out, as it arrives: a page
        // of 10,000 records from as many 1 MB batches would otherwise hold them all at
        // once (measured: 1000 records of 512 KB batches took the broker from 130 to
        // 709 MB).
        let needed: HashSet<(i32, i64)> = entries
            .iter()
            .filter(|e| e.record.is_none())
            .map(|e| (e.partition, e.offset))
            .collect();
        let mut found: HashMap<(i32, i64), Record> = HashMap::with_capacity(needed.len());
        let mut fetched = futures::stream::iter(lookups).buffered(CONCURRENT_LOOKUPS);
        for &(_, partition, _) in &wanted {
            let Some(records) = fetched.try_next().await? else {
                break;
            };
            for record in records {
                if needed.contains(&(partition, record.offset)) {
                    found.insert((partition, record.offset), detached(record));
                }
            }
        }
        let key = Bytes::copy_from_slice(key);
        let records = entries
            .into_iter()
            .filter_map(|entry| match entry.record {
                Some(copy) => Some(StreamRecord {
                    topic: topic.name.clone(),
                    partition: entry.partition,
                    offset: entry.offset,
                    sequence: entry.sequence,
                    timestamp: copy.timestamp,
                    key: Some(key.clone()),
                    value: copy.value,
                    headers: copy
                        .headers
                        .into_iter()
                        .map(|(name, value)| (String::from_utf8_lossy(&name).into_owned(), value))
                        .collect(),
                }),
                // Missing when compaction removed the record.
                None => found.get(&(entry.partition, entry.offset)).map(|record| {
                    stream_record(&topic.name, entry.partition, entry.sequence, record)
                }),
            })
            .collect();
        Ok(StreamPage { records, next })
    }

    /// Whether the record at `offset` of a transactional producer (`None`: not
    /// transactional) belongs to a transaction that was aborted.
    async fn is_aborted(
        &self,
        partition: &PartitionLog,
        transactional_producer: Option<i64>,
        offset: i64,
    ) -> Result<bool, LogError> {
        let Some(producer_id) = transactional_producer else {
            return Ok(false);
        };
        Ok(self
            .state(partition)
            .await?
            .aborted_transactions(offset, offset + 1)
            .iter()
            .any(|a| a.producer_id == producer_id && a.first_offset <= offset))
    }

    /// The records of the batch stored under `key` (none if compaction removed it).
    async fn batch_records(&self, key: BatchKey) -> Result<Vec<Record>, LogError> {
        match self.stored_batch(&key).await? {
            Some(batch) => decode(&batch),
            None => Ok(Vec::new()),
        }
    }

    /// Committed records in global-sequence order from sequence `from`: of every topic, or
    /// of one. With `since_ms`, a topic's sealed segments whose newest record is older are
    /// skipped without being read. A page is empty only at the end of what is readable.
    pub async fn sequence_records(
        &self,
        topic: Option<&Topic>,
        from: u64,
        limit: usize,
        since_ms: Option<i64>,
    ) -> Result<StreamPage, LogError> {
        first_filled_page(from, |from| {
            self.sequence_page(topic, from, limit, since_ms)
        })
        .await
    }

    async fn sequence_page(
        &self,
        topic: Option<&Topic>,
        from: u64,
        limit: usize,
        since_ms: Option<i64>,
    ) -> Result<StreamPage, LogError> {
        let mut entries: Vec<(u32, u64, SequenceEntry)> = Vec::new();
        let segments = match topic {
            None => self.read_segments().all(),
            Some(topic) => self.read_segments().of_topic_since(topic.id, since_ms),
        };
        for segment in segments {
            let prefix = keys::sequence_prefix(segment);
            let range = prefix_range(&prefix);
            // The entry holding `from` may start before it.
            let before = keys::sequence_key(segment, from);
            let options = LogStore::scan_options(1, IterationOrder::Descending);
            let mut back = self
                .db
                .scan_with_options(range.start.clone()..before.clone(), &options)
                .await?;
            let mut found = Vec::new();
            if let Some(entry) = back.next().await? {
                found.push(entry);
            }
            let mut scan = self.db.scan(before..range.end).await?;
            while found.len() <= limit {
                match scan.next().await? {
                    Some(entry) => found.push(entry),
                    None => break,
                }
            }
            for entry in found {
                let first = keys::decode_sequence_key(&entry.key)
                    .ok_or_else(|| LogError::Corrupt("global sequence key".into()))?;
                let stored = SequenceEntry::decode(&entry.value)
                    .ok_or_else(|| LogError::Corrupt("global sequence entry".into()))?;
                let in_scope = topic.is_none_or(|t| t.id == stored.topic_id);
                if in_scope && first + u64::from(stored.record_count) > from {
                    entries.push((segment, first, stored));
                }
            }
        }
        entries.sort_by_key(|(_, first, _)| *first);
        let mut records = Vec::new();
        // Moves past skipped batches too (control, aborted, removed), so a page of them
        // alone still advances the reader.
        let mut next = from;
        for (segment, first, entry) in entries {
            if records.len() >= limit {
                break;
            }
            let after_batch = first + u64::from(entry.record_count);
            let Some(topic) = self.topic_by_id(entry.topic_id) else {
                next = after_batch;
                continue;
            };
            let Some(partition) = topic.partition(entry.partition) else {
                next = after_batch;
                continue;
            };
            let last_offset = entry.base_offset + i64::from(entry.record_count) - 1;
            if last_offset >= self.offsets(partition).await?.last_stable_offset {
                // Not durable or in an undecided transaction: the log stops here so
                // readers never skip a record that may yet be committed.
                break;
            }
            next = after_batch;
            let key = BatchKey {
                segment,
                topic_id: entry.topic_id,
                partition: entry.partition,
                last_offset,
            };
            let Some(batch) = self.stored_batch(&key).await? else {
                continue;
            };
            let Some(view) = BatchView::new(&batch) else {
                continue;
            };
            let producer = view.is_transactional().then(|| view.producer_id());
            if view.is_control()
                || self
                    .is_aborted(partition, producer, view.base_offset())
                    .await?
            {
                continue;
            }
            for record in decode(&batch)? {
                let sequence = first + (record.offset - entry.base_offset) as u64;
                if sequence < from {
                    continue;
                }
                if records.len() == limit {
                    next = sequence;
                    break;
                }
                records.push(stream_record(
                    &topic.name,
                    entry.partition,
                    sequence,
                    &record,
                ));
            }
        }
        Ok(StreamPage { records, next })
    }

    /// Appends one keyed batch if the key's version is `expected` (any version when
    /// `None`), checked under the append lock so that exactly one concurrent writer wins
    /// each version, Kafka producers included. Returns where it landed once durable.
    pub async fn append_to_key(
        &self,
        topic: &Topic,
        partition: &Arc<PartitionLog>,
        key: Bytes,
        batch: Bytes,
        expected: Option<u64>,
    ) -> Result<KeyAppend, LogError> {
        let append = PartitionAppend {
            partition: partition.clone(),
            batches: vec![batch],
        };
        let condition = super::KeyCondition {
            topic_id: topic.id,
            key,
            expected,
        };
        let (receipt, version) = self.append_if(append, condition).await?;
        let offset = match receipt.outcomes.first() {
            Some(super::AppendOutcome::Appended { base_offset }) => *base_offset,
            _ => {
                return Err(LogError::Corrupt(
                    "conditional append was not written".into(),
                ))
            }
        };
        receipt.durable().await?;
        Ok(KeyAppend {
            partition: partition.index,
            offset,
            version,
        })
    }
}
