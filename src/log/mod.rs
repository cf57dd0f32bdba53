//! Key logs: topics, partitions, offsets, the global sequence, and tail notification.
//!
//! Every topic-partition is a key log in SlateDB: record batches stored as received with
//! their `baseOffset` set, dense offsets per partition, and a global sequence number giving
//! every appended record a place in one order across all partitions. This module owns the
//! stored data's meaning; it knows nothing of the Kafka wire protocol or of topic configs.

pub mod batch;
mod batch_objects;
mod compaction;
mod credentials;
mod decode;
mod durability;
pub mod groups;
mod partition;
pub mod producers;
mod read;
mod read_ahead;
pub mod retention;
mod segments;
pub mod streams;
mod topic;
pub mod transactions;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use slatedb::config::ScanOptions;
use slatedb::{CloseReason, Db, IterationOrder, WriteBatch};
use tokio::sync::{oneshot, Mutex};
use uuid::Uuid;

pub use batch_objects::StagedAppend;
pub use durability::PendingWrite;
pub use partition::{PartitionLog, PartitionOffsets};
pub use read::{FetchedRecords, Isolation};
pub use topic::{Topic, TopicDefaults};

use crate::storage::keys::{
    self, AbortedTxn, BatchKey, IndexedRecord, KeyIndexEntry, SequenceEntry,
};
use batch::{BatchKeys, BatchView, KeyedRecord};
use batch_objects::{BatchObjects, WrittenObject};
use durability::{DurabilityQueue, WalFlusher};
use partition::{PartitionState, TxnEvent};
use producers::{ProducerEntry, SequenceCheck, SequenceError, SequencedBatch};
use read_ahead::ReadAhead;
use segments::{SegmentRecord, Segments};
use topic::TopicRecord;

/// Bytes of chunks read ahead for catching-up consumers, held at once over all partitions.
const READ_AHEAD_BUDGET: usize = 64 << 20;

/// The first segment that holds record data (segment 0 holds metadata).
const FIRST_DATA_SEGMENT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("offset {offset} is outside the log [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        high_watermark: i64,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store closed before the write was durable")]
    NotDurable,
    #[error("the key's version is {current}, not the expected one")]
    VersionConflict { current: u64 },
    #[error("storage: {0}")]
    Storage(#[from] slatedb::Error),
    #[error("batch objects: {0}")]
    Objects(#[from] object_store::Error),
    #[error("batch object file: {0}")]
    ObjectFile(#[from] std::io::Error),
}

#[derive(Default)]
struct Catalog {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

impl Catalog {
    fn insert(&mut self, topic: Arc<Topic>) {
        self.by_id.insert(topic.id, topic.clone());
        self.by_name.insert(topic.name.clone(), topic);
    }
}

/// What the append lock protects: the order in which offsets and sequences are handed out
/// must be the order in which SlateDB receives the writes.
struct AppendState {
    next_sequence: u64,
}

/// Batches to append to one partition.
pub struct PartitionAppend {
    pub partition: Arc<PartitionLog>,
    /// Validated magic-v2 batches (see [`batch::split_and_validate`]).
    pub batches: Vec<Bytes>,
}

/// An append that happens only if a message key's version (its record count in the
/// topic) is `expected` (`None`: any version).
pub(crate) struct KeyCondition {
    pub topic_id: Uuid,
    pub key: Bytes,
    pub expected: Option<u64>,
}

/// A transaction marker to write on one partition (see [`LogStore::end_transaction`]).
#[derive(Debug, Clone, Copy)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
}

/// What happened to one [`PartitionAppend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended {
        base_offset: i64,
    },
    /// An idempotent producer's retry of batches already written at `base_offset..=last_offset`;
    /// nothing was written again.
    Duplicate {
        base_offset: i64,
        last_offset: i64,
    },
    /// An idempotent producer's batch that breaks its sequence or epoch; nothing was written.
    Refused(SequenceError),
    /// A batch whose records could not be read to index their keys (malformed, or
    /// decompressing past [`decode::MAX_DECOMPRESSED_BYTES`]); nothing was written.
    Unreadable(String),
}

/// The outcome of [`LogStore::append`]: what happened to each partition, and a way to wait
/// until the appended records are durable (and therefore visible to consumers).
pub struct AppendReceipt {
    /// One outcome per [`PartitionAppend`], in order.
    pub outcomes: Vec<AppendOutcome>,
    durable: oneshot::Receiver<()>,
}

