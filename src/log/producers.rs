//! Idempotent producers: per partition, each producer's epoch and its latest batches, so a
//! retried batch is recognised and answered with its original offset instead of being
//! written twice, and a gap in sequence numbers is refused.
//!
//! Kafka keeps the last 5 batches per producer and partition because a producer has at most
//! 5 requests in flight; a retry can only repeat one of those. As in Kafka, a producer's
//! state goes once it has written nothing to the partition for `producer.id.expiration.ms`
//! and has no transaction open there ([`ProducerEntry::expired`]); a batch it sends later is
//! taken as from a producer new to the partition.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use slatedb::WriteBatch;

use super::read::prefix_range;
use super::{now_ms, LogError, LogStore};
use crate::storage::keys;

/// Batches remembered per producer and partition.
const REMEMBERED_BATCHES: usize = 5;

/// Where a written batch's sequence numbers landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencedBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
}

/// One producer's state on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<SequencedBatch>,
    /// The first offset of the producer's open transaction on this partition: records from
    /// here on are invisible to read_committed consumers until a marker ends it.
    pub txn_first_offset: Option<i64>,
    /// The broker's clock when the producer last wrote to the partition (a batch or a
    /// transaction marker), in milliseconds since the epoch.
    pub last_write_ms: i64,
}

/// Why a producer's batch is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("the producer epoch is older than this producer's current one")]
    StaleEpoch,
    #[error("the batch's sequence number does not follow the previous batch's")]
    OutOfOrder,
}

/// What to do with one idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New and in order: write it.
    Append,
    /// A retry of a batch already written at this offset.
    Duplicate { base_offset: i64 },
}

/// The sequence number after `sequence`; Kafka's sequences wrap from i32::MAX to 0.
fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

/// The last sequence of a batch of `count` records starting at `first`.
pub fn last_sequence(first: i32, count: i32) -> i32 {
    ((i64::from(first) + i64::from(count) - 1) % (i64::from(i32::MAX) + 1)) as i32
}

/// Checks a batch of `producer` (`epoch`, sequences `first..=last`) against its state.
pub fn check(
    entry: Option<&ProducerEntry>,
    epoch: i16,
    first: i32,
    last: i32,
) -> Result<SequenceCheck, SequenceError> {
    let Some(entry) = entry else {
        // A producer new to this partition (or whose state was never stored) starts here.
        return Ok(SequenceCheck::Append);
    };
    if epoch < entry.epoch {
        return Err(SequenceError::StaleEpoch);
    }
    if epoch > entry.epoch {
        return if first == 0 {
            Ok(SequenceCheck::Append)
        } else {
            Err(SequenceError::OutOfOrder)
        };
    }
    if let Some(seen) = entry
        .batches
        .iter()
        .find(|b| b.first_sequence == first && b.last_sequence == last)
    {
        return Ok(SequenceCheck::Duplicate {
            base_offset: seen.base_offset,
        });
    }
    match entry.batches.back() {
        Some(latest) if next_sequence(latest.last_sequence) != first => {
            Err(SequenceError::OutOfOrder)
        }
        _ => Ok(SequenceCheck::Append),
    }
}

/// The state after appending a checked batch at `now_ms`.
pub fn record(
    entry: Option<&ProducerEntry>,
    epoch: i16,
    batch: SequencedBatch,
    now_ms: i64,
) -> ProducerEntry {
    let mut next = match entry {
        Some(entry) if entry.epoch == epoch => entry.clone(),
        _ => ProducerEntry::new(epoch, now_ms),
    };
    if next.batches.len() == REMEMBERED_BATCHES {
        next.batches.pop_front();
    }
    next.batches.push_back(batch);
    next.last_write_ms = now_ms;
    next
}

/// The state after a transaction marker written with `epoch`: the transaction is closed,
/// and a newer epoch (the coordinator fencing an old producer) starts sequences over.
pub fn end_transaction(entry: Option<&ProducerEntry>, epoch: i16, now_ms: i64) -> ProducerEntry {
    match entry {
        Some(entry) if entry.epoch >= epoch => ProducerEntry {
            txn_first_offset: None,
            last_write_ms: now_ms,
            ..entry.clone()
        },
        _ => ProducerEntry::new(epoch, now_ms),
    }
}

/// Set in the stored count byte when the last write's time follows the batches (entries
/// stored before Shale kept it have none).
const HAS_WRITE_TIME: u8 = 0x80;

impl ProducerEntry {
    fn new(epoch: i16, now_ms: i64) -> Self {
        ProducerEntry {
            epoch,
            batches: VecDeque::new(),
            txn_first_offset: None,
            last_write_ms: now_ms,
        }
    }

    /// Whether the state can go at `now_ms`: nothing written for `expiration_ms`, and no
    /// transaction open (its records would stay invisible to read_committed consumers).
    pub fn expired(&self, now_ms: i64, expiration_ms: i64) -> bool {
        self.txn_first_offset.is_none()
            && now_ms.saturating_sub(self.last_write_ms) >= expiration_ms
    }

