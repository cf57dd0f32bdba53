//! One topic-partition's key log: its identity and its in-memory offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{watch, OnceCell};
use uuid::Uuid;

use super::producers::ProducerEntry;
use crate::storage::keys::AbortedTxn;

/// A topic-partition. Its offsets are loaded from SlateDB the first time it is used, so a
/// broker with many partitions starts without reading them all.
#[derive(Debug)]
pub struct PartitionLog {
    pub topic_id: Uuid,
    pub index: i32,
    pub(super) state: OnceCell<PartitionState>,
}

impl PartitionLog {
    pub(super) fn new(topic_id: Uuid, index: i32) -> Self {
        PartitionLog {
            topic_id,
            index,
            state: OnceCell::new(),
        }
    }
}

/// Offsets of a loaded partition.
#[derive(Debug)]
pub(super) struct PartitionState {
    /// The offset the next appended record gets. Changed only under the store's append lock.
    pub next_offset: AtomicI64,
    /// The durable end of the log: records below it survive a crash and may be served.
    /// Waiting fetches subscribe to it; appends advance it once SlateDB reports durability.
    pub high_watermark: watch::Sender<i64>,
    /// The first offset still stored.
    pub log_start_offset: AtomicI64,
    /// Idempotent producers' states by producer id. Changed only under the append lock.
    producers: Mutex<HashMap<i64, ProducerEntry>>,
    /// Open and aborted transactions, for read_committed fetches.
    transactions: Mutex<TxnIndex>,
}

/// A transaction with records on this partition that read_committed consumers may not see
/// yet: from its first record until its marker is durable.
#[derive(Debug, Clone, Copy)]
struct OpenTxn {
    producer_id: i64,
    first_offset: i64,
    marker_offset: Option<i64>,
}

/// What changed about a partition's transactions in one append.
#[derive(Debug, Clone, Copy)]
pub(super) enum TxnEvent {
    Started {
        producer_id: i64,
        first_offset: i64,
    },
    Ended {
        producer_id: i64,
        marker_offset: i64,
        aborted: Option<AbortedTxn>,
    },
}

/// A partition's transactions: which are open (they hold the last stable offset back) and
/// which were aborted (read_committed consumers drop their records).
#[derive(Debug, Default)]
pub(super) struct TxnIndex {
    open: Vec<OpenTxn>,
    /// Aborted transactions by marker offset.
    aborted: BTreeMap<i64, AbortedTxn>,
}

impl TxnIndex {
    pub fn new(
        producers: &HashMap<i64, ProducerEntry>,
        aborted: impl IntoIterator<Item = AbortedTxn>,
    ) -> Self {
        TxnIndex {
            open: producers
                .iter()
                .filter_map(|(&producer_id, entry)| {
                    Some(OpenTxn {
                        producer_id,
                        first_offset: entry.txn_first_offset?,
                        marker_offset: None,
                    })
                })
                .collect(),
            aborted: aborted.into_iter().map(|a| (a.marker_offset, a)).collect(),
        }
    }

    fn apply(&mut self, event: TxnEvent) {
        match event {
            TxnEvent::Started {
                producer_id,
                first_offset,
            } => self.open.push(OpenTxn {
                producer_id,
                first_offset,
                marker_offset: None,
            }),
            TxnEvent::Ended {
                producer_id,
                marker_offset,
                aborted,
            } => {
                if let Some(open) = self
                    .open
                    .iter_mut()
                    .find(|t| t.producer_id == producer_id && t.marker_offset.is_none())
                {
                    open.marker_offset = Some(marker_offset);
                }
                if let Some(aborted) = aborted {
                    self.aborted.insert(marker_offset, aborted);
                }
            }
        }
    }

    /// The offset below which every transaction is decided and durable.
    fn last_stable_offset(&mut self, high_watermark: i64) -> i64 {
        self.open.retain(|t| {
            t.marker_offset
                .is_none_or(|marker| marker >= high_watermark)
        });
        self.open
            .iter()
            .map(|t| t.first_offset)
            .fold(high_watermark, i64::min)
    }
}

impl PartitionState {
    pub fn new(
        log_start_offset: i64,
        end_offset: i64,
        producers: HashMap<i64, ProducerEntry>,
        transactions: TxnIndex,
    ) -> Self {
        PartitionState {
            next_offset: AtomicI64::new(end_offset),
            high_watermark: watch::Sender::new(end_offset),
            log_start_offset: AtomicI64::new(log_start_offset),
            producers: Mutex::new(producers),
            transactions: Mutex::new(transactions),
        }
    }