impl AppendReceipt {
    pub async fn durable(self) -> Result<(), LogError> {
        self.durable.await.map_err(|_| LogError::NotDurable)
    }
}

/// All key logs of one broker, backed by one SlateDB database.
pub struct LogStore {
    db: Db,
    cluster_id: String,
    /// Every topic's chain of segments. Changed by appends (rolls) under the append lock
    /// and by retention; never held across an await.
    segments: RwLock<Segments>,
    /// Drains dropped segments (see `retention`).
    admin: slatedb::admin::Admin,
    defaults: TopicDefaults,
    /// Serialises changes to partitions' stored log start offsets.
    start_offsets: Mutex<()>,
    /// Segments whose drain was submitted, with when, so they are not resubmitted at once.
    draining: std::sync::Mutex<HashMap<u32, i64>>,
    catalog: RwLock<Catalog>,
    /// Serialises topic creation, deletion and changes.
    catalog_changes: Mutex<()>,
    append: Mutex<AppendState>,
    /// The last producer id handed out; ids are never reused, even across restarts.
    last_producer_id: Mutex<i64>,
    durability: Arc<DurabilityQueue>,
    wal_flusher: WalFlusher,
    read_ahead: ReadAhead,
    objects: Arc<BatchObjects>,
    follower: std::sync::Mutex<Option<tokio::task::JoinHandle<Option<CloseReason>>>>,
}

