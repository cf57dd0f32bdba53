//! The transaction coordinator: transactional ids, their producer ids and epochs, the
//! partitions and groups each open transaction touches, and how transactions end.
//!
//! Shale is one broker over one SlateDB, so a transaction ends in a single atomic write:
//! markers on every partition, the committed offsets and the coordinator's record together
//! ([`LogStore::write_transaction_end`]). Kafka needs a two-phase PrepareCommit/Complete
//! protocol across brokers; here a crash leaves a transaction either decided or still
//! open, and an open one is aborted when its producer re-initialises or its timeout passes.
//!
//! Each transactional id has its own lock, so producers do not wait on each other; a
//! second map by producer id lets produce requests check their partitions without it.
//!
//! As in Kafka, a transactional id with no transaction open goes once it has not been used
//! for `transactional.id.expiration.ms`; a producer that initialises it again later gets a
//! new producer id.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::group_coordinator::GroupCoordinator;
use super::storage_error;
use crate::log::transactions::TxnOffset;
use crate::log::{now_ms, LogError, LogStore, PartitionLog, TxnMarker};
use crate::storage::keys::OffsetValue;

/// How often open transactions are checked against their timeouts, and unused
/// transactional ids against their expiration.
const TIMEOUT_SWEEP: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest timeout a producer may ask for.
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: how long a transactional id with no transaction
    /// open is kept after its last use.
    pub id_expiration_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    Empty,
    Ongoing,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// The state as Kafka's admin APIs name it.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    pub fn from_name(name: &str) -> Option<TxnState> {
        [
            TxnState::Empty,
            TxnState::Ongoing,
            TxnState::CompleteCommit,
            TxnState::CompleteAbort,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// An offset committed inside a transaction, applied when it commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingOffset {
    group: String,
    topic: String,
    partition: i32,
    value: StoredOffset,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredOffset {
    offset: i64,
    leader_epoch: i32,
    metadata: String,
    commit_timestamp: i64,
}

/// What is stored per transactional id.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TxnRecord {
    producer_id: i64,
    producer_epoch: i16,
    timeout_ms: i32,
    state: TxnState,
    partitions: BTreeSet<(String, i32)>,
    groups: BTreeSet<String>,
    offsets: Vec<PendingOffset>,
    /// When the open transaction began (wall clock, so it survives restarts); -1 if none.
    start_ms: i64,
    /// When the record was last stored (wall clock): the id's last use. Records stored
    /// before Shale kept it read as 0, and are given the time they are loaded.
    #[serde(default)]
    updated_ms: i64,
}

impl TxnRecord {
    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("transaction records serialise"))
    }

    /// Checks a request's producer id and epoch against this transaction's.
    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
        if producer_id != self.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch != self.producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        Ok(())
    }

    fn begin(&mut self) {
        if self.state != TxnState::Ongoing {
            self.state = TxnState::Ongoing;
            self.start_ms = now_ms();
            self.partitions.clear();
            self.groups.clear();
            self.offsets.clear();
        }
    }
}

/// A transactional producer id's current epoch and the partitions of its open
/// transaction: what a produce request's transactional batches are checked against.
struct ActiveProducer {
    producer_epoch: i16,
    partitions: HashSet<(String, i32)>,
}

impl ActiveProducer {
    fn of(record: &TxnRecord) -> Self {
        ActiveProducer {
            producer_epoch: record.producer_epoch,
            partitions: record.partitions.iter().cloned().collect(),
        }
    }
}

/// A transaction as DescribeTransactions and ListTransactions report it.
pub struct TxnDescription {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub state: TxnState,
    pub timeout_ms: i32,
    pub start_ms: i64,
    pub partitions: BTreeMap<String, Vec<i32>>,
}

type Slot = Arc<Mutex<Option<TxnRecord>>>;

pub struct TxnCoordinator {
    log: Arc<LogStore>,
    groups: Arc<GroupCoordinator>,
    config: TxnConfig,
    txns: std::sync::Mutex<HashMap<String, Slot>>,
    producers: std::sync::Mutex<HashMap<i64, ActiveProducer>>,
}

