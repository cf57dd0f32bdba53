//! Batch objects: large appends written once.
//!
//! A batch stored in SlateDB reaches the disk three times: in the WAL, in an L0 table when
//! the memtable flushes, and again when compaction merges tables. Under a heavy produce load
//! that is the ceiling (docs/performance.md). So one partition's batches in an append of at
//! least the store's threshold ([`BatchObjects::min_bytes`]) are written, as received, to an
//! object of their own, durable
//! before the append; their batch keys hold locations ([`StoredBatch::InObject`]) and the
//! object is registered in the segment its batches went to.
//!
//! Objects are written before offsets are assigned, so they hold the base offsets the
//! producer sent. The batches of one object always get consecutive offsets, so a reader
//! sets each base offset as it loads a span, counting on from the first batch's.
//!
//! An object leaves with its segment: retention deletes the objects registered in a segment
//! before draining it. An object whose append did not happen is deleted at once; one written
//! just before a crash, never registered, is deleted by [`LogStore::sweep_orphan_objects`]
//! after the next start.
//!
//! In a local folder, objects are written and read with direct I/O where the file system
//! allows it ([`DirectFolder`]), past the page cache. Their files then hold whole blocks:
//! zeros may come before the batches and after them, and locations say where they are.
//!
//! On a remote store the objects written last are also kept in memory ([`RecentObjects`]):
//! consumers at the tail read each new object right after it is written, and would
//! otherwise each pay a request to the store for it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::batch::{self, BatchKeys, BatchView, HEADER_LEN};
use super::read::prefix_range;
use super::{LogError, LogStore, PartitionAppend};
use crate::storage::keys::{self, BatchLocation, StoredBatch};
use crate::storage::DirectFolder;

/// Where batch objects live, and how their ids are made.
pub(super) struct BatchObjects {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// One partition's batches in one append go to a batch object from this size on.
    /// Smaller appends stay in SlateDB, where they cost one small WAL write rather than an
    /// object each (see `storage::OpenedStore::object_min_bytes`).
    min_bytes: usize,
    /// Writes and reads the store's files directly, when it is a local folder that allows it;
    /// listing and deleting still go through the store.
    direct: Option<DirectFolder>,
    /// Ids are nanoseconds since the epoch when written, kept increasing: unique across
    /// restarts, and ordered by time, so the sweep can tell this run's objects apart.
    last_id: AtomicU64,
    started_id: u64,
    recent: RecentObjects,
    /// How many bytes of objects a sequential reader loads ahead of itself (0: none).
    prefetch_bytes: usize,
    /// What all readers together may still load ahead: [`PREFETCHING_READERS`] readers'
    /// worth. Loading ahead has room of its own so that it never takes read-ahead streams'
    /// (with 1 MB fetches, 32 partitions' streams fit; a stream that finds no room here
    /// reads one object at a time, as without loading ahead).
    prefetch_room: AtomicUsize,
}

/// How many readers' worth of loading ahead the store holds at once.
const PREFETCHING_READERS: usize = 8;

/// The objects written last, whole and as written, up to a byte budget; the oldest leave
/// first. Each is one buffer of its own (copied from the request when written), so what is
/// held is exactly what is counted.
struct RecentObjects {
    budget: usize,
    held: Mutex<RecentHeld>,
}

#[derive(Default)]
struct RecentHeld {
    /// Each object's bytes, and where they start in its stored form (see
    /// [`DirectFolder::put`]).
    by_id: HashMap<u64, (u64, Bytes)>,
    /// Ids in the order written, for eviction; may still hold some deleted ones.
    order: VecDeque<u64>,
    bytes: usize,
}

