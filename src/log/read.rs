//! Reading key logs: fetches, partition recovery, and offset look-ups by timestamp.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use slatedb::{DbIterator, IterationOrder};

use super::batch::BatchView;
use super::batch_objects::ObjectReader;
use super::decode;
use super::partition::{PartitionLog, PartitionOffsets, PartitionState, TxnIndex};
use super::producers::ProducerEntry;
use super::read_ahead::{Chunk, ChunkRequest};
use super::{now_ms, LogError, LogStore};
use crate::storage::keys::{self, AbortedTxn, BatchKey, StoredBatch};

/// Scans read ahead at most this much per object-store request.
const MAX_READ_AHEAD: usize = 4 << 20;

/// The least a consumer's read reads ahead (and may hold, in a read-ahead chunk's cursor).
pub(super) const MIN_READ_AHEAD: usize = 64 << 10;

/// The most entries of a scan a cursor holds ahead of its reads, besides the bytes bound
/// (see `BatchCursor::looks_ahead`): entries of small batches packed in one object load
/// nothing of their own and would not reach it.
const MAX_LOOKAHEAD_ENTRIES: usize = 256;

/// Records returned by a fetch, with the offsets they were read against.
#[derive(Debug, Clone)]
pub struct FetchedRecords {
    /// Whole record batches, concatenated as stored.
    pub records: Bytes,
    pub offsets: PartitionOffsets,
    /// For read_committed fetches: the aborted transactions overlapping the records.
    pub aborted: Vec<AbortedTxn>,
}

/// Which records a fetch may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// Everything durable, up to the high watermark.
    ReadUncommitted,
    /// Up to the last stable offset, with the aborted transactions to drop.
    ReadCommitted,
}

pub(super) fn prefix_range(prefix: &[u8]) -> Range<Bytes> {
    let end = keys::prefix_end(prefix).expect("Shale key prefixes never end in 0xff bytes");
    Bytes::copy_from_slice(prefix)..end
}

/// Walks one partition's batches in offset order, across segments, below an end offset.
/// It owns what it reads from, so the cursor of one read can carry on in the read-ahead of
/// the next (see `read_ahead`) without seeking again.
pub(super) struct BatchCursor {
    db: slatedb::Db,
    topic_id: uuid::Uuid,
    partition: i32,
    /// Segments not yet opened, oldest first.
    segments: std::vec::IntoIter<u32>,
    scan: Option<DbIterator>,
    /// Entries read from the scan ahead of the reads, as (last offset, stored value), so
    /// the objects they point to load in the meantime.
    lookahead: VecDeque<(i64, Bytes)>,
    /// The bytes of the values in `lookahead`.
    lookahead_bytes: usize,
    /// Whether this cursor reads ahead of itself: for sequential reads, on a store that
    /// loads objects ahead.
    prefetch: bool,
    /// A batch read from the scan and not returned yet: it starts at or past the end
    /// offset, or did not fit in a chunk.
    held: Option<Bytes>,
    from_offset: i64,
    end_offset: i64,
    read_ahead: usize,
    cache_blocks: bool,
    objects: ObjectReader,
}

impl BatchCursor {
    fn new(
        store: &LogStore,
        partition: &PartitionLog,
        from_offset: i64,
        end_offset: i64,
        read_ahead: usize,
    ) -> Self {
        BatchCursor {
            db: store.db.clone(),
            topic_id: partition.topic_id,
            partition: partition.index,
            segments: store
                .read_segments()
                .of_topic(partition.topic_id)
                .into_iter(),
            scan: None,
            lookahead: VecDeque::new(),
            lookahead_bytes: 0,
            prefetch: false,
            held: None,
            from_offset,
            end_offset,
            read_ahead,
            cache_blocks: true,
            objects: ObjectReader::new(store.objects.clone(), read_ahead),
        }
    }

    /// For reads that carry on where the last one stopped: the scan reads ahead, so
    /// caching its data blocks would only displace other readers' blocks.
    fn sequential(self) -> Self {
        BatchCursor {
            cache_blocks: false,
            ..self
        }
    }

    /// For a search by time: leaves out the sealed segments whose records are all older
    /// than `timestamp`, as their stats say, so the search starts in the first segment that
    /// may hold a match.
    fn searching_from_time(mut self, store: &LogStore, timestamp: i64) -> Self {
        self.segments = store
            .read_segments()
            .of_topic_since(self.topic_id, Some(timestamp))
            .into_iter();
        self
    }