    fn transactions(&self) -> MutexGuard<'_, TxnIndex> {
        self.transactions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what an append changed; called under the append lock, in write order.
    pub fn apply_txn_events(&self, events: &[TxnEvent]) {
        let mut transactions = self.transactions();
        for event in events {
            transactions.apply(*event);
        }
    }

    /// The last stable offset: read_committed consumers read up to here.
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        self.transactions().last_stable_offset(high_watermark)
    }

    /// Aborted transactions whose marker is at or after `from` and whose first record is
    /// below `below`: what a read_committed fetch of `from..below` must report.
    pub fn aborted_transactions(&self, from: i64, below: i64) -> Vec<AbortedTxn> {
        self.transactions()
            .aborted
            .range(from..)
            .map(|(_, a)| *a)
            .filter(|a| a.first_offset < below)
            .collect()
    }

    pub fn producers(&self) -> MutexGuard<'_, HashMap<i64, ProducerEntry>> {
        // Plain data: a panic elsewhere cannot leave it half-updated.
        self.producers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    /// Moves the log start offset forward (never back): retention or DeleteRecords.
    pub fn advance_log_start(&self, start: i64) {
        self.log_start_offset.fetch_max(start, Ordering::AcqRel);
    }

    /// Moves the high watermark forward (never back) and wakes fetches waiting on it.
    pub fn advance_high_watermark(&self, durable_end: i64) {
        self.high_watermark.send_if_modified(|hwm| {
            let moved = durable_end > *hwm;
            if moved {
                *hwm = durable_end;
            }
            moved
        });
    }
}

/// The offsets a client sees for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    pub high_watermark: i64,
    /// Where read_committed consumers stop: the first offset of the oldest undecided
    /// transaction, or the high watermark.
    pub last_stable_offset: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_transactions_hold_the_stable_offset_until_their_marker_is_durable() {
        let mut index = TxnIndex::default();
        assert_eq!(index.last_stable_offset(10), 10);
        index.apply(TxnEvent::Started {
            producer_id: 7,
            first_offset: 10,
        });
        index.apply(TxnEvent::Started {
            producer_id: 8,
            first_offset: 12,
        });
        assert_eq!(index.last_stable_offset(15), 10);
        let aborted = AbortedTxn {
            producer_id: 7,
            first_offset: 10,
            marker_offset: 15,
        };
        index.apply(TxnEvent::Ended {
            producer_id: 7,
            marker_offset: 15,
            aborted: Some(aborted),
        });
        // The marker at 15 is not durable while the high watermark is 15.
        assert_eq!(index.last_stable_offset(15), 10);
        assert_eq!(index.last_stable_offset(16), 12);
        index.apply(TxnEvent::Ended {
            producer_id: 8,
            marker_offset: 16,
            aborted: None,
        });
        assert_eq!(index.last_stable_offset(17), 17);
        // A new transaction of the same producer starts after its previous marker.
        index.apply(TxnEvent::Started {
            producer_id: 7,
            first_offset: 17,
        });
        assert_eq!(index.last_stable_offset(18), 17);
    }

    #[test]
    fn recovered_producers_reopen_their_transactions() {
        let mut producers = HashMap::new();
        producers.insert(
            3,
            ProducerEntry {
                epoch: 0,
                batches: Default::default(),
                txn_first_offset: Some(40),
                last_write_ms: 0,
            },
        );
        let aborted = AbortedTxn {
            producer_id: 3,
            first_offset: 5,
            marker_offset: 9,
        };
        let mut index = TxnIndex::new(&producers, [aborted]);
        assert_eq!(index.last_stable_offset(50), 40);
        assert_eq!(index.aborted.get(&9), Some(&aborted));
    }

    #[test]
    fn fetches_get_the_aborted_transactions_overlapping_their_range() {
        let aborted = |producer_id, first_offset, marker_offset| AbortedTxn {
            producer_id,
            first_offset,
            marker_offset,
        };
        let index = TxnIndex::new(
            &HashMap::new(),
            [aborted(1, 0, 4), aborted(2, 6, 9), aborted(3, 20, 30)],
        );
        let state = PartitionState::new(0, 40, HashMap::new(), index);
        let ids = |from, below| -> Vec<i64> {
            state
                .aborted_transactions(from, below)
                .iter()
                .map(|a| a.producer_id)
                .collect()
        };
        assert_eq!(ids(0, 40), vec![1, 2, 3]);
        assert_eq!(ids(5, 10), vec![2]);
        assert_eq!(ids(10, 20), Vec::<i64>::new());
        assert_eq!(ids(25, 26), vec![3]);
    }
}