impl LogStore {
    /// Loads topics and the global sequence from an opened database.
    pub async fn open(
        store: crate::storage::OpenedStore,
        defaults: TopicDefaults,
    ) -> Result<Arc<Self>, LogError> {
        let crate::storage::OpenedStore {
            db,
            admin,
            objects,
            objects_root,
            recent_objects_bytes,
            object_min_bytes,
            object_prefetch_bytes,
            direct,
        } = store;
        let cluster_id = match db.get(keys::cluster_id_key()).await? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = Uuid::new_v4().simple().to_string();
                let written = db.put(keys::cluster_id_key(), id.as_bytes()).await?;
                // A first start should not wait for the flush tick.
                db.flush().await?;
                written.await_durable().await?;
                id
            }
        };
        let mut records = Vec::new();
        let mut scan = db
            .scan(read::prefix_range(&keys::segment_record_prefix()))
            .await?;
        while let Some(entry) = scan.next().await? {
            let id = keys::decode_segment_key(&entry.key)
                .ok_or_else(|| LogError::Corrupt("segment key".into()))?;
            let record: SegmentRecord = serde_json::from_slice(&entry.value)
                .map_err(|e| LogError::Corrupt(format!("segment {id}: {e}")))?;
            records.push((id, record));
        }
        let segments = Segments::load(records, FIRST_DATA_SEGMENT);
        let mut catalog = Catalog::default();
        let mut scan = db.scan(read::prefix_range(&keys::topic_prefix())).await?;
        while let Some(entry) = scan.next().await? {
            let record: TopicRecord = serde_json::from_slice(&entry.value)
                .map_err(|e| LogError::Corrupt(format!("topic record: {e}")))?;
            catalog.insert(Arc::new(Topic::from_record(record, &defaults)));
        }
        let next_sequence = next_global_sequence(&db, &segments.all()).await?;
        let last_producer_id = match db.get(keys::producer_ids_key()).await? {
            Some(value) => i64::from_be_bytes(
                value
                    .as_ref()
                    .try_into()
                    .map_err(|_| LogError::Corrupt("producer id counter".into()))?,
            ),
            None => -1,
        };
        let durability = Arc::new(DurabilityQueue::default());
        let follower = tokio::spawn(durability::follow(db.subscribe(), durability.clone()));
        let wal_flusher = WalFlusher::spawn(db.clone());
        let store = Arc::new(LogStore {
            db,
            cluster_id,
            segments: RwLock::new(segments),
            admin,
            defaults,
            draining: std::sync::Mutex::new(HashMap::new()),
            start_offsets: Mutex::new(()),
            catalog: RwLock::new(catalog),
            catalog_changes: Mutex::new(()),
            append: Mutex::new(AppendState { next_sequence }),
            last_producer_id: Mutex::new(last_producer_id),
            durability,
            wal_flusher,
            read_ahead: ReadAhead::new(READ_AHEAD_BUDGET),
            objects: Arc::new(BatchObjects::new(
                objects,
                objects_root,
                object_min_bytes,
                direct,
                recent_objects_bytes,
                object_prefetch_bytes,
            )),
            follower: std::sync::Mutex::new(Some(follower)),
        });
        let sweeper = Arc::downgrade(&store);
        tokio::spawn(async move {
            let Some(store) = sweeper.upgrade() else {
                return;
            };
            if let Err(e) = store.sweep_orphan_objects().await {
                tracing::warn!(error = %e, "sweeping unused batch objects failed; the next start retries");
            }
        });
        Ok(store)
    }

    /// Resolves when the database closes under the broker (fenced by another broker, or a
    /// failed background task), with the reason. Only one caller may wait for this.
    pub async fn closed(&self) -> Option<CloseReason> {
        let follower = self.follower.lock().ok().and_then(|mut f| f.take());
        match follower {
            Some(task) => task.await.ok().flatten(),
            None => std::future::pending().await,
        }
    }

    /// Makes everything written durable and closes the database.
    pub async fn close(&self) -> Result<(), LogError> {
        self.db.flush().await?;
        self.db.close().await?;
        Ok(())
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    fn read_segments(&self) -> std::sync::RwLockReadGuard<'_, Segments> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_segments(&self) -> std::sync::RwLockWriteGuard<'_, Segments> {
        self.segments.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_catalog(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker's defaults for topic configs a topic does not set.
    pub fn topic_defaults(&self) -> &TopicDefaults {
        &self.defaults
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.read_catalog().by_name.get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.read_catalog().by_id.get(&id).cloned()
    }

    /// All topics, sorted by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut topics: Vec<_> = self.read_catalog().by_name.values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    async fn store_topic(&self, topic: &Topic) -> Result<(), LogError> {
        let record = serde_json::to_vec(&topic.to_record())
            .map_err(|e| LogError::Corrupt(format!("topic record: {e}")))?;
        let written = self.db.put(keys::topic_key(&topic.name), record).await?;
        self.pending_write(written).durable().await
    }

    /// Creates a topic durably. Names and configs must already be validated.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, LogError> {
        let _change = self.catalog_changes.lock().await;
        if self.topic(name).is_some() {
            return Err(LogError::TopicExists(name.to_string()));
        }
        let topic = Arc::new(Topic::from_record(
            TopicRecord {
                name: name.to_string(),
                id: Uuid::new_v4(),
                partitions,
                configs,
            },
            &self.defaults,
        ));
        self.store_topic(&topic).await?;
        self.write_catalog().insert(topic.clone());
        Ok(topic)
    }

    /// Deletes a topic durably. Its records can never be read again (keys carry the topic
    /// id); the next retention pass drops and drains its segments.
    pub async fn delete_topic(&self, name: &str) -> Result<Arc<Topic>, LogError> {
        let _change = self.catalog_changes.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        let written = self.db.delete(keys::topic_key(name)).await?;
        self.pending_write(written).durable().await?;
        let mut catalog = self.write_catalog();
        catalog.by_name.remove(name);
        catalog.by_id.remove(&topic.id);
        Ok(topic)
    }

    /// Changes a topic's partition count and configs durably. `change` sees the current
    /// topic under the catalog lock (so concurrent changes cannot overwrite each other) and
    /// returns the new partition count, which may only grow, and the new configs.
    pub async fn update_topic<E: From<LogError>>(
        &self,
        name: &str,
        change: impl FnOnce(&Topic) -> Result<(u32, BTreeMap<String, String>), E>,
    ) -> Result<Arc<Topic>, E> {
        let _change = self.catalog_changes.lock().await;
        let current = self
            .topic(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        let (partitions, configs) = change(&current)?;
        let mut logs = current.partitions.clone();
        for index in logs.len() as i32..partitions as i32 {
            logs.push(Arc::new(PartitionLog::new(current.id, index)));
        }
        let policy = topic::TopicPolicy::from_configs(&configs, &self.defaults);
        let topic = Arc::new(Topic {
            name: current.name.clone(),
            id: current.id,
            partitions: logs,
            configs,
            policy,
        });
        self.store_topic(&topic).await?;
        self.write_catalog().insert(topic.clone());
        Ok(topic)
    }

    /// A new producer id, durably recorded as used.
    pub async fn allocate_producer_id(&self) -> Result<i64, LogError> {
        let mut last = self.last_producer_id.lock().await;
        let id = *last + 1;
        let written = self
            .db
            .put(keys::producer_ids_key(), id.to_be_bytes())
            .await?;
        self.pending_write(written).durable().await?;
        *last = id;
        Ok(id)
    }

    /// Whether `producer_id` was handed out by this store.
    pub async fn issued_producer_id(&self, producer_id: i64) -> bool {
        (0..=*self.last_producer_id.lock().await).contains(&producer_id)
    }

    /// Loads a partition's offsets on first use.
    async fn state<'a>(&self, partition: &'a PartitionLog) -> Result<&'a PartitionState, LogError> {
        partition
            .state
            .get_or_try_init(|| self.recover_partition(partition))
            .await
    }

    pub async fn offsets(&self, partition: &PartitionLog) -> Result<PartitionOffsets, LogError> {
        let state = self.state(partition).await?;
        Ok(PartitionOffsets {
            log_start_offset: state.log_start_offset(),
            high_watermark: state.high_watermark(),
            last_stable_offset: state.last_stable_offset(),
        })
    }

    /// DeleteRecords: moves a partition's log start offset to `offset` (-1: the high
    /// watermark) at once; the records below go when retention drops their segments.
    /// Returns the new log start offset.
    pub async fn delete_records(
        &self,
        partition: &PartitionLog,
        offset: i64,
    ) -> Result<i64, LogError> {
        let _starts = self.start_offsets.lock().await;
        let state = self.state(partition).await?;
        let high_watermark = state.high_watermark();
        let target = if offset == -1 { high_watermark } else { offset };
        if target < 0 || target > high_watermark {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: state.log_start_offset(),
                high_watermark,
            });
        }
        if target > state.log_start_offset() {
            let written = self
                .db
                .put(
                    keys::partition_start_key(partition.topic_id, partition.index),
                    target.to_be_bytes(),
                )
                .await?;
            self.pending_write(written).durable().await?;
            state.advance_log_start(target);
        }
        Ok(state.log_start_offset())
    }

    /// A partition's stored size in bytes (see `Segments::partition_bytes`).
    pub fn partition_bytes(&self, partition: &PartitionLog) -> u64 {
        self.read_segments()
            .partition_bytes(partition.topic_id, partition.index)
    }

    /// The producers with state on a partition, by producer id.
    pub async fn producers(
        &self,
        partition: &PartitionLog,
    ) -> Result<Vec<(i64, ProducerEntry)>, LogError> {
        let state = self.state(partition).await?;
        let mut producers: Vec<_> = state
            .producers()
            .iter()
            .map(|(id, entry)| (*id, entry.clone()))
            .collect();
        producers.sort_by_key(|(id, _)| *id);
        Ok(producers)
    }

    /// A receiver that changes whenever the partition's high watermark moves: how a
    /// waiting fetch follows the tail.
    pub async fn watch_high_watermark(
        &self,
        partition: &PartitionLog,
    ) -> Result<tokio::sync::watch::Receiver<i64>, LogError> {
        Ok(self.state(partition).await?.high_watermark.subscribe())
    }

    /// Appends batches to partitions in one SlateDB write: offsets are assigned densely, each
    /// record gets a global sequence number, idempotent producers' sequence numbers are
    /// checked, and nothing is visible to fetches until the write is durable (see
    /// [`AppendReceipt::durable`]). Each partition may appear at most once in `appends`.
    pub async fn append(&self, appends: Vec<PartitionAppend>) -> Result<AppendReceipt, LogError> {
        let staged = self.stage(appends).await?;
        self.append_staged(staged).await
    }

    /// [`LogStore::append`] of appends [`LogStore::stage`] prepared.
    pub async fn append_staged(&self, mut staged: StagedAppend) -> Result<AppendReceipt, LogError> {
        let writes: Vec<PartitionWrite> = std::mem::take(&mut staged.appends)
            .into_iter()
            .zip(std::mem::take(&mut staged.objects))
            .zip(std::mem::take(&mut staged.keys))
            .map(|((append, object), keys)| PartitionWrite {
                append,
                marker: None,
                object,
                keys,
            })
            .collect();
        let written = self.append_with(&writes, Vec::new(), None).await;
        // Objects not referenced (refused batches, a failed write) go back to `staged`,
        // which deletes them when dropped.
        staged.objects = writes.into_iter().map(|w| w.object).collect();
        let (receipt, _) = written?;
        staged.keep_appended(|index| {
            matches!(receipt.outcomes[index], AppendOutcome::Appended { .. })
        });
        Ok(receipt)
    }

    /// Appends one partition's batch (of one keyed record) if the key's version matches;
    /// returns the receipt and the key's version after the append.
    async fn append_if(
        &self,
        append: PartitionAppend,
        condition: KeyCondition,
    ) -> Result<(AppendReceipt, u64), LogError> {
        let write = PartitionWrite {
            append,
            marker: None,
            object: None,
            keys: None,
        };
        let (receipt, version) = self
            .append_with(&[write], Vec::new(), Some(condition))
            .await?;
        Ok((receipt, version.unwrap_or_default()))
    }

    /// Ends a producer's transaction in one atomic write: a marker on every partition, and
    /// `metadata` (the transaction's new record, its offsets on commit) beside them. A crash
    /// leaves the transaction either wholly decided or still open, never half-marked.
    async fn end_transaction(
        &self,
        partitions: Vec<Arc<PartitionLog>>,
        marker: TxnMarker,
        metadata: Vec<(Bytes, Bytes)>,
    ) -> Result<AppendReceipt, LogError> {
        let writes: Vec<PartitionWrite> = partitions
            .into_iter()
            .map(|partition| PartitionWrite {
                append: PartitionAppend {
                    partition,
                    batches: Vec::new(),
                },
                marker: Some(marker),
                object: None,
                keys: None,
            })
            .collect();
        Ok(self.append_with(&writes, metadata, None).await?.0)
    }

    async fn append_with(
        &self,
        appends: &[PartitionWrite],
        metadata: Vec<(Bytes, Bytes)>,
        condition: Option<KeyCondition>,
    ) -> Result<(AppendReceipt, Option<u64>), LogError> {
        debug_assert!(
            appends.iter().enumerate().all(|(i, a)| appends[..i]
                .iter()
                .all(|b| !Arc::ptr_eq(&a.append.partition, &b.append.partition))),
            "a partition appended twice in one write would get overlapping offsets"
        );
        let mut states = Vec::with_capacity(appends.len());
        for write in appends {
            states.push(self.state(&write.append.partition).await?);
        }
        let mut guard = self.append.lock().await;
        // Every earlier append is in SlateDB's memtable by now, so the count is exact.
        let version = match &condition {
            Some(condition) => {
                let current = match self.topic_by_id(condition.topic_id) {
                    Some(topic) => self.key_version(&topic, &condition.key).await?,
                    None => 0,
                };
                if condition.expected.is_some_and(|e| e != current) {
                    return Err(LogError::VersionConflict { current });
                }
                Some(current + 1)
            }
            None => None,
        };
        let mut write = WriteBatch::new();
        let SegmentPlan {
            targets,
            rolled,
            indexed,
            now_ms,
        } = self.plan_segments(appends, &mut write);
        for (key, value) in metadata.iter() {
            write.put(key, value);
        }
        let mut sequence = guard.next_sequence;
        let mut outcomes = Vec::with_capacity(appends.len());
        let mut advances = Vec::with_capacity(appends.len());
        let mut producer_changes = Vec::new();
        for (partition_write, state) in appends.iter().zip(&states) {
            let append = &partition_write.append;
            let segment = targets[&append.partition.topic_id];
            let base_offset = state.next_offset.load(Ordering::Acquire);
            let planned = match partition_write.marker {
                Some(marker) => {
                    let at = PlanAt {
                        segment,
                        base_offset,
                        first_sequence: sequence,
                        key_copy_max_bytes: None,
                        now_ms,
                    };
                    plan_marker(append, marker, state, at)
                }
                None => {
                    let at = PlanAt {
                        segment,
                        base_offset,
                        first_sequence: sequence,
                        key_copy_max_bytes: indexed.get(&append.partition.topic_id).copied(),
                        now_ms,
                    };
                    plan_partition(partition_write, state, at)?
                }
            };
            match planned {
                Planned::Write {
                    puts,
                    next_offset,
                    next_sequence,
                    producers,
                    txn_events,
                } => {
                    for (key, value) in puts {
                        write.put(key, value);
                    }
                    for (producer_id, entry) in &producers {
                        let key = keys::producer_state_key(
                            append.partition.topic_id,
                            append.partition.index,
                            *producer_id,
                        );
                        write.put(key, entry.encode());
                    }
                    sequence = next_sequence;
                    outcomes.push(AppendOutcome::Appended { base_offset });
                    advances.push((append.partition.clone(), next_offset));
                    producer_changes.push((*state, producers, txn_events));
                }
                Planned::Skip(outcome) => outcomes.push(outcome),
            }
        }
        if advances.is_empty() && metadata.is_empty() {
            let (done, durable) = oneshot::channel();
            let _ = done.send(());
            return Ok((AppendReceipt { outcomes, durable }, version));
        }
        let appended: Vec<(Uuid, i32, u64)> = appends
            .iter()
            .map(|w| {
                let a = &w.append;
                let bytes = a.batches.iter().map(|b| b.len() as u64).sum();
                (a.partition.topic_id, a.partition.index, bytes)
            })
            .collect();
        let handle = self.db.write(write).await?;
        {
            let mut segments = self.write_segments();
            for (topic_id, id, record) in rolled {
                segments.push(topic_id, id, record);
            }
            for (topic_id, partition, bytes) in appended {
                segments.add_appended(topic_id, targets[&topic_id], partition, bytes);
            }
        }
        guard.next_sequence = sequence;
        for ((_, next_offset), (state, producers, txn_events)) in
            advances.iter().zip(producer_changes)
        {
            state.next_offset.store(*next_offset, Ordering::Release);
            state.producers().extend(producers);
            state.apply_txn_events(&txn_events);
        }
        let durable = self.durability.push(handle.seqnum(), advances);
        self.wal_flusher.request();
        drop(guard);
        // The write may have become durable before it was queued.
        self.durability.release(self.db.status().durable_seq);
        Ok((AppendReceipt { outcomes, durable }, version))
    }

    /// The segment each topic in an append writes to, rolling to a new one (recorded in
    /// `write`, so it exists exactly when the records do) where the active one is full or
    /// old. Called under the append lock. Returns the targets and the segments rolled to.
    fn plan_segments(&self, appends: &[PartitionWrite], write: &mut WriteBatch) -> SegmentPlan {
        let now = now_ms();
        let segments = self.read_segments();
        let mut targets = HashMap::new();
        let mut rolled = Vec::new();
        let mut indexed = HashMap::new();
        for partition_write in appends {
            let topic_id = partition_write.append.partition.topic_id;
            if targets.contains_key(&topic_id) {
                continue;
            }
            let roll = match self.topic_by_id(topic_id) {
                Some(topic) => {
                    if topic.policy.key_index {
                        indexed.insert(topic_id, topic.policy.key_copy_max_bytes);
                    }
                    topic.policy.roll
                }
                None => self.defaults.roll(),
            };
            if let Some(id) = segments.active(topic_id, &roll, now) {
                targets.insert(topic_id, id);
                continue;
            }
            if let Some(previous) = segments.chains.get(&topic_id).and_then(|c| c.last()) {
                if !previous.record.sealed {
                    let sealed = SegmentRecord {
                        sealed: true,
                        ..previous.record.clone()
                    };
                    write.put(keys::segment_key(previous.id), segments::encode(&sealed));
                }
            }
            let id = segments.next_id + rolled.len() as u32;
            let record = SegmentRecord {
                topic_id: Some(topic_id),
                created_ms: now,
                sealed: false,
                stats: None,
            };
            write.put(keys::segment_key(id), segments::encode(&record));
            targets.insert(topic_id, id);
            rolled.push((topic_id, id, record));
        }
        SegmentPlan {
            targets,
            rolled,
            indexed,
            now_ms: now,
        }
    }

    fn scan_options(read_ahead_bytes: usize, order: IterationOrder) -> ScanOptions {
        ScanOptions {
            read_ahead_bytes,
            max_fetch_tasks: 4,
            cache_blocks: true,
            order,
            ..ScanOptions::default()
        }
    }
}

