//! Read-ahead for consumers catching up on a partition.
//!
//! A consumer reading a backlog sends one Fetch at a time per broker and waits for the
//! answer, so without read-ahead the broker sits idle while the client parses a response,
//! and the client sits idle while the broker reads the next chunk. When a read stops
//! because it hit its byte limit (more durable data follows), the next chunk, from where
//! this one ended and with the same limit, is read in the background; the consumer's next
//! Fetch, which asks for exactly that, takes it.
//!
//! Bounded: what the chunks held or being read may hold (each its limit, and at least what
//! its cursor reads ahead) adds up to at most the budget, and a chunk nobody takes is
//! dropped after [`UNCLAIMED_AFTER`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::read::{BatchCursor, MIN_READ_AHEAD};
use super::{Isolation, LogError};

/// A chunk read ahead and not asked for within this long is dropped.
const UNCLAIMED_AFTER: Duration = Duration::from_secs(10);

/// Whole batches read from one partition.
pub(super) struct Chunk {
    pub records: Bytes,
    /// The offset after the last record returned.
    pub next_offset: i64,
    /// Durable records at `next_offset` and after existed when the chunk was read.
    pub more: bool,
    /// Where the read stopped, to read the next chunk from without a new scan.
    pub cursor: Option<BatchCursor>,
}

/// What a read asked for; a chunk read ahead is taken only by a read asking for the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ChunkRequest {
    pub topic_id: Uuid,
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: usize,
    pub isolation: Isolation,
}

impl ChunkRequest {
    /// What a chunk read for this request may hold: its records, and the span of a batch
    /// object its cursor keeps (read ahead by at least [`MIN_READ_AHEAD`]).
    fn reservation(&self) -> usize {
        self.max_bytes.max(MIN_READ_AHEAD)
    }
}

struct Ahead {
    started: Instant,
    read: JoinHandle<Result<Chunk, LogError>>,
}

#[derive(Default)]
struct Held {
    /// The limits of the chunks in `reads`, which the budget bounds.
    reserved: usize,
    reads: HashMap<ChunkRequest, Ahead>,
}

pub(super) struct ReadAhead {
    budget: usize,
    held: Mutex<Held>,
}

impl ReadAhead {
    /// `budget`: bytes of read-ahead chunks held at once, over all partitions (0 disables it).
    pub fn new(budget: usize) -> Self {
        ReadAhead {
            budget,
            held: Mutex::new(Held::default()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunk read ahead for `request`, if there is one and it holds records.
    pub async fn take(&self, request: &ChunkRequest) -> Option<Chunk> {
        let ahead = {
            let mut held = self.held();
            let ahead = held.reads.remove(request)?;
            held.reserved -= request.reservation();
            ahead
        };
        match ahead.read.await {
            Ok(Ok(chunk)) if !chunk.records.is_empty() => Some(chunk),
            // Read again in the foreground, where an error reaches the consumer.
            _ => None,
        }
    }

    /// Starts reading `request` in the background with `read`, unless the budget is spent
    /// or the same read is already under way.
    pub fn start<F>(&self, request: ChunkRequest, read: impl FnOnce() -> F)
    where
        F: std::future::Future<Output = Result<Chunk, LogError>> + Send + 'static,
    {
        let mut held = self.held();
        let now = Instant::now();
        let stale: Vec<ChunkRequest> = held
            .reads
            .iter()
            .filter(|(_, ahead)| now.duration_since(ahead.started) > UNCLAIMED_AFTER)
            .map(|(request, _)| *request)
            .collect();
        for request in stale {
            if let Some(ahead) = held.reads.remove(&request) {
                ahead.read.abort();
                held.reserved -= request.reservation();
            }
        }
        if held.reads.contains_key(&request) || held.reserved + request.reservation() > self.budget
        {
            return;
        }
        held.reserved += request.reservation();
        let read = tokio::spawn(read());
        held.reads.insert(request, Ahead { started: now, read });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(offset: i64, max_bytes: usize) -> ChunkRequest {
        ChunkRequest {
            topic_id: Uuid::nil(),
            partition: 0,
            offset,
            max_bytes,
            isolation: Isolation::ReadUncommitted,
        }
    }

    fn chunk(records: &'static [u8]) -> Chunk {
        Chunk {
            records: Bytes::from_static(records),
            next_offset: 1,
            more: false,
            cursor: None,
        }
    }

    #[tokio::test]
    async fn a_chunk_is_taken_once_and_only_by_the_same_request() {
        let ahead = ReadAhead::new(MIN_READ_AHEAD);
        ahead.start(request(5, 10), || async { Ok(chunk(b"batch")) });
        assert!(ahead.take(&request(5, 20)).await.is_none());
        assert!(ahead.take(&request(6, 10)).await.is_none());
        let taken = ahead.take(&request(5, 10)).await.map(|c| c.records);
        assert_eq!(taken.as_deref(), Some(&b"batch"[..]));
        assert!(ahead.take(&request(5, 10)).await.is_none());
    }

    #[tokio::test]
    async fn the_budget_bounds_the_chunks_held_and_is_returned_when_taken() {
        // Small limits count as what their cursors read ahead: two fit, not three.
        let ahead = ReadAhead::new(2 * MIN_READ_AHEAD + MIN_READ_AHEAD / 2);
        ahead.start(request(1, 10), || async { Ok(chunk(b"a")) });
        ahead.start(request(2, 10), || async { Ok(chunk(b"b")) });
        ahead.start(request(3, 10), || async { Ok(chunk(b"c")) });
        assert!(ahead.take(&request(3, 10)).await.is_none(), "over budget");
        assert!(ahead.take(&request(1, 10)).await.is_some());
        ahead.start(request(3, 10), || async { Ok(chunk(b"c")) });
        assert!(ahead.take(&request(3, 10)).await.is_some());
    }

    #[tokio::test]
    async fn empty_or_failed_reads_are_not_served() {
        let ahead = ReadAhead::new(2 * MIN_READ_AHEAD);
        ahead.start(request(1, 10), || async { Ok(chunk(b"")) });
        ahead.start(request(2, 10), || async {
            Err(LogError::Corrupt("test".into()))
        });
        assert!(ahead.take(&request(1, 10)).await.is_none());
        assert!(ahead.take(&request(2, 10)).await.is_none());
    }
}