impl RecentObjects {
    fn new(budget: usize) -> Self {
        RecentObjects {
            budget,
            held: Mutex::new(RecentHeld::default()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, RecentHeld> {
        // Plain data, never left half-updated by a panic.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an object of `len` bytes would be kept.
    fn keeps(&self, len: usize) -> bool {
        len <= self.budget
    }

    fn insert(&self, id: u64, lead: u64, object: Bytes) {
        let mut held = self.held();
        held.bytes += object.len();
        held.by_id.insert(id, (lead, object));
        held.order.push_back(id);
        while held.bytes > self.budget {
            let Some(oldest) = held.order.pop_front() else {
                break;
            };
            if let Some((_, evicted)) = held.by_id.remove(&oldest) {
                held.bytes -= evicted.len();
            }
        }
    }

    fn get(&self, id: u64) -> Option<(u64, Bytes)> {
        self.held().by_id.get(&id).cloned()
    }

    fn remove(&self, id: u64) {
        let mut held = self.held();
        let RecentHeld {
            by_id,
            order,
            bytes,
        } = &mut *held;
        if let Some((_, removed)) = by_id.remove(&id) {
            *bytes -= removed.len();
        }
        // Deleted ids wait in `order` until eviction reaches them; where objects are deleted
        // faster than they are evicted, drop them here so the queue stays bounded.
        if order.len() > 2 * by_id.len() + 64 {
            order.retain(|id| by_id.contains_key(id));
        }
    }
}

/// An object holding one partition's batches of one append.
#[derive(Debug)]
pub(super) struct WrittenObject {
    pub id: u64,
    pub topic_id: Uuid,
    pub partition: i32,
    pub len: u64,
    /// Where each batch starts, in append order.
    pub positions: Vec<u64>,
}

impl WrittenObject {
    /// The stored location of batch `index`, whose offsets start at `base_offset`.
    pub fn location(&self, index: usize, batch: &[u8], base_offset: i64) -> BatchLocation {
        let mut header = BytesMut::from(&batch[..HEADER_LEN]);
        header[..8].copy_from_slice(&base_offset.to_be_bytes());
        BatchLocation {
            object_id: self.id,
            position: self.positions[index],
            object_len: self.len,
            header: header.freeze(),
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl BatchObjects {
    /// `recent_bytes`: how much of the objects written last to keep in memory (0: none).
    /// `prefetch_bytes`: how much a sequential reader loads ahead (0: none).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        root: Path,
        min_bytes: usize,
        direct: Option<DirectFolder>,
        recent_bytes: usize,
        prefetch_bytes: usize,
    ) -> Self {
        let started_id = now_ns();
        BatchObjects {
            store,
            root,
            min_bytes,
            direct,
            last_id: AtomicU64::new(started_id),
            started_id,
            recent: RecentObjects::new(recent_bytes),
            prefetch_bytes,
            prefetch_room: AtomicUsize::new(PREFETCHING_READERS * prefetch_bytes),
        }
    }

    /// Whether readers load objects ahead: on a remote store, where each read of an object
    /// waits on a request.
    pub(super) fn loads_ahead(&self) -> bool {
        self.prefetch_bytes > 0
    }

    /// Takes `bytes` of the room for loading ahead, if that much is left.
    fn reserve_prefetch(&self, bytes: usize) -> bool {
        self.prefetch_room
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |room| {
                room.checked_sub(bytes)
            })
            .is_ok()
    }

    fn release_prefetch(&self, bytes: usize) {
        self.prefetch_room.fetch_add(bytes, Ordering::AcqRel);
    }

    fn next_id(&self) -> u64 {
        let now = now_ns();
        let previous = self
            .last_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or_else(|last| last);
        now.max(previous + 1)
    }

    fn path(&self, topic_id: Uuid, partition: i32, id: u64) -> Path {
        self.root
            .clone()
            .join(topic_id.simple().to_string())
            .join(partition.to_string())
            .join(format!("{id:016x}"))
    }

    /// Writes `batches` to a new object; returns once it is durable.
    pub async fn write(
        &self,
        topic_id: Uuid,
        partition: i32,
        batches: &[Bytes],
    ) -> Result<WrittenObject, LogError> {
        let id = self.next_id();
        let mut positions = Vec::with_capacity(batches.len());
        let mut len = 0;
        for batch in batches {
            positions.push(len);
            len += batch.len() as u64;
        }
        let path = self.path(topic_id, partition, id);
        let lead = if self.recent.keeps(len as usize) {
            let mut whole = BytesMut::with_capacity(len as usize);
            for batch in batches {
                whole.extend_from_slice(batch);
            }
            let whole = whole.freeze();
            let lead = self.put(&path, std::slice::from_ref(&whole)).await?;
            self.recent.insert(id, lead, whole);
            lead
        } else {
            self.put(&path, batches).await?
        };
        for position in &mut positions {
            *position += lead;
        }
        let len = lead + len;
        Ok(WrittenObject {
            id,
            topic_id,
            partition,
            len,
            positions,
        })
    }

    /// Writes `parts`, one after the other, to a new object at `path`; returns once it is
    /// durable, with where in the object they start (past leading zeros, see
    /// [`DirectFolder::put`]).
    async fn put(&self, path: &Path, parts: &[Bytes]) -> Result<u64, LogError> {
        match &self.direct {
            Some(direct) => Ok(direct.put(path, parts).await?),
            None => {
                let payload: PutPayload = parts.iter().cloned().collect();
                self.store.put(path, payload).await?;
                Ok(0)
            }
        }
    }

    /// The span `range` asks for, base offsets set: copied from the object in memory when it
    /// is kept there, else read from the store.
    async fn span_for(
        &self,
        topic_id: Uuid,
        partition: i32,
        range: BatchRange,
    ) -> Result<Bytes, LogError> {
        let first_len = (range.end - range.start) as usize;
        match self.recent.get(range.object_id) {
            // Copied: the kept object stays as written.
            Some((lead, object))
                if lead + object.len() as u64 == range.object_len && lead <= range.start =>
            {
                let (start, end) = (
                    (range.start - lead) as usize,
                    (range.span_end - lead) as usize,
                );
                let mut span = BytesMut::from(&object[start..end]);
                set_base_offsets(&mut span, range.base_offset, first_len)?;
                Ok(span.freeze())
            }
            _ => {
                let path = self.path(topic_id, partition, range.object_id);
                self.load_span(
                    &path,
                    range.start..range.span_end,
                    range.base_offset,
                    first_len,
                )
                .await
            }
        }
    }

    /// Reads `range` of the object at `path` and sets the base offsets of the batches in
    /// it, the first at `base_offset`; the first must be `first_len` long.
    async fn load_span(
        &self,
        path: &Path,
        range: std::ops::Range<u64>,
        base_offset: i64,
        first_len: usize,
    ) -> Result<Bytes, LogError> {
        if let Some(direct) = &self.direct {
            let mut span = direct.get_range(path, range).await?;
            set_base_offsets(span.as_mut_slice(), base_offset, first_len)?;
            return Ok(span.freeze());
        }
        // Unique after a read from the store, so this takes the buffer over without copying.
        let mut span = BytesMut::from(self.store.get_range(path, range).await?);
        set_base_offsets(&mut span, base_offset, first_len)?;
        Ok(span.freeze())
    }

    /// Deletes an object; one already gone is not an error.
    pub async fn delete(&self, topic_id: Uuid, partition: i32, id: u64) -> Result<(), LogError> {
        self.recent.remove(id);
        match self.store.delete(&self.path(topic_id, partition, id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes objects no append refers to, in the background.
    fn discard(self: &Arc<Self>, objects: Vec<WrittenObject>) {
        if objects.is_empty() {
            return;
        }
        // Outside the runtime (shutting down) they are left to the next start's sweep.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let owner = self.clone();
        runtime.spawn(async move {
            for object in objects {
                if let Err(e) = owner
                    .delete(object.topic_id, object.partition, object.id)
                    .await
                {
                    tracing::warn!(error = %e, "cannot delete an unused batch object; the next start's sweep will");
                }
            }
        });
    }
}

/// Appends whose large batches are already written to batch objects, to be appended with
/// [`LogStore::append_staged`]. Writing objects is the slow part, so a connection's produce
/// requests stage side by side and append in order. Objects not appended by the time this
/// is dropped (a refused batch, a failed write, a cancelled request) are deleted.
pub struct StagedAppend {
    pub(super) appends: Vec<PartitionAppend>,
    /// One per append: the object its batches were written to, if they were.
    pub(super) objects: Vec<Option<WrittenObject>>,
    /// One per append: the keyed records of each of its batches, if its topic is indexed
    /// by message key (see [`LogStore::stage`]).
    pub(super) keys: Vec<Option<BatchKeys>>,
    pub(super) owner: Arc<BatchObjects>,
}

impl StagedAppend {
    /// Keeps the objects of appends that `appended` says were written; the rest are
    /// deleted when this is dropped.
    pub(super) fn keep_appended(&mut self, appended: impl Fn(usize) -> bool) {
        for (index, object) in self.objects.iter_mut().enumerate() {
            if appended(index) {
                object.take();
            }
        }
    }
}

impl Drop for StagedAppend {
    fn drop(&mut self) {
        let unused: Vec<WrittenObject> = self.objects.drain(..).flatten().collect();
        self.owner.discard(unused);
    }
}

impl LogStore {
    /// Writes each partition's batches of at least the store's threshold to a batch object,
    /// all at once. Reads the keyed records of batches whose topic is indexed by key first:
    /// here, outside the append lock and just after the produce checked the batches' CRCs,
    /// their bytes are still in the CPU's caches. Read at the append, the walk through
    /// 1 KiB records waited on memory for each record, 7-8% of the broker's samples
    /// producing keyless records (docs/performance.md).
    pub async fn stage(&self, appends: Vec<PartitionAppend>) -> Result<StagedAppend, LogError> {
        let keys = appends
            .iter()
            .map(|append| {
                let indexed = self
                    .topic_by_id(append.partition.topic_id)
                    .is_some_and(|topic| topic.policy.key_index);
                indexed.then(|| append.batches.iter().map(batch::keyed_records).collect())
            })
            .collect();
        let writes = appends.iter().map(|append| async move {
            let bytes: usize = append.batches.iter().map(Bytes::len).sum();
            if bytes < self.objects.min_bytes {
                return Ok(None);
            }
            let partition = &append.partition;
            self.objects
                .write(partition.topic_id, partition.index, &append.batches)
                .await
                .map(Some)
        });
        let written = futures::future::join_all(writes).await;
        let mut staged = StagedAppend {
            appends,
            keys,
            objects: Vec::with_capacity(written.len()),
            owner: self.objects.clone(),
        };
        let mut failure = None;
        for result in written {
            match result {
                Ok(object) => staged.objects.push(object),
                Err(e) => {
                    staged.objects.push(None);
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            // Dropping the staged append deletes the objects that were written.
            Some(e) => Err(e),
            None => Ok(staged),
        }
    }

    /// Deletes the batch objects registered in a segment (before it is drained).
    pub(super) async fn delete_segment_objects(&self, segment: u32) -> Result<(), LogError> {
        let mut scan = self
            .db
            .scan(prefix_range(&keys::batch_objects_prefix(segment)))
            .await?;
        let mut deleted = 0;
        while let Some(entry) = scan.next().await? {
            let (id, topic_id, partition) = keys::decode_batch_object(&entry.key, &entry.value)
                .ok_or_else(|| LogError::Corrupt("batch object registration".into()))?;
            self.objects.delete(topic_id, partition, id).await?;
            deleted += 1;
        }
        if deleted > 0 {
            tracing::info!(
                segment,
                objects = deleted,
                "deleted the segment's batch objects"
            );
        }
        Ok(())
    }

    /// Deletes batch objects written before this start that no segment registers: written
    /// just before a crash, for an append that never became durable. Returns how many.
    pub async fn sweep_orphan_objects(&self) -> Result<usize, LogError> {
        let objects = &self.objects;
        let mut listed: HashMap<Uuid, Vec<(i32, u64)>> = HashMap::new();
        let mut listing = objects.store.list(Some(&objects.root));
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let Some(parts) = meta.location.prefix_match(&objects.root) else {
                continue;
            };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            let [topic, partition, id] = parts.as_slice() else {
                continue;
            };
            let (Ok(topic_id), Ok(partition), Ok(id)) = (
                Uuid::parse_str(topic),
                partition.parse::<i32>(),
                u64::from_str_radix(id, 16),
            ) else {
                continue;
            };
            if id < objects.started_id {
                listed.entry(topic_id).or_default().push((partition, id));
            }
        }
        let mut swept = 0;
        for (topic_id, candidates) in listed {
            let segments = self.read_segments().of_topic(topic_id);
            let mut registered = HashSet::new();
            for segment in segments {
                let range = prefix_range(&keys::batch_objects_prefix(segment));
                let mut scan = self.db.scan(range).await?;
                while let Some(entry) = scan.next().await? {
                    if let Some((id, _, _)) = keys::decode_batch_object(&entry.key, &entry.value) {
                        registered.insert(id);
                    }
                }
            }
            for (partition, id) in candidates {
                if !registered.contains(&id) {
                    objects.delete(topic_id, partition, id).await?;
                    swept += 1;
                }
            }
        }
        if swept > 0 {
            tracing::info!(
                objects = swept,
                "deleted batch objects left by appends a crash interrupted"
            );
        }
        Ok(swept)
    }
}

/// Resolves stored batch values into batches, loading a span of an object once for all
/// the batches in it. One per reader: it keeps the span it loaded last, and the spans it
/// was told it will need next ([`ObjectReader::prefetch`]) load in the background.
pub(super) struct ObjectReader {
    objects: Arc<BatchObjects>,
    /// How much of an object to load at once (at least the batch needed), so a sequential
    /// read costs one request per span, not one per batch. Readers set it to what they
    /// read ahead anyway, which is also what they may hold.
    span_bytes: u64,
    span: Option<LoadedSpan>,
    /// Spans loading in the background, in the order the reader will ask for them.
    ahead: VecDeque<SpanLoad>,
}

/// Part of an object, base offsets set.
struct LoadedSpan {
    object_id: u64,
    start: u64,
    bytes: Bytes,
}

impl LoadedSpan {
    /// The batch `range` asks for, if this span holds it.
    fn batch(&self, range: &BatchRange) -> Option<Bytes> {
        let end = self.start + self.bytes.len() as u64;
        (self.object_id == range.object_id && self.start <= range.start && range.end <= end).then(
            || {
                let at = (range.start - self.start) as usize;
                self.bytes
                    .slice(at..at + (range.end - range.start) as usize)
            },
        )
    }
}

/// A span loading in the background.
struct SpanLoad {
    range: BatchRange,
    task: JoinHandle<Result<Bytes, LogError>>,
}

impl SpanLoad {
    fn covers(&self, range: &BatchRange) -> bool {
        self.range.object_id == range.object_id
            && self.range.start <= range.start
            && range.end <= self.range.span_end
    }
}

/// Where one batch lies in its object, and the span to load for it.
#[derive(Debug, Clone, Copy)]
struct BatchRange {
    object_id: u64,
    object_len: u64,
    /// The batch's bytes in the object.
    start: u64,
    end: u64,
    /// Where the span loaded for the batch ends: up to the reader's span size past its start.
    span_end: u64,
    base_offset: i64,
}

impl BatchRange {
    /// The bytes of the span loaded for the batch.
    fn span_bytes(&self) -> usize {
        (self.span_end - self.start) as usize
    }
}

impl ObjectReader {
    pub fn new(objects: Arc<BatchObjects>, span_bytes: usize) -> Self {
        ObjectReader {
            objects,
            span_bytes: span_bytes as u64,
            span: None,
            ahead: VecDeque::new(),
        }
    }

    /// Where the batch `location` points to lies, and the span to load for it.
    fn range(&self, location: BatchLocation) -> Result<BatchRange, LogError> {
        let header = BatchView::new(&location.header)
            .ok_or_else(|| LogError::Corrupt("batch location header".into()))?;
        let len = header.stored_len() as u64;
        let (start, end) = (location.position, location.position + len);
        if end > location.object_len {
            return Err(LogError::Corrupt("batch location past its object".into()));
        }
        Ok(BatchRange {
            object_id: location.object_id,
            object_len: location.object_len,
            start,
            end,
            span_end: location.object_len.min(start + len.max(self.span_bytes)),
            base_offset: header.base_offset(),
        })
    }

    /// The batch a stored value holds or points to, with its base offset set.
    pub async fn batch(
        &mut self,
        topic_id: Uuid,
        partition: i32,
        value: Bytes,
    ) -> Result<Bytes, LogError> {
        let location = match StoredBatch::decode(value) {
            Some(StoredBatch::Inline(batch)) => return Ok(batch),
            Some(StoredBatch::InObject(location)) => location,
            None => return Err(LogError::Corrupt("batch location".into())),
        };
        let range = self.range(location)?;
        if let Some(batch) = self.span.as_ref().and_then(|span| span.batch(&range)) {
            return Ok(batch);
        }
        let span = match self.take_ahead(&range) {
            Some(load) => LoadedSpan {
                object_id: range.object_id,
                start: load.range.start,
                bytes: load
                    .task
                    .await
                    .map_err(|e| LogError::ObjectFile(std::io::Error::other(e)))??,
            },
            None => LoadedSpan {
                object_id: range.object_id,
                start: range.start,
                bytes: self.objects.span_for(topic_id, partition, range).await?,
            },
        };
        let batch = span.batch(&range).ok_or_else(|| {
            LogError::Corrupt("a batch object is shorter than its location".into())
        })?;
        self.span = Some(span);
        Ok(batch)
    }

    /// Starts loading, in the background, the span the batch `value` points to, which the
    /// reader will ask for after the ones told before; unless a span loaded or loading
    /// already holds it, or the store loads nothing ahead. A value that does not decode is
    /// left for [`ObjectReader::batch`] to report. Returns false when the store had no room
    /// left for loading ahead, so the reader stops looking further for now.
    pub fn prefetch(&mut self, topic_id: Uuid, partition: i32, value: &Bytes) -> bool {
        if self.objects.prefetch_bytes == 0 {
            return true;
        }
        let Some(StoredBatch::InObject(location)) = StoredBatch::decode(value.clone()) else {
            return true;
        };
        let Ok(range) = self.range(location) else {
            return true;
        };
        let held = match self.ahead.back() {
            Some(load) => load.covers(&range),
            None => self
                .span
                .as_ref()
                .is_some_and(|s| s.batch(&range).is_some()),
        };
        if held {
            return true;
        }
        if !self.objects.reserve_prefetch(range.span_bytes()) {
            return false;
        }
        let objects = self.objects.clone();
        let task = tokio::spawn(async move { objects.span_for(topic_id, partition, range).await });
        self.ahead.push_back(SpanLoad { range, task });
        true
    }

    /// How many bytes the store loads ahead of sequential readers (0: none).
    pub fn prefetch_limit(&self) -> usize {
        self.objects.prefetch_bytes
    }

    /// Whether the spans loading ahead are fewer bytes than the store loads ahead.
    pub fn wants_prefetch(&self) -> bool {
        let loading: usize = self.ahead.iter().map(|load| load.range.span_bytes()).sum();
        loading < self.objects.prefetch_bytes
    }

    /// The span loading ahead that holds `range`. Those queued before it, which the reader
    /// went past, are dropped; when none holds it (it found no room when told), the queue
    /// stays for the batches after it.
    fn take_ahead(&mut self, range: &BatchRange) -> Option<SpanLoad> {
        let at = self.ahead.iter().position(|load| load.covers(range))?;
        for skipped in self.ahead.drain(..at).collect::<Vec<_>>() {
            skipped.task.abort();
            self.forget(&skipped);
        }
        let load = self.ahead.pop_front()?;
        self.forget(&load);
        Some(load)
    }

    /// Gives the room a load held back, once it leaves the queue.
    fn forget(&self, load: &SpanLoad) {
        self.objects.release_prefetch(load.range.span_bytes());
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        for load in std::mem::take(&mut self.ahead) {
            load.task.abort();
            self.forget(&load);
        }
    }
}

/// Sets the base offsets of the whole batches in `span`, the first at `base_offset` and each
/// next one after the previous one's records; checks the first is `first_len` long.
fn set_base_offsets(span: &mut [u8], base_offset: i64, first_len: usize) -> Result<(), LogError> {
    if BatchView::new(span).map(|v| v.stored_len()) != Some(first_len) {
        return Err(LogError::Corrupt(
            "a batch object does not match its location".into(),
        ));
    }
    let mut at = 0;
    let mut base = base_offset;
    while let Some(view) = span.get(at..).and_then(BatchView::new) {
        let len = view.stored_len();
        if len < HEADER_LEN || at + len > span.len() {
            break;
        }
        let count = i64::from(view.record_count());
        span[at..at + 8].copy_from_slice(&base.to_be_bytes());
        base += count;
        at += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::tests::encode_batch;
    use kafka_protocol::records::Compression;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn objects_hold_batches_as_received_and_readers_set_their_offsets() {
        let objects = BatchObjects::new(
            Arc::new(InMemory::new()),
            Path::from("shale/batches"),
            1,
            None,
            0,
            0,
        );
        batches_round_trip(Arc::new(objects)).await;
    }

    /// Objects in `dir` written and read with direct I/O; `None` where the file system
    /// refuses it (some FUSE file systems, tmpfs before Linux 6.6).
    fn direct_objects(dir: &std::path::Path) -> Option<Arc<BatchObjects>> {
        let Some(direct) = DirectFolder::probe(dir) else {
            eprintln!("skipped: the temp folder refuses direct I/O");
            return None;
        };
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap();
        Some(Arc::new(BatchObjects::new(
            Arc::new(store),
            Path::from("shale/batches"),
            1,
            Some(direct),
            0,
            0,
        )))
    }

    #[tokio::test]
    async fn objects_written_with_direct_io_read_back_as_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        if let Some(objects) = direct_objects(dir.path()) {
            batches_round_trip(objects).await;
        }
    }

    #[tokio::test]
    async fn a_large_batch_written_in_place_reads_back_wherever_it_lay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let Some(objects) = direct_objects(dir.path()) else {
            return;
        };
        let value = "v".repeat(1000);
        let batch = encode_batch(&vec![value.as_str(); 100], Compression::None);
        let topic_id = Uuid::new_v4();
        // The batch inside a larger request, at every kind of alignment in memory.
        // The last lead ends the batch on a block's end: no partial block after it.
        for lead in [0, 1, 100, 4095, (4096 - batch.len() % 4096) % 4096] {
            let mut request = vec![0xee; batch.len() + 2 * 4096];
            let at = (lead + 4096 - request.as_ptr() as usize % 4096) % 4096;
            request[at..at + batch.len()].copy_from_slice(&batch);
            let sent = Bytes::from(request).slice(at..at + batch.len());
            assert_eq!(
                sent.as_ptr() as usize % 4096,
                lead,
                "the request kept its memory"
            );
            assert_eq!(sent, batch);
            let object = objects
                .write(topic_id, 0, std::slice::from_ref(&sent))
                .await
                .unwrap();
            assert_eq!(object.positions, [lead as u64]);
            let path = objects.path(topic_id, 0, object.id);
            let file = std::fs::read(dir.path().join(path.as_ref())).unwrap();
            let end = lead + batch.len();
            assert_eq!(file.len(), end.div_ceil(4096) * 4096, "whole blocks");
            assert!(
                file[..lead].iter().all(|b| *b == 0),
                "zeros before the batch"
            );
            assert_eq!(&file[lead..end], &batch[..]);
            assert!(file[end..].iter().all(|b| *b == 0), "zeros after it");
            let stored = object.location(0, &sent, 77).encode();
            let read = ObjectReader::new(objects.clone(), 4 << 20)
                .batch(topic_id, 0, stored)
                .await
                .unwrap();
            assert_eq!(BatchView::new(&read).unwrap().base_offset(), 77);
            assert_eq!(&read[8..], &batch[8..]);
        }
    }

    /// Writes batches to an object, reads them back with their offsets set, deletes it.
    async fn batches_round_trip(objects: Arc<BatchObjects>) {
        let batches = vec![
            encode_batch(&["a", "b", "c"], Compression::None),
            encode_batch(&["d"], Compression::None),
            encode_batch(&["e", "f"], Compression::None),
        ];
        let topic_id = Uuid::new_v4();
        let object = objects.write(topic_id, 2, &batches).await.unwrap();
        assert_eq!(object.positions[0], 0);
        assert_eq!(
            object.len as usize,
            batches.iter().map(Bytes::len).sum::<usize>()
        );
        let mut reader = ObjectReader::new(objects.clone(), 4 << 20);
        let mut base = 40;
        for (index, batch) in batches.iter().enumerate() {
            let value = object.location(index, batch, base).encode();
            let read = reader.batch(topic_id, 2, value).await.unwrap();
            let view = BatchView::new(&read).unwrap();
            assert_eq!(view.base_offset(), base);
            assert_eq!(
                &read[8..],
                &batch[8..],
                "everything after the base offset as sent"
            );
            base += i64::from(view.record_count());
        }
        // A value that is a batch is returned as it is.
        let inline = encode_batch(&["x"], Compression::None);
        assert_eq!(
            reader.batch(topic_id, 2, inline.clone()).await.unwrap(),
            inline
        );
        objects.delete(topic_id, 2, object.id).await.unwrap();
        objects.delete(topic_id, 2, object.id).await.unwrap();
        let mut fresh = ObjectReader::new(objects, 4 << 20);
        let value = object.location(0, &batches[0], 40).encode();
        match fresh.batch(topic_id, 2, value).await {
            Err(LogError::Objects(object_store::Error::NotFound { .. })) => {}
            Err(LogError::ObjectFile(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => panic!("a deleted object is not found: {other:?}"),
        }
    }

    #[tokio::test]
    async fn recent_objects_are_read_from_memory_until_evicted_or_deleted() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let batch = encode_batch(&["a", "b"], Compression::None);
        // Room for two objects of this batch, not three.
        let objects = Arc::new(BatchObjects::new(
            store.clone(),
            Path::from("b"),
            1,
            None,
            2 * batch.len() + 1,
            0,
        ));
        let topic_id = Uuid::new_v4();
        let mut written = Vec::new();
        for _ in 0..3 {
            written.push(
                objects
                    .write(topic_id, 0, std::slice::from_ref(&batch))
                    .await
                    .unwrap(),
            );
        }
        // Take the objects out of the store behind the cache's back: only kept ones read.
        for object in &written {
            store
                .delete(&objects.path(topic_id, 0, object.id))
                .await
                .unwrap();
        }
        let read = |object: &WrittenObject, base| {
            let objects = objects.clone();
            let value = object.location(0, &batch, base).encode();
            async move {
                ObjectReader::new(objects, 4 << 20)
                    .batch(topic_id, 0, value)
                    .await
            }
        };
        assert!(
            read(&written[0], 0).await.is_err(),
            "the oldest was evicted"
        );
        for (object, base) in written[1..].iter().zip([10, 20]) {
            let got = read(object, base).await.unwrap();
            assert_eq!(BatchView::new(&got).unwrap().base_offset(), base);
            assert_eq!(&got[8..], &batch[8..]);
        }
        // Setting offsets copied the span: the kept object is still as written.
        assert_eq!(objects.recent.get(written[2].id), Some((0, batch.clone())));
        objects.delete(topic_id, 0, written[2].id).await.unwrap();
        assert!(
            read(&written[2], 30).await.is_err(),
            "deleted objects leave"
        );
        assert!(read(&written[1], 10).await.is_ok());
    }

    /// On a store where each read takes a round trip, the spans a reader is told it will
    /// need load at once, not one round trip each, within the room the store has for it.
    #[tokio::test(start_paused = true)]
    async fn spans_told_ahead_load_together_and_come_back_in_order() {
        use object_store::throttle::{ThrottleConfig, ThrottledStore};
        use tokio::time::{Duration, Instant};
        const ROUND_TRIP: Duration = Duration::from_millis(50);
        let config = ThrottleConfig {
            wait_get_per_call: ROUND_TRIP,
            ..ThrottleConfig::default()
        };
        let store: Arc<dyn ObjectStore> = Arc::new(ThrottledStore::new(InMemory::new(), config));
        let objects = Arc::new(BatchObjects::new(
            store.clone(),
            Path::from("b"),
            1,
            None,
            0,
            1 << 20,
        ));
        let topic_id = Uuid::new_v4();
        let mut values = Vec::new();
        for n in 0..8 {
            let batch = encode_batch(&[&format!("record {n}")], Compression::None);
            let object = objects
                .write(topic_id, 0, std::slice::from_ref(&batch))
                .await
                .unwrap();
            values.push(object.location(0, &batch, n).encode());
        }

        let mut reader = ObjectReader::new(objects.clone(), 64 << 10);
        let started = Instant::now();
        for value in &values {
            reader.prefetch(topic_id, 0, value);
        }
        for (n, value) in values.iter().enumerate() {
            let batch = reader.batch(topic_id, 0, value.clone()).await.unwrap();
            assert_eq!(BatchView::new(&batch).unwrap().base_offset(), n as i64);
        }
        assert!(
            started.elapsed() < 2 * ROUND_TRIP,
            "eight objects in one round trip, not {:?}",
            started.elapsed()
        );

        // Room for two spans ahead: a third is not loaded ahead, and the reader is told to
        // stop looking; every batch still comes back in order, and the room comes back.
        let span = BatchView::new(&reader_batch(&objects, topic_id, &values[0]).await)
            .unwrap()
            .stored_len();
        let tight = Arc::new(BatchObjects::new(
            store,
            Path::from("b"),
            1,
            None,
            0,
            (2 * span).div_ceil(PREFETCHING_READERS),
        ));
        let full_room = tight.prefetch_room.load(Ordering::Acquire);
        assert!((2 * span..3 * span).contains(&full_room));
        let mut reader = ObjectReader::new(tight.clone(), 64 << 10);
        assert!(reader.prefetch(topic_id, 0, &values[0]));
        assert!(reader.prefetch(topic_id, 0, &values[1]));
        assert!(
            !reader.prefetch(topic_id, 0, &values[2]),
            "no room for a third"
        );
        for (n, value) in values.iter().enumerate() {
            let batch = reader.batch(topic_id, 0, value.clone()).await.unwrap();
            assert_eq!(BatchView::new(&batch).unwrap().base_offset(), n as i64);
        }
        assert_eq!(tight.prefetch_room.load(Ordering::Acquire), full_room);

        // A reader dropped with loads under way gives their room back.
        let mut reader = ObjectReader::new(tight.clone(), 64 << 10);
        assert!(reader.prefetch(topic_id, 0, &values[0]));
        drop(reader);
        assert_eq!(tight.prefetch_room.load(Ordering::Acquire), full_room);
    }

    async fn reader_batch(objects: &Arc<BatchObjects>, topic_id: Uuid, value: &Bytes) -> Bytes {
        ObjectReader::new(objects.clone(), 0)
            .batch(topic_id, 0, value.clone())
            .await
            .unwrap()
    }

    #[test]
    fn object_ids_increase_even_within_one_clock_tick() {
        let objects = BatchObjects::new(
            Arc::new(InMemory::new()),
            Path::from("b"),
            1,
            None,
            0,
            1 << 20,
        );
        let ids: Vec<u64> = (0..1000).map(|_| objects.next_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids[0] > objects.started_id);
    }
}
