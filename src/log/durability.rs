//! Group commit: completes appends when SlateDB reports their WAL write durable.
//!
//! Appends never wait on a flush of their own. Each write is queued with its SlateDB
//! sequence number; one task follows SlateDB's `durable_seq` watch and, as it advances,
//! moves the affected partitions' high watermarks and then completes the waiting acks, in
//! write order. So a producer with acks=all is answered only once a consumer can read its
//! records, and a fetch never sees data a crash could take back.
//!
//! Every write a client waits on, appends and metadata writes ([`PendingWrite`]) alike,
//! asks the [`WalFlusher`] for a WAL write, so none waits for SlateDB's flush tick.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use slatedb::config::{FlushOptions, FlushType};
use slatedb::{CloseReason, Db, DbStatus, WriteHandle};
use tokio::sync::{oneshot, watch, Notify};

use super::partition::PartitionLog;
use super::{LogError, LogStore};

struct WaitingAppend {
    seq: u64,
    /// Each partition the write touched, with its end offset after the write.
    advances: Vec<(Arc<PartitionLog>, i64)>,
    done: oneshot::Sender<()>,
}

/// Writes waiting for durability, in SlateDB sequence order.
#[derive(Default)]
pub(super) struct DurabilityQueue {
    pending: Mutex<VecDeque<WaitingAppend>>,
    /// Counts released writes: key-stream and global-log readers wait on it.
    appended: watch::Sender<u64>,
}

impl DurabilityQueue {
    /// Queues a write; must be called in the order the writes were made.
    pub fn push(&self, seq: u64, advances: Vec<(Arc<PartitionLog>, i64)>) -> oneshot::Receiver<()> {
        let (done, receiver) = oneshot::channel();
        self.lock().push_back(WaitingAppend {
            seq,
            advances,
            done,
        });
        receiver
    }

    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Completes every queued write with a sequence number at or below `durable_seq`.
    pub fn release(&self, durable_seq: u64) {
        let mut released = Vec::new();
        {
            let mut pending = self.lock();
            while pending.front().is_some_and(|w| w.seq <= durable_seq) {
                released.extend(pending.pop_front());
            }
        }
        for write in released {
            for (partition, end) in &write.advances {
                if let Some(state) = partition.state.get() {
                    state.advance_high_watermark(*end);
                }
            }
            // The producer may have gone away (acks=0/1, or a closed connection).
            let _ = write.done.send(());
            self.appended.send_modify(|count| *count += 1);
        }
    }

    /// Fails every waiting write: dropping the senders wakes their receivers with an error.
    fn abandon(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<WaitingAppend>> {
        // The queue holds plain data; a panic elsewhere cannot leave it half-updated.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// WAL writes after which the flusher also flushes the memtable to an L0 table, at most
/// once per [`MIN_MEMTABLE_FLUSH_INTERVAL`].
///
/// A start replays every WAL file written since the last memtable flush. SlateDB flushes
/// the memtable at 64 MiB or after 4096 WAL files (the least it allows), and large appends
/// leave only their locations there, so a producer of large appends reached 4096 files:
/// ~200 ms before the broker listened, in a local folder (~50 us a file), and a GET per
/// file on S3. With this bound (or 2 s of WAL writes, whichever is more) the same start
/// took 69-114 ms (docs/performance.md).
const WAL_WRITES_PER_MEMTABLE_FLUSH: u64 = 512;

/// Offset commits, thousands a second, each ask for a WAL write: without a floor the
/// memtable would be flushed several times a second, and 8 committers made 15-20% fewer
/// commits. The extra L0 tables stay few for the compactor too.
const MIN_MEMTABLE_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts a WAL write as soon as an append waits for one, rather than at SlateDB's next
/// flush tick: at most one write in flight and one more requested, so appends that arrive
/// during a write share the next one (group commit). The tick stays as a backstop.
pub(super) struct WalFlusher {
    wanted: Arc<Notify>,
}

impl WalFlusher {
    pub fn spawn(db: Db) -> Self {
        let wanted = Arc::new(Notify::new());
        let requests = wanted.clone();
        tokio::spawn(async move {
            let mut since_memtable_flush = 0;
            let mut last_memtable_flush = tokio::time::Instant::now();
            let mut memtable_flush: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                requests.notified().await;
                if let Err(e) = db.flush().await {
                    // Closed or failing: the status follower reports it and the broker stops.
                    tracing::debug!(error = %e, "WAL flush on request failed");
                    continue;
                }
                since_memtable_flush += 1;
                let due = since_memtable_flush >= WAL_WRITES_PER_MEMTABLE_FLUSH
                    && last_memtable_flush.elapsed() >= MIN_MEMTABLE_FLUSH_INTERVAL;
                let idle = memtable_flush.as_ref().is_none_or(|f| f.is_finished());
                if due && idle {
                    since_memtable_flush = 0;
                    last_memtable_flush = tokio::time::Instant::now();
                    // Not awaited here: WAL writes, which acks wait on, go on meanwhile.
                    memtable_flush = Some(tokio::spawn(flush_memtable(db.clone())));
                }
            }
        });
        WalFlusher { wanted }
    }

    /// Asks for a WAL write; requests made while one is in flight fold into the next.
    pub fn request(&self) {
        self.wanted.notify_one();
    }
}

/// Bounds what the next start replays (see [`WAL_WRITES_PER_MEMTABLE_FLUSH`]).
async fn flush_memtable(db: Db) {
    let flushed = db
        .flush_with_options(FlushOptions {
            flush_type: FlushType::MemTable,
        })
        .await;
    match flushed {
        Ok(()) => tracing::debug!("memtable flushed to bound the WAL replayed at start"),
        Err(e) => tracing::debug!(error = %e, "memtable flush failed"),
    }
}

/// A metadata write on its way to durability (`None`: nothing was written).
pub struct PendingWrite(pub(super) Option<WriteHandle>);

impl PendingWrite {
    pub async fn durable(self) -> Result<(), LogError> {
        if let Some(handle) = self.0 {
            handle.await_durable().await?;
        }
        Ok(())
    }
}

impl LogStore {
    /// A metadata write (topic records, offset commits, coordinator records, log start
    /// moves) on its way to durability. It asks for a WAL write at once, as appends do, so
    /// nothing a client waits on waits for the flush tick.
    pub(super) fn pending_write(&self, handle: WriteHandle) -> PendingWrite {
        self.wal_flusher.request();
        PendingWrite(Some(handle))
    }
}

/// Follows SlateDB's status until the database closes; returns why it closed.
pub(super) async fn follow(
    mut status: watch::Receiver<DbStatus>,
    queue: Arc<DurabilityQueue>,
) -> Option<CloseReason> {
    loop {
        let (durable_seq, close_reason) = {
            let current = status.borrow_and_update();
            (current.durable_seq, current.close_reason)
        };
        queue.release(durable_seq);
        if close_reason.is_some() {
            queue.abandon();
            return close_reason;
        }
        if status.changed().await.is_err() {
            queue.abandon();
            return None;
        }
    }
}