/// One partition's part in a write: batches (in a batch object when they were staged into
/// one), or a transaction marker.
struct PartitionWrite {
    append: PartitionAppend,
    marker: Option<TxnMarker>,
    object: Option<WrittenObject>,
    /// The keyed records of each batch, when [`LogStore::stage`] read them; else they are
    /// read at the append, if the topic is indexed by key.
    keys: Option<BatchKeys>,
}

/// Where a partition's batches go in an append.
struct PlanAt {
    segment: u32,
    base_offset: i64,
    first_sequence: u64,
    /// For topics indexed by message key: the size up to which a record is copied into
    /// its index entry.
    key_copy_max_bytes: Option<usize>,
    /// The broker's clock for this append.
    now_ms: i64,
}

/// Where an append's records go: each topic's segment, and the segments rolled to.
struct SegmentPlan {
    targets: HashMap<Uuid, u32>,
    rolled: Vec<(Uuid, u32, SegmentRecord)>,
    /// Topics whose records are indexed by message key, with the size up to which a record
    /// is copied into its index entry.
    indexed: HashMap<Uuid, usize>,
    /// The broker's clock when the append was planned.
    now_ms: i64,
}

/// How one partition's batches fit into an append.
enum Planned {
    Write {
        puts: Vec<(Bytes, Bytes)>,
        next_offset: i64,
        next_sequence: u64,
        /// Producer states after the write, to store with it.
        producers: Vec<(i64, ProducerEntry)>,
        txn_events: Vec<TxnEvent>,
    },
    Skip(AppendOutcome),
}