    /// For a read-ahead stream's reads: loads the objects of the batches after the one
    /// returned in the background, where the store loads objects ahead (and has room left).
    /// A fetch's own read does not, as its cursor is dropped when no stream takes it over.
    fn prefetching(mut self) -> Self {
        self.prefetch = self.objects.prefetch_limit() > 0;
        self
    }

    /// The next batch holding offsets at or after `from_offset` and starting below
    /// `end_offset`, or `None` at the end.
    async fn next(&mut self) -> Result<Option<Bytes>, LogError> {
        loop {
            if let Some(batch) = self.held.take() {
                let view = BatchView::new(&batch)
                    .ok_or_else(|| LogError::Corrupt("short record batch".into()))?;
                if view.base_offset() >= self.end_offset {
                    self.held = Some(batch);
                    return Ok(None);
                }
                return Ok(Some(batch));
            }
            if let Some(value) = self.next_value().await? {
                let batch = self
                    .objects
                    .batch(self.topic_id, self.partition, value)
                    .await?;
                self.held = Some(batch);
                continue;
            }
            if !self.open_next_segment().await? {
                return Ok(None);
            }
        }
    }

    /// The next stored batch below the end offset, as stored: the batch itself, or its
    /// object's location with the batch's header. Nothing is loaded from objects, so a
    /// search that judges batches by their headers reads only the object of the batch it
    /// picks (with [`Self::load`]).
    async fn next_stored(&mut self) -> Result<Option<(Bytes, StoredBatch)>, LogError> {
        debug_assert!(self.held.is_none(), "a search cursor never holds a batch");
        loop {
            let Some(value) = self.next_value().await? else {
                if !self.open_next_segment().await? {
                    return Ok(None);
                }
                continue;
            };
            let stored = StoredBatch::decode(value.clone())
                .ok_or_else(|| LogError::Corrupt("batch location".into()))?;
            let header = BatchView::new(stored.header())
                .ok_or_else(|| LogError::Corrupt("short record batch".into()))?;
            if header.base_offset() >= self.end_offset {
                return Ok(None);
            }
            return Ok(Some((value, stored)));
        }
    }

    /// The whole batch of a value [`Self::next_stored`] returned.
    async fn load(&mut self, value: Bytes) -> Result<Bytes, LogError> {
        self.objects
            .batch(self.topic_id, self.partition, value)
            .await
    }

    /// Opens the scan of the next segment from the start offset on; false when none is
    /// left.
    async fn open_next_segment(&mut self) -> Result<bool, LogError> {
        let Some(segment) = self.segments.next() else {
            return Ok(false);
        };
        let prefix = keys::partition_prefix(segment, self.topic_id, self.partition);
        let range = prefix_range(&prefix);
        let start = BatchKey {
            segment,
            topic_id: self.topic_id,
            partition: self.partition,
            last_offset: self.from_offset.max(0),
        }
        .encode();
        let options = LogStore::scan_options(self.read_ahead, IterationOrder::Ascending)
            .with_cache_blocks(self.cache_blocks);
        self.scan = Some(
            self.db
                .scan_with_options(start..range.end, &options)
                .await?,
        );
        Ok(true)
    }

    /// The next stored value of the open scan, `None` when it has no more. A cursor that
    /// reads ahead also reads the entries after it, and starts loading their objects, while
    /// [`Self::looks_ahead`].
    async fn next_value(&mut self) -> Result<Option<Bytes>, LogError> {
        let mut room = true;
        while self.lookahead.is_empty() || (room && self.looks_ahead()) {
            let Some(scan) = &mut self.scan else { break };
            let Some(entry) = scan.next().await? else {
                self.scan = None;
                break;
            };
            let last_offset = BatchKey::decode(&entry.key)
                .ok_or_else(|| LogError::Corrupt("record batch key".into()))?
                .last_offset;
            if self.prefetch {
                room = self
                    .objects
                    .prefetch(self.topic_id, self.partition, &entry.value);
            }
            self.lookahead_bytes += entry.value.len();
            self.lookahead.push_back((last_offset, entry.value));
        }
        let Some((_, value)) = self.lookahead.pop_front() else {
            return Ok(None);
        };
        self.lookahead_bytes -= value.len();
        Ok(Some(value))
    }