    /// Layout: `epoch i16 | count u8 (with HAS_WRITE_TIME) | count x (first sequence i32 |
    /// last sequence i32 | base offset i64) | last write ms i64 | [open transaction's first
    /// offset i64]`.
    pub fn encode(&self) -> Bytes {
        let mut value = BytesMut::with_capacity(3 + 16 * self.batches.len() + 16);
        value.put_i16(self.epoch);
        value.put_u8(self.batches.len() as u8 | HAS_WRITE_TIME);
        for batch in &self.batches {
            value.put_i32(batch.first_sequence);
            value.put_i32(batch.last_sequence);
            value.put_i64(batch.base_offset);
        }
        value.put_i64(self.last_write_ms);
        if let Some(first) = self.txn_first_offset {
            value.put_i64(first);
        }
        value.freeze()
    }

    /// `loaded_ms` stands for the last write's time in entries stored without it: they go
    /// a full expiration period after the broker that reads them loads them.
    pub fn decode(mut value: &[u8], loaded_ms: i64) -> Option<ProducerEntry> {
        if value.len() < 3 {
            return None;
        }
        let epoch = value.get_i16();
        let flags = value.get_u8();
        let count = usize::from(flags & !HAS_WRITE_TIME);
        let timed = flags & HAS_WRITE_TIME != 0;
        let fixed = count * 16 + if timed { 8 } else { 0 };
        let in_txn = match value.len().checked_sub(fixed) {
            Some(0) => false,
            Some(8) => true,
            _ => return None,
        };
        let batches = (0..count)
            .map(|_| SequencedBatch {
                first_sequence: value.get_i32(),
                last_sequence: value.get_i32(),
                base_offset: value.get_i64(),
            })
            .collect();
        let last_write_ms = if timed { value.get_i64() } else { loaded_ms };
        let txn_first_offset = in_txn.then(|| value.get_i64());
        Some(ProducerEntry {
            epoch,
            batches,
            txn_first_offset,
            last_write_ms,
        })
    }
}

/// How often idle producers' states are looked for: Kafka's
/// `producer.id.expiration.check.interval.ms`, or sooner for short expirations.
fn expiry_interval(expiration: Duration) -> Duration {
    (expiration / 2).clamp(Duration::from_millis(100), Duration::from_secs(600))
}

/// Drops idle producers' states ([`LogStore::expire_producers`]) while the store is alive.
pub fn spawn_expiry(store: &Arc<LogStore>, expiration: Duration) {
    let store: Weak<LogStore> = Arc::downgrade(store);
    let expiration_ms = i64::try_from(expiration.as_millis()).unwrap_or(i64::MAX);
    let started_ms = now_ms();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(expiry_interval(expiration));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else {
                return;
            };
            match store.expire_producers(expiration_ms, started_ms).await {
                Ok(0) => {}
                Ok(expired) => tracing::debug!(expired, "idle producers' states dropped"),
                Err(e) => tracing::warn!(error = %e, "producer expiry failed; retrying"),
            }
        }
    });
}

impl LogStore {
    /// Drops the states of producers that have written nothing to a partition for
    /// `expiration_ms` (and have no transaction open there), from the partitions loaded
    /// and from SlateDB; returns how many went. The states of partitions not loaded (and
    /// of deleted topics) are read from SlateDB first, without holding up appends; one
    /// stored without its write time (by a build before it was kept) counts from
    /// `started_ms`, as a loaded one counts from its load. The deletes are then made under
    /// the append lock, so no append is planned against a state being dropped and they
    /// are ordered with appends' writes; a partition loaded meanwhile is left to the
    /// in-memory pass.
    pub async fn expire_producers(
        &self,
        expiration_ms: i64,
        started_ms: i64,
    ) -> Result<usize, LogError> {
        let now = now_ms();
        let mut idle_stored = Vec::new();
        let mut stored = self
            .db
            .scan(prefix_range(&keys::producer_states_prefix()))
            .await?;
        while let Some(entry) = stored.next().await? {
            if self.producer_state_loaded(&entry.key) {
                continue;
            }
            let idle = ProducerEntry::decode(&entry.value, started_ms)
                .is_some_and(|state| state.expired(now, expiration_ms));
            if idle {
                idle_stored.push(entry.key);
            }
        }

        let _appends = self.append.lock().await;
        let mut deletes = WriteBatch::new();
        let mut expired = 0;
        for topic in self.topics() {
            for partition in &topic.partitions {
                let Some(state) = partition.state.get() else {
                    continue;
                };
                state.producers().retain(|&producer_id, entry| {
                    if !entry.expired(now, expiration_ms) {
                        return true;
                    }
                    deletes.delete(keys::producer_state_key(
                        topic.id,
                        partition.index,
                        producer_id,
                    ));
                    expired += 1;
                    false
                });
            }
        }
        for key in idle_stored {
            if !self.producer_state_loaded(&key) {
                deletes.delete(key);
                expired += 1;
            }
        }
        if expired > 0 {
            // Not waited for: a delete lost to a crash leaves a state the next pass drops.
            self.db.write(deletes).await?;
        }
        Ok(expired)
    }