/// Where a batch's key-index entries go.
struct IndexAt {
    segment: u32,
    topic_id: Uuid,
    partition: i32,
    /// The batch's first global sequence: record `i` has `first_sequence + i`.
    first_sequence: u64,
    /// Records whose value and headers fit are copied into their entries.
    copy_max_bytes: usize,
}

/// Adds a key-index entry for every one of `records`, the keyed records of `batch`, whose
/// first record gets `base_offset`. The batch is read as received: its own base offset
/// field is not used, so a batch going to an object is indexed without a copy to set it.
fn index_record_keys(
    batch: &Bytes,
    records: &[KeyedRecord],
    base_offset: i64,
    at: &IndexAt,
    puts: &mut Vec<(Bytes, Bytes)>,
) {
    let Some(view) = BatchView::new(batch) else {
        return;
    };
    let transactional_producer = view.is_transactional().then(|| view.producer_id());
    for record in records {
        let size = record.value.as_ref().map_or(0, Bytes::len)
            + record
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>();
        let entry = KeyIndexEntry {
            segment: at.segment,
            sequence: at.first_sequence + record.offset_delta as u64,
            partition: at.partition,
            offset: base_offset + record.offset_delta,
            batch_last_offset: base_offset + i64::from(view.last_offset_delta()),
            transactional_producer,
            record: (size <= at.copy_max_bytes).then(|| IndexedRecord {
                timestamp: record.timestamp,
                value: record.value.clone(),
                headers: record.headers.clone(),
            }),
        };
        puts.push(entry.encode(at.topic_id, &record.key));
    }
}