    /// Whether to read another entry ahead: up to the end offset, and while the objects
    /// loading ahead and the entries held stay under what the store loads ahead.
    fn looks_ahead(&self) -> bool {
        let within_end = self
            .lookahead
            .back()
            .is_none_or(|(last_offset, _)| *last_offset < self.end_offset);
        self.prefetch
            && within_end
            && self.objects.wants_prefetch()
            && self.lookahead.len() < MAX_LOOKAHEAD_ENTRIES
            && self.lookahead_bytes < self.objects.prefetch_limit()
    }

    /// Puts back the batch `next` returned last, to be returned again.
    fn unread(&mut self, batch: Bytes) {
        debug_assert!(self.held.is_none());
        self.held = Some(batch);
    }
}

impl LogStore {
    /// Whether a read may wait on the network (a remote store): there, reads of several
    /// partitions are worth making at once. A local disk reads no faster several at a
    /// time, and memory does not wait.
    pub fn reads_wait_on_network(&self) -> bool {
        self.objects.loads_ahead()
    }

    /// Reads whole batches from `offset` on, up to `max_bytes` (but always at least one
    /// batch, so a consumer can make progress past a batch larger than its limit). Only
    /// durable records are returned. A read that stops at its limit starts reading the next
    /// chunk ahead (see `read_ahead`).
    pub async fn read(
        self: &Arc<Self>,
        partition: &Arc<PartitionLog>,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<FetchedRecords, LogError> {
        let state = self.state(partition).await?;
        let offsets = PartitionOffsets {
            log_start_offset: state.log_start_offset(),
            high_watermark: state.high_watermark(),
            last_stable_offset: state.last_stable_offset(),
        };
        let end = match isolation {
            Isolation::ReadUncommitted => offsets.high_watermark,
            Isolation::ReadCommitted => offsets.last_stable_offset,
        };
        // Offsets up to the assigned end are valid: one an acks=1 producer was given may
        // not be durable yet, and a fetch there waits rather than resets.
        let log_end = state.next_offset.load(std::sync::atomic::Ordering::Acquire);
        if offset < offsets.log_start_offset || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: offsets.log_start_offset,
                high_watermark: offsets.high_watermark,
            });
        }
        let mut records = Bytes::new();
        if offset < end && max_bytes > 0 {
            let request = ChunkRequest {
                topic_id: partition.topic_id,
                partition: partition.index,
                offset,
                max_bytes,
                isolation,
            };
            let mut chunk = match self.read_ahead.take(&request).await {
                Some(chunk) => chunk,
                None => {
                    let read_ahead = max_bytes.clamp(MIN_READ_AHEAD, MAX_READ_AHEAD);
                    let cursor =
                        BatchCursor::new(self, partition, offset, end, read_ahead).sequential();
                    read_chunk(cursor, max_bytes).await?
                }
            };
            if chunk.more {
                let next = ChunkRequest {
                    offset: chunk.next_offset,
                    ..request
                };
                let (store, partition) = (self.clone(), partition.clone());
                self.read_ahead
                    .start(next, chunk.cursor.take(), move |request, cursor| {
                        let (store, partition) = (store.clone(), partition.clone());
                        async move { store.read_chunk_ahead(&partition, request, cursor).await }
                    });
            }
            records = chunk.records;
        }
        let aborted = match isolation {
            Isolation::ReadCommitted if !records.is_empty() => {
                state.aborted_transactions(offset, end)
            }
            _ => Vec::new(),
        };
        Ok(FetchedRecords {
            records,
            offsets,
            aborted,
        })
    }

    /// The chunk `request` asks for, read against the partition's end at the time, with
    /// the cursor the previous chunk stopped at when there is one.
    async fn read_chunk_ahead(
        &self,
        partition: &PartitionLog,
        request: ChunkRequest,
        cursor: Option<BatchCursor>,
    ) -> Result<Chunk, LogError> {
        let state = self.state(partition).await?;
        let end = match request.isolation {
            Isolation::ReadUncommitted => state.high_watermark(),
            Isolation::ReadCommitted => state.last_stable_offset(),
        };
        let read_ahead = request.max_bytes.clamp(MIN_READ_AHEAD, MAX_READ_AHEAD);
        let fresh = || {
            BatchCursor::new(self, partition, request.offset, end, read_ahead)
                .sequential()
                .prefetching()
        };
        let Some(cursor) = cursor else {
            return read_chunk(fresh(), request.max_bytes).await;
        };
        let mut cursor = cursor.prefetching();
        cursor.end_offset = cursor.end_offset.max(end);
        let chunk = read_chunk(cursor, request.max_bytes).await?;
        if chunk.records.is_empty() {
            // The cursor's scan reads the store as it was when the scan opened, and the
            // records after it were appended later.
            return read_chunk(fresh(), request.max_bytes).await;
        }
        Ok(chunk)
    }

    /// One stored batch, by its key, with its base offset set.
    pub(super) async fn stored_batch(&self, key: &BatchKey) -> Result<Option<Bytes>, LogError> {
        let Some(value) = self.db.get(key.encode()).await? else {
            return Ok(None);
        };
        // One batch, not a span: key streams read batches here and there.
        let mut objects = ObjectReader::new(self.objects.clone(), 0);
        let batch = objects.batch(key.topic_id, key.partition, value).await?;
        Ok(Some(batch))
    }

    /// Rebuilds a partition's offsets from its stored batches.
    pub(super) async fn recover_partition(
        &self,
        partition: &PartitionLog,
    ) -> Result<PartitionState, LogError> {
        let stored_start = match self
            .db
            .get(keys::partition_start_key(
                partition.topic_id,
                partition.index,
            ))
            .await?
        {
            Some(value) => i64::from_be_bytes(
                value
                    .as_ref()
                    .try_into()
                    .map_err(|_| LogError::Corrupt("partition start offset".into()))?,
            ),
            None => 0,
        };
        let segments = self.read_segments().of_topic(partition.topic_id);
        let mut end_offset = stored_start;
        for &segment in segments.iter().rev() {
            let prefix = keys::partition_prefix(segment, partition.topic_id, partition.index);
            let options = LogStore::scan_options(1, IterationOrder::Descending);
            let mut scan = self
                .db
                .scan_with_options(prefix_range(&prefix), &options)
                .await?;
            if let Some(entry) = scan.next().await? {
                let key = BatchKey::decode(&entry.key)
                    .ok_or_else(|| LogError::Corrupt("record batch key".into()))?;
                end_offset = end_offset.max(key.last_offset + 1);
                break;
            }
        }
        // Retention stores the start whenever it drops records; compaction may remove the
        // first records without moving it, as in Kafka.
        let log_start_offset = stored_start;
        let mut producers = HashMap::new();
        let prefix = keys::producer_state_prefix(partition.topic_id, partition.index);
        let mut scan = self.db.scan(prefix_range(&prefix)).await?;
        let loaded_ms = now_ms();
        while let Some(entry) = scan.next().await? {
            let producer_id = keys::decode_producer_state_key(&entry.key)
                .ok_or_else(|| LogError::Corrupt("producer state key".into()))?;
            let state = ProducerEntry::decode(&entry.value, loaded_ms)
                .ok_or_else(|| LogError::Corrupt("producer state".into()))?;
            producers.insert(producer_id, state);
        }
        let mut aborted = Vec::new();
        for &segment in &segments {
            let prefix = keys::aborted_txn_prefix(segment, partition.topic_id, partition.index);
            let mut scan = self.db.scan(prefix_range(&prefix)).await?;
            while let Some(entry) = scan.next().await? {
                aborted.push(
                    AbortedTxn::decode(&entry.key, &entry.value)
                        .ok_or_else(|| LogError::Corrupt("aborted transaction".into()))?,
                );
            }
        }
        let transactions = TxnIndex::new(&producers, aborted);
        Ok(PartitionState::new(
            log_start_offset,
            end_offset,
            producers,
            transactions,
        ))
    }

    /// The first durable record with a timestamp at or after `timestamp`, as
    /// `(offset, timestamp)`; `None` when every record is older. Batches are judged by
    /// their stored headers, and sealed segments by their stats, so the search loads only
    /// the batch holding the answer.
    pub async fn offset_for_timestamp(
        &self,
        partition: &PartitionLog,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let offsets = self.offsets(partition).await?;
        let mut cursor = BatchCursor::new(
            self,
            partition,
            offsets.log_start_offset,
            offsets.high_watermark,
            MAX_READ_AHEAD,
        )
        .searching_from_time(self, timestamp);
        while let Some((value, stored)) = cursor.next_stored().await? {
            if max_timestamp(&stored)? >= timestamp {
                let batch = cursor.load(value).await?;
                return first_record_at_or_after(&batch, |ts| ts >= timestamp);
            }
        }
        Ok(None)
    }

    /// The record with the largest timestamp (the first of equals), as `(offset, timestamp)`.
    /// Batches are judged by their stored headers; only the one holding it is loaded.
    pub async fn offset_of_max_timestamp(
        &self,
        partition: &PartitionLog,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let offsets = self.offsets(partition).await?;
        let mut cursor = BatchCursor::new(
            self,
            partition,
            offsets.log_start_offset,
            offsets.high_watermark,
            MAX_READ_AHEAD,
        );
        let mut newest: Option<(i64, Bytes)> = None;
        while let Some((value, stored)) = cursor.next_stored().await? {
            let max = max_timestamp(&stored)?;
            if newest.as_ref().is_none_or(|(newest, _)| max > *newest) {
                newest = Some((max, value));
            }
        }
        match newest {
            Some((max, value)) => {
                let batch = cursor.load(value).await?;
                first_record_at_or_after(&batch, |ts| ts == max)
            }
            None => Ok(None),
        }
    }
}