    /// Whether the partition of a stored producer state is loaded (its states in memory).
    fn producer_state_loaded(&self, key: &[u8]) -> bool {
        keys::decode_producer_state_partition(key)
            .and_then(|(topic_id, index)| self.topic_by_id(topic_id)?.partition(index).cloned())
            .is_some_and(|partition| partition.state.get().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(batches: &[(i32, i32, i64)]) -> ProducerEntry {
        let mut entry = None;
        for &(first, last, base_offset) in batches {
            entry = Some(record(
                entry.as_ref(),
                0,
                SequencedBatch {
                    first_sequence: first,
                    last_sequence: last,
                    base_offset,
                },
                1_000,
            ));
        }
        entry.expect("at least one batch")
    }

    #[test]
    fn in_order_batches_are_appended_and_retries_are_duplicates() {
        let entry = after(&[(0, 4, 100), (5, 9, 105)]);
        assert_eq!(check(Some(&entry), 0, 10, 14), Ok(SequenceCheck::Append));
        assert_eq!(
            check(Some(&entry), 0, 0, 4),
            Ok(SequenceCheck::Duplicate { base_offset: 100 })
        );
        assert_eq!(
            check(Some(&entry), 0, 5, 9),
            Ok(SequenceCheck::Duplicate { base_offset: 105 })
        );
        assert_eq!(
            check(Some(&entry), 0, 12, 14),
            Err(SequenceError::OutOfOrder)
        );
        assert_eq!(check(None, 0, 37, 40), Ok(SequenceCheck::Append));
    }

    #[test]
    fn epochs_fence_old_producers_and_restart_sequences() {
        let entry = after(&[(0, 4, 0)]);
        let bumped = record(
            Some(&entry),
            1,
            SequencedBatch {
                first_sequence: 0,
                last_sequence: 0,
                base_offset: 5,
            },
            2_000,
        );
        assert_eq!(bumped.batches.len(), 1);
        assert_eq!(
            check(Some(&bumped), 0, 5, 5),
            Err(SequenceError::StaleEpoch)
        );
        assert_eq!(check(Some(&entry), 2, 0, 3), Ok(SequenceCheck::Append));
        assert_eq!(check(Some(&entry), 2, 7, 9), Err(SequenceError::OutOfOrder));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let entry = after(&[
            (0, 0, 0),
            (1, 1, 1),
            (2, 2, 2),
            (3, 3, 3),
            (4, 4, 4),
            (5, 5, 5),
        ]);
        assert_eq!(entry.batches.len(), REMEMBERED_BATCHES);
        assert_eq!(check(Some(&entry), 0, 0, 0), Err(SequenceError::OutOfOrder));
        assert_eq!(last_sequence(i32::MAX - 1, 4), 1);
        let near_end = after(&[(i32::MAX - 1, i32::MAX, 0)]);
        assert_eq!(check(Some(&near_end), 0, 0, 3), Ok(SequenceCheck::Append));
    }

    #[test]
    fn entries_round_trip() {
        let mut entry = after(&[(0, 4, 100), (5, 9, 105)]);
        assert_eq!(
            ProducerEntry::decode(&entry.encode(), 0),
            Some(entry.clone())
        );
        entry.txn_first_offset = Some(100);
        assert_eq!(
            ProducerEntry::decode(&entry.encode(), 0),
            Some(entry.clone())
        );
        assert_eq!(ProducerEntry::decode(&[0, 1, 1], 0), None);
        // Stored before the last write's time was kept: the load's time stands in.
        let mut untimed = vec![0, 0, 1];
        untimed.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 100]);
        untimed.extend_from_slice(&100i64.to_be_bytes());
        entry.batches.pop_back();
        entry.last_write_ms = 7_000;
        assert_eq!(ProducerEntry::decode(&untimed, 7_000), Some(entry));
    }

    #[test]
    fn idle_states_expire_unless_a_transaction_is_open() {
        let mut entry = after(&[(0, 4, 100)]);
        assert_eq!(entry.last_write_ms, 1_000);
        assert!(!entry.expired(1_999, 1_000));
        assert!(entry.expired(2_000, 1_000));
        entry.txn_first_offset = Some(100);
        assert!(!entry.expired(1_000_000, 1_000));
        let closed = end_transaction(Some(&entry), 0, 5_000);
        assert_eq!(closed.last_write_ms, 5_000);
        assert!(!closed.expired(5_999, 1_000));
        assert!(closed.expired(6_000, 1_000));
    }

    #[test]
    fn markers_close_transactions_and_newer_epochs_fence() {
        let mut entry = after(&[(0, 4, 100)]);
        entry.txn_first_offset = Some(100);
        let closed = end_transaction(Some(&entry), 0, 2_000);
        assert_eq!(closed.txn_first_offset, None);
        assert_eq!(closed.batches, entry.batches);
        let fenced = end_transaction(Some(&entry), 1, 2_000);
        assert_eq!((fenced.epoch, fenced.batches.len()), (1, 0));
        assert_eq!(
            check(Some(&fenced), 0, 5, 5),
            Err(SequenceError::StaleEpoch)
        );
    }
}