/// One offset of a TxnOffsetCommit.
pub struct TxnOffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

impl TxnCoordinator {
    /// Loads stored transactions and starts the timeout sweep.
    pub async fn start(
        log: Arc<LogStore>,
        groups: Arc<GroupCoordinator>,
        config: TxnConfig,
    ) -> Result<Arc<Self>, LogError> {
        let mut txns = HashMap::new();
        let mut producers = HashMap::new();
        let loaded_ms = now_ms();
        for (id, bytes) in log.load_transactions().await? {
            let mut record: TxnRecord = serde_json::from_slice(&bytes)
                .map_err(|e| LogError::Corrupt(format!("transaction {id:?}: {e}")))?;
            if record.updated_ms == 0 {
                record.updated_ms = loaded_ms;
            }
            producers.insert(record.producer_id, ActiveProducer::of(&record));
            txns.insert(id, Arc::new(Mutex::new(Some(record))));
        }
        let coordinator = Arc::new(TxnCoordinator {
            log,
            groups,
            config,
            txns: std::sync::Mutex::new(txns),
            producers: std::sync::Mutex::new(producers),
        });
        tokio::spawn(sweep(Arc::downgrade(&coordinator)));
        Ok(coordinator)
    }

    fn slot(&self, transactional_id: &str) -> Slot {
        let mut txns = self.txns.lock().unwrap_or_else(|e| e.into_inner());
        txns.entry(transactional_id.to_string())
            .or_default()
            .clone()
    }

    fn existing_slot(&self, transactional_id: &str) -> Option<Slot> {
        let txns = self.txns.lock().unwrap_or_else(|e| e.into_inner());
        txns.get(transactional_id).cloned()
    }