fn max_timestamp(stored: &StoredBatch) -> Result<i64, LogError> {
    BatchView::new(stored.header())
        .map(|header| header.max_timestamp())
        .ok_or_else(|| LogError::Corrupt("short record batch".into()))
}

/// Whole batches from `cursor` on, up to `max_bytes` (at least one batch). The chunk keeps
/// the cursor when it stopped at a batch it could not take, so a read of what follows can
/// carry on from there.
async fn read_chunk(mut cursor: BatchCursor, max_bytes: usize) -> Result<Chunk, LogError> {
    let mut batches = Vec::new();
    let mut bytes = 0;
    let mut next_offset = cursor.from_offset;
    let mut positioned = false;
    while let Some(batch) = cursor.next().await? {
        if bytes > 0 && bytes + batch.len() > max_bytes {
            cursor.unread(batch);
            positioned = true;
            break;
        }
        let view =
            BatchView::new(&batch).ok_or_else(|| LogError::Corrupt("short record batch".into()))?;
        next_offset = view.last_offset() + 1;
        bytes += batch.len();
        batches.push(batch);
        if bytes >= max_bytes {
            positioned = true;
            break;
        }
    }
    // Stopped at the end offset with the next batch in hand: also where the next read starts.
    positioned |= cursor.held.is_some();
    cursor.from_offset = next_offset;
    let more = next_offset < cursor.end_offset;
    // A chunk of one batch (the usual case for producers' ~1 MB batches) is passed on
    // without a copy.
    let records = match batches.len() {
        0 => Bytes::new(),
        1 => batches.swap_remove(0),
        _ => {
            let mut records = BytesMut::with_capacity(bytes);
            for batch in &batches {
                records.extend_from_slice(batch);
            }
            records.freeze()
        }
    };
    Ok(Chunk {
        records,
        next_offset,
        more,
        cursor: positioned.then_some(cursor),
    })
}

/// Decodes one batch (decompressing if needed) and finds the first record whose timestamp
/// matches. Batches stamped with log-append time give every record the batch's max timestamp.
fn first_record_at_or_after(
    batch: &Bytes,
    matches: impl Fn(i64) -> bool,
) -> Result<Option<(i64, i64)>, LogError> {
    let view =
        BatchView::new(batch).ok_or_else(|| LogError::Corrupt("short record batch".into()))?;
    if view.is_log_append_time() {
        return Ok(
            matches(view.max_timestamp()).then(|| (view.base_offset(), view.max_timestamp()))
        );
    }
    let records = decode::records(batch)
        .map_err(|e| LogError::Corrupt(format!("stored record batch: {e}")))?;
    Ok(records
        .iter()
        .find(|record| matches(record.timestamp))
        .map(|record| (record.offset, record.timestamp)))
}