/// Places a transaction marker at `offset`: it closes the producer's open transaction on
/// the partition and, for an abort, records it for read_committed fetches.
fn plan_marker(
    append: &PartitionAppend,
    marker: TxnMarker,
    state: &PartitionState,
    at: PlanAt,
) -> Planned {
    let PlanAt {
        segment,
        base_offset: offset,
        first_sequence: sequence,
        now_ms,
        ..
    } = at;
    let topic_id = append.partition.topic_id;
    let partition = append.partition.index;
    let producer_id = marker.producer_id;
    let current = state.producers().get(&producer_id).cloned();
    let first_offset = current.as_ref().and_then(|e| e.txn_first_offset);
    let entry = producers::end_transaction(current.as_ref(), marker.producer_epoch, now_ms);
    let batch = batch::control_batch(producer_id, marker.producer_epoch, marker.commit, now_ms);
    let key = BatchKey {
        segment,
        topic_id,
        partition,
        last_offset: offset,
    };
    let mut puts = vec![(key.encode(), batch::with_base_offset(&batch, offset))];
    let entry_key = SequenceEntry {
        topic_id,
        partition,
        base_offset: offset,
        record_count: 1,
    };
    puts.push((keys::sequence_key(segment, sequence), entry_key.encode()));
    let aborted = first_offset
        .filter(|_| !marker.commit)
        .map(|first_offset| AbortedTxn {
            producer_id,
            first_offset,
            marker_offset: offset,
        });
    if let Some(aborted) = aborted {
        puts.push(aborted.encode(segment, topic_id, partition));
    }
    Planned::Write {
        puts,
        next_offset: offset + 1,
        next_sequence: sequence + 1,
        producers: vec![(producer_id, entry)],
        txn_events: vec![TxnEvent::Ended {
            producer_id,
            marker_offset: offset,
            aborted,
        }],
    }
}