    /// Locks an existing transaction after checking the request's producer id and epoch.
    async fn lock_checked(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> Result<OwnedMutexGuard<Option<TxnRecord>>, ResponseError> {
        let slot = self
            .existing_slot(transactional_id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        let guard = slot.lock_owned().await;
        guard
            .as_ref()
            .ok_or(ResponseError::InvalidProducerIdMapping)?
            .check_producer(producer_id, epoch)?;
        Ok(guard)
    }

    fn producers(&self) -> std::sync::MutexGuard<'_, HashMap<i64, ActiveProducer>> {
        self.producers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `record` what produce requests are checked against.
    fn activate(&self, record: &TxnRecord) {
        self.producers()
            .insert(record.producer_id, ActiveProducer::of(record));
    }

    /// Stores `record`, stamped as used now.
    async fn store(
        &self,
        transactional_id: &str,
        record: &mut TxnRecord,
    ) -> Result<(), ResponseError> {
        record.updated_ms = now_ms();
        self.log
            .store_transaction(transactional_id, record.encode())
            .await
            .map_err(|e| storage_error(&e))?
            .durable()
            .await
            .map_err(|e| storage_error(&e))
    }

    /// InitProducerId for a transactional id: aborts whatever the previous producer left
    /// open, then hands out the id with a new epoch, which fences every older producer.
    /// `current` is the caller's own id and epoch when it re-initialises (KIP-360).
    pub async fn init_producer(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let slot = self.slot(transactional_id);
        let mut guard = slot.lock().await;
        let Some(record) = guard.as_mut() else {
            let producer_id = self
                .log
                .allocate_producer_id()
                .await
                .map_err(|e| storage_error(&e))?;
            let mut record = TxnRecord {
                producer_id,
                producer_epoch: 0,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                groups: BTreeSet::new(),
                offsets: Vec::new(),
                start_ms: -1,
                updated_ms: 0,
            };
            self.store(transactional_id, &mut record).await?;
            self.activate(&record);
            *guard = Some(record);
            return Ok((producer_id, 0));
        };
        if let Some((producer_id, epoch)) = current {
            // After the coordinator aborted on a timeout, the producer is one epoch behind.
            let known = producer_id == record.producer_id
                && (epoch == record.producer_epoch || epoch == record.producer_epoch - 1);
            if !known {
                return Err(ResponseError::ProducerFenced);
            }
        }
        let (producer_id, producer_epoch) = if record.producer_epoch >= i16::MAX - 1 {
            let id = self
                .log
                .allocate_producer_id()
                .await
                .map_err(|e| storage_error(&e))?;
            (id, 0)
        } else {
            (record.producer_id, record.producer_epoch + 1)
        };
        if record.state == TxnState::Ongoing {
            // Abort what the previous producer left open; with the id kept, the markers
            // carry the new epoch and fence the old producer on every partition.
            let marker_epoch = if producer_id == record.producer_id {
                producer_epoch
            } else {
                record.producer_epoch
            };
            self.end(transactional_id, record, false, marker_epoch)
                .await?;
        }
        let mut next = record.clone();
        next.producer_id = producer_id;
        next.producer_epoch = producer_epoch;
        next.timeout_ms = timeout_ms;
        next.state = TxnState::Empty;
        self.store(transactional_id, &mut next).await?;
        let granted = (next.producer_id, next.producer_epoch);
        self.activate(&next);
        *record = next;
        Ok(granted)
    }

    /// AddPartitionsToTxn: the partitions a transaction will write to, so they get markers
    /// when it ends. One unknown partition fails the whole request, as in Kafka.
    pub async fn add_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<((String, i32), Option<ResponseError>)>, ResponseError> {
        let mut guard = self
            .lock_checked(transactional_id, producer_id, epoch)
            .await?;
        let record = guard.as_mut().expect("lock_checked found the record");
        let unknown: Vec<bool> = partitions
            .iter()
            .map(|(topic, partition)| {
                self.log
                    .topic(topic)
                    .and_then(|t| t.partition(*partition).cloned())
                    .is_none()
            })
            .collect();
        if unknown.iter().any(|u| *u) {
            return Ok(partitions
                .into_iter()
                .zip(unknown)
                .map(|(p, unknown)| {
                    let error = if unknown {
                        ResponseError::UnknownTopicOrPartition
                    } else {
                        ResponseError::OperationNotAttempted
                    };
                    (p, Some(error))
                })
                .collect());
        }
        let mut next = record.clone();
        next.begin();
        next.partitions.extend(partitions.iter().cloned());
        if next.state != record.state || next.partitions != record.partitions {
            self.store(transactional_id, &mut next).await?;
            self.activate(&next);
            *record = next;
        }
        Ok(partitions.into_iter().map(|p| (p, None)).collect())
    }

    /// AddOffsetsToTxn: the transaction will commit offsets for `group`.
    pub async fn add_offsets(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> Result<(), ResponseError> {
        if group.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let mut guard = self
            .lock_checked(transactional_id, producer_id, epoch)
            .await?;
        let record = guard.as_mut().expect("lock_checked found the record");
        let mut next = record.clone();
        next.begin();
        next.groups.insert(group.to_string());
        if next.state != record.state || next.groups != record.groups {
            self.store(transactional_id, &mut next).await?;
            *record = next;
        }
        Ok(())
    }

    /// TxnOffsetCommit: offsets that become the group's committed offsets when (and only
    /// if) the transaction commits. Returns one error per offset.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_offsets(
        &self,
        transactional_id: &str,
        group: &str,
        producer_id: i64,
        epoch: i16,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: Vec<TxnOffsetCommit>,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        let mut guard = self
            .lock_checked(transactional_id, producer_id, epoch)
            .await?;
        let record = guard.as_mut().expect("lock_checked found the record");
        if record.state != TxnState::Ongoing || !record.groups.contains(group) {
            return Err(ResponseError::InvalidTxnState);
        }
        self.groups
            .check_member(group, generation, member_id, instance_id)
            .await?;
        let mut next = record.clone();
        let now = now_ms();
        let mut errors = Vec::with_capacity(offsets.len());
        for commit in offsets {
            if let Err(error) =
                self.groups
                    .check_offset(&commit.topic, commit.partition, &commit.metadata)
            {
                errors.push(Some(error));
                continue;
            }
            next.offsets.retain(|o| {
                !(o.group == group && o.topic == commit.topic && o.partition == commit.partition)
            });
            next.offsets.push(PendingOffset {
                group: group.to_string(),
                topic: commit.topic,
                partition: commit.partition,
                value: StoredOffset {
                    offset: commit.offset,
                    leader_epoch: commit.leader_epoch,
                    metadata: commit.metadata,
                    commit_timestamp: now,
                },
            });
            errors.push(None);
        }
        self.store(transactional_id, &mut next).await?;
        *record = next;
        Ok(errors)
    }

    /// EndTxn: commits or aborts the open transaction. A retry of the same decision after
    /// it completed succeeds again; the opposite decision is INVALID_TXN_STATE.
    pub async fn end_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), ResponseError> {
        let mut guard = self
            .lock_checked(transactional_id, producer_id, epoch)
            .await?;
        let record = guard.as_mut().expect("lock_checked found the record");
        match (record.state, commit) {
            (TxnState::Ongoing, _) => self.end(transactional_id, record, commit, epoch).await,
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(()),
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// Writes the markers (with `marker_epoch`) and, on commit, the offsets; then records
    /// the transaction as complete.
    async fn end(
        &self,
        transactional_id: &str,
        record: &mut TxnRecord,
        commit: bool,
        marker_epoch: i16,
    ) -> Result<(), ResponseError> {
        let partitions: Vec<Arc<PartitionLog>> = record
            .partitions
            .iter()
            .filter_map(|(topic, partition)| {
                // A topic deleted during the transaction has nothing left to mark.
                self.log.topic(topic)?.partition(*partition).cloned()
            })
            .collect();
        let offsets: Vec<(String, String, i32, OffsetValue)> = record
            .offsets
            .iter()
            .map(|o| {
                let value = OffsetValue {
                    offset: o.value.offset,
                    leader_epoch: o.value.leader_epoch,
                    commit_timestamp: o.value.commit_timestamp,
                    metadata: o.value.metadata.clone(),
                };
                (o.group.clone(), o.topic.clone(), o.partition, value)
            })
            .collect();
        let mut next = record.clone();
        next.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        next.producer_epoch = marker_epoch;
        next.partitions.clear();
        next.groups.clear();
        next.offsets.clear();
        next.start_ms = -1;
        next.updated_ms = now_ms();
        let marker = TxnMarker {
            producer_id: record.producer_id,
            producer_epoch: marker_epoch,
            commit,
        };
        let stored: Vec<TxnOffset<'_>> = offsets
            .iter()
            .map(|(group, topic, partition, value)| TxnOffset {
                group,
                topic,
                partition: *partition,
                value,
            })
            .collect();
        let cleanup_mark = self.groups.cleanup_mark();
        let receipt = self
            .log
            .write_transaction_end(transactional_id, next.encode(), partitions, marker, &stored)
            .await
            .map_err(|e| storage_error(&e))?;
        receipt.durable().await.map_err(|e| storage_error(&e))?;
        if commit {
            // The transaction is complete once its record is durable; a failed rewrite of
            // its offsets is logged by the group coordinator, not undone here.
            let _ = self.groups.apply_committed(offsets, cleanup_mark).await;
        }
        self.activate(&next);
        tracing::debug!(
            transactional_id,
            commit,
            partitions = record.partitions.len(),
            "transaction ended"
        );
        *record = next;
        Ok(())
    }

    /// Checks a transactional produce: its producer must have added the partition to its
    /// open transaction, with its current epoch.
    pub fn check_produce(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), ResponseError> {
        let producers = self.producers();
        let active = producers
            .get(&producer_id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        if epoch < active.producer_epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if epoch != active.producer_epoch
            || !active.partitions.contains(&(topic.to_string(), partition))
        {
            return Err(ResponseError::InvalidTxnState);
        }
        Ok(())
    }

    /// Partitions of `group` with offsets in an open transaction: OffsetFetch with
    /// `require_stable` answers UNSTABLE_OFFSET_COMMIT for them.
    pub async fn pending_offsets(&self, group: &str) -> HashSet<(String, i32)> {
        let mut pending = HashSet::new();
        for (_, slot) in self.slots() {
            if let Some(record) = slot.lock().await.as_ref() {
                pending.extend(
                    record
                        .offsets
                        .iter()
                        .filter(|o| o.group == group)
                        .map(|o| (o.topic.clone(), o.partition)),
                );
            }
        }
        pending
    }

    fn slots(&self) -> Vec<(String, Slot)> {
        let txns = self.txns.lock().unwrap_or_else(|e| e.into_inner());
        txns.iter().map(|(id, s)| (id.clone(), s.clone())).collect()
    }

    /// Describes the given transactional ids (`None` for an unknown one).
    pub async fn describe(&self, ids: &[String]) -> Vec<Option<TxnDescription>> {
        let mut described = Vec::with_capacity(ids.len());
        for id in ids {
            let description = match self.existing_slot(id) {
                Some(slot) => slot.lock().await.as_ref().map(|r| describe(id, r)),
                None => None,
            };
            described.push(description);
        }
        described
    }

    /// Every known transaction.
    pub async fn list(&self) -> Vec<TxnDescription> {
        let slots = self.slots();
        let mut listed = Vec::with_capacity(slots.len());
        for (id, slot) in slots {
            if let Some(record) = slot.lock().await.as_ref() {
                listed.push(describe(&id, record));
            }
        }
        listed.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        listed
    }

    /// Aborts transactions open longer than their timeout. The markers carry a bumped
    /// epoch, so the producer that left the transaction open is fenced everywhere. And
    /// forgets the ids unused for `transactional.id.expiration.ms` with none open.
    async fn abort_expired(&self) {
        let now = now_ms();
        for (id, slot) in self.slots() {
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            let Some(record) = guard.as_mut() else {
                continue;
            };
            if record.state != TxnState::Ongoing
                && now.saturating_sub(record.updated_ms) >= self.config.id_expiration_ms
            {
                self.forget(&id, &slot, &mut guard).await;
                continue;
            }
            let expired = record.state == TxnState::Ongoing
                && now - record.start_ms > i64::from(record.timeout_ms);
            if !expired || record.producer_epoch >= i16::MAX - 1 {
                continue;
            }
            let bumped = record.producer_epoch + 1;
            match self.end(&id, record, false, bumped).await {
                Ok(()) => {
                    tracing::info!(transactional_id = %id, "aborted a transaction past its timeout")
                }
                Err(e) => {
                    tracing::warn!(transactional_id = %id, error = ?e, "aborting a timed-out transaction failed")
                }
            }
        }
    }
}

impl TxnCoordinator {
    /// Removes an expired transactional id, whose slot `guard` holds: from the store, then
    /// from memory. Requests waiting on the slot then find no record, as for an id never
    /// seen; the slot leaves the map unless one of them holds it.
    async fn forget(&self, id: &str, slot: &Slot, guard: &mut Option<TxnRecord>) {
        let Some(record) = guard.as_ref() else {
            return;
        };
        if let Err(e) = self.log.delete_transaction(id).await {
            tracing::warn!(transactional_id = %id, error = %e, "forgetting an expired transactional id failed");
            return;
        }
        self.producers().remove(&record.producer_id);
        *guard = None;
        let mut txns = self.txns.lock().unwrap_or_else(|e| e.into_inner());
        // The map's and this sweep's: no request holds it, and none can clone it while the
        // map is locked.
        if Arc::strong_count(slot) == 2 {
            txns.remove(id);
        }
        tracing::info!(transactional_id = %id, "forgot a transactional id unused past its expiration");
    }
}

fn describe(id: &str, record: &TxnRecord) -> TxnDescription {
    let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in &record.partitions {
        partitions
            .entry(topic.clone())
            .or_default()
            .push(*partition);
    }
    TxnDescription {
        transactional_id: id.to_string(),
        producer_id: record.producer_id,
        producer_epoch: record.producer_epoch,
        state: record.state,
        timeout_ms: record.timeout_ms,
        start_ms: record.start_ms,
        partitions,
    }
}

async fn sweep(coordinator: Weak<TxnCoordinator>) {
    let mut tick = tokio::time::interval(TIMEOUT_SWEEP);
    loop {
        tick.tick().await;
        let Some(coordinator) = coordinator.upgrade() else {
            return;
        };
        coordinator.abort_expired().await;
    }
}
