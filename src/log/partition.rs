//! One topic-partition's key log: its identity and its in-memory offsets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{watch, OnceCell};
use uuid::Uuid;

use super::producers::ProducerEntry;

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
}

impl PartitionState {
    pub fn new(
        log_start_offset: i64,
        end_offset: i64,
        producers: HashMap<i64, ProducerEntry>,
    ) -> Self {
        PartitionState {
            next_offset: AtomicI64::new(end_offset),
            high_watermark: watch::Sender::new(end_offset),
            log_start_offset: AtomicI64::new(log_start_offset),
            producers: Mutex::new(producers),
        }
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
}