/// Wall-clock milliseconds since the Unix epoch, as Kafka timestamps are.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Assigns offsets and global sequences to a partition's batches and checks idempotent
/// producers' sequence numbers, without changing anything yet.
fn plan_partition(
    write: &PartitionWrite,
    state: &PartitionState,
    at: PlanAt,
) -> Result<Planned, LogError> {
    let (append, object) = (&write.append, write.object.as_ref());
    let PlanAt {
        segment,
        base_offset,
        first_sequence,
        key_copy_max_bytes,
        now_ms,
    } = at;
    let topic_id = append.partition.topic_id;
    let partition = append.partition.index;
    let mut puts = Vec::with_capacity(append.batches.len() * 2);
    let mut producers: Vec<(i64, ProducerEntry)> = Vec::new();
    let mut txn_events = Vec::new();
    let mut next_offset = base_offset;
    let mut sequence = first_sequence;
    for (index, batch) in append.batches.iter().enumerate() {
        let view = BatchView::new(batch)
            .filter(|view| view.record_count() > 0)
            .ok_or_else(|| LogError::Corrupt("append of an unvalidated batch".into()))?;
        let count = view.record_count();
        let producer_id = view.producer_id();
        if producer_id >= 0 {
            let known = state.producers().get(&producer_id).cloned();
            let current = producers
                .iter()
                .rev()
                .find(|(id, _)| *id == producer_id)
                .map(|(_, e)| e)
                .or(known.as_ref());
            let first = view.base_sequence();
            let last = producers::last_sequence(first, count);
            match producers::check(current, view.producer_epoch(), first, last) {
                Ok(SequenceCheck::Append) => {
                    let recorded = SequencedBatch {
                        first_sequence: first,
                        last_sequence: last,
                        base_offset: next_offset,
                    };
                    let mut entry =
                        producers::record(current, view.producer_epoch(), recorded, now_ms);
                    if view.is_transactional() && entry.txn_first_offset.is_none() {
                        entry.txn_first_offset = Some(next_offset);
                        txn_events.push(TxnEvent::Started {
                            producer_id,
                            first_offset: next_offset,
                        });
                    }
                    producers.retain(|(id, _)| *id != producer_id);
                    producers.push((producer_id, entry));
                }
                Ok(SequenceCheck::Duplicate { base_offset }) if index == 0 => {
                    return Ok(Planned::Skip(AppendOutcome::Duplicate {
                        base_offset,
                        last_offset: base_offset + i64::from(count) - 1,
                    }));
                }
                Ok(SequenceCheck::Duplicate { .. }) => {
                    return Ok(Planned::Skip(AppendOutcome::Refused(
                        SequenceError::OutOfOrder,
                    )));
                }
                Err(refused) => return Ok(Planned::Skip(AppendOutcome::Refused(refused))),
            }
        }
        let key = BatchKey {
            segment,
            topic_id,
            partition,
            last_offset: next_offset + i64::from(count) - 1,
        };
        // A batch in an object is stored as its location; the object holds it as received.
        let stored = match object {
            Some(object) => object.location(index, batch, next_offset).encode(),
            None => batch::with_base_offset(batch, next_offset),
        };
        if let Some(copy_max_bytes) = key_copy_max_bytes {
            let at = IndexAt {
                segment,
                topic_id,
                partition,
                first_sequence: sequence,
                copy_max_bytes,
            };
            let read_now;
            let records = match write.keys.as_ref().and_then(|keys| keys.get(index)) {
                Some(read) => read,
                None => {
                    read_now = batch::keyed_records(batch);
                    &read_now
                }
            };
            match records {
                Ok(records) => index_record_keys(batch, records, next_offset, &at, &mut puts),
                Err(unreadable) => {
                    return Ok(Planned::Skip(AppendOutcome::Unreadable(unreadable.clone())))
                }
            }
        }
        puts.push((key.encode(), stored));
        let entry = SequenceEntry {
            topic_id,
            partition,
            base_offset: next_offset,
            record_count: count as u32,
        };
        puts.push((keys::sequence_key(segment, sequence), entry.encode()));
        sequence += count as u64;
        next_offset += i64::from(count);
    }
    if let Some(object) = object {
        let registration = keys::batch_object_value(topic_id, partition);
        puts.push((keys::batch_object_key(segment, object.id), registration));
    }
    Ok(Planned::Write {
        puts,
        next_offset,
        next_sequence: sequence,
        producers,
        txn_events,
    })
}

/// The global sequence after the newest stored entry (0 for an empty store). Topics'
/// active segments take appends side by side, so every segment's newest entry is read.
async fn next_global_sequence(db: &Db, segments: &[u32]) -> Result<u64, LogError> {
    let mut next = 0;
    for &segment in segments {
        let options = LogStore::scan_options(1, IterationOrder::Descending);
        let range = read::prefix_range(&keys::sequence_prefix(segment));
        let mut scan = db.scan_with_options(range, &options).await?;
        if let Some(entry) = scan.next().await? {
            let first = keys::decode_sequence_key(&entry.key)
                .ok_or_else(|| LogError::Corrupt("global sequence key".into()))?;
            let stored = SequenceEntry::decode(&entry.value)
                .ok_or_else(|| LogError::Corrupt("global sequence entry".into()))?;
            next = next.max(first + u64::from(stored.record_count));
        }
    }
    Ok(next)
}
