//! Read-ahead for consumers catching up on a partition.
//!
//! A consumer reading a backlog sends one Fetch at a time per broker and waits for the
//! answer, so without read-ahead the broker sits idle while the client parses a response,
//! and the client sits idle while the broker reads the next chunk. When a read stops
//! because it hit its byte limit (more durable data follows), a *stream* goes on reading
//! the next chunks in the background, from where this one ended and with the same limit;
//! the consumer's next Fetch, which asks for exactly the next one, takes it.
//!
//! A stream keeps [`DEPTH`] chunks ahead of its consumer, not one: a batch object read
//! from the disk with direct I/O takes about as long as a whole fetch round trip (answer
//! and client), so a chunk started only when the previous one is taken would often not be
//! ready in time (docs/performance.md).
//!
//! Bounded: what the streams may hold (each chunk its limit, and at least what its cursor
//! reads ahead) adds up to at most the budget, and a stream nobody takes from is dropped
//! after [`UNCLAIMED_AFTER`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::read::{BatchCursor, MIN_READ_AHEAD};
use super::{Isolation, LogError};

/// A stream nobody has taken a chunk from for this long is dropped.
const UNCLAIMED_AFTER: Duration = Duration::from_secs(10);

/// Chunks a stream holds ahead of its consumer: one waiting to be taken, and one read after
/// it, waiting for room.
const DEPTH: usize = 2;

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
    /// What a stream for this request may hold: [`DEPTH`] chunks, each its records and the
    /// span of a batch object its cursor keeps (read ahead by at least [`MIN_READ_AHEAD`]).
    fn reservation(&self) -> usize {
        DEPTH * self.max_bytes.max(MIN_READ_AHEAD)
    }

    /// One consumer's sequential read: the same request but for the offset.
    fn stream(&self) -> ChunkRequest {
        ChunkRequest { offset: 0, ..*self }
    }
}

/// Chunks read in the background, in order, for one sequential read.
struct Stream {
    /// The offset the next chunk in `chunks` starts at.
    next_offset: i64,
    chunks: mpsc::Receiver<Result<Chunk, LogError>>,
    reader: JoinHandle<()>,
    last_taken: Instant,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Default)]
struct Held {
    /// The reservations of the streams in `streams`, which the budget bounds.
    reserved: usize,
    /// By [`ChunkRequest::stream`]. A stream being taken from is out of the map meanwhile.
    streams: HashMap<ChunkRequest, Stream>,
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

    /// The chunk read ahead for `request`, if a stream has it and it holds records. A
    /// request for another offset (the consumer seeked) ends the stream.
    pub async fn take(&self, request: &ChunkRequest) -> Option<Chunk> {
        // Out of the map and the budget while it is awaited: a fetch cancelled meanwhile
        // drops the stream with nothing left to give back.
        let mut stream = {
            let mut held = self.held();
            let stream = held.streams.remove(&request.stream())?;
            held.reserved -= request.reservation();
            if stream.next_offset != request.offset {
                return None;
            }
            stream
        };
        let chunk = match stream.chunks.recv().await {
            Some(Ok(chunk)) if !chunk.records.is_empty() => Some(chunk),
            // Read again in the foreground, where an error reaches the consumer.
            _ => None,
        };
        if let Some(next_offset) = chunk.as_ref().filter(|c| c.more).map(|c| c.next_offset) {
            let mut held = self.held();
            let fits = held.reserved + request.reservation() <= self.budget;
            if fits && !held.streams.contains_key(&request.stream()) {
                stream.next_offset = next_offset;
                stream.last_taken = Instant::now();
                held.reserved += request.reservation();
                held.streams.insert(request.stream(), stream);
            }
        }
        chunk
    }

    /// Starts a stream reading chunks from `request` on in the background, the first with
    /// `cursor` and each next one with the cursor the previous one stopped at, unless the
    /// budget is spent or a stream for the same read is under way.
    pub fn start<R, F>(&self, request: ChunkRequest, cursor: Option<BatchCursor>, mut read: R)
    where
        R: FnMut(ChunkRequest, Option<BatchCursor>) -> F + Send + 'static,
        F: Future<Output = Result<Chunk, LogError>> + Send,
    {
        let mut held = self.held();
        let now = Instant::now();
        let stale: Vec<ChunkRequest> = held
            .streams
            .iter()
            .filter(|(_, stream)| now.duration_since(stream.last_taken) > UNCLAIMED_AFTER)
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            held.streams.remove(&key);
            held.reserved -= key.reservation();
        }
        if held.streams.contains_key(&request.stream())
            || held.reserved + request.reservation() > self.budget
        {
            return;
        }
        held.reserved += request.reservation();
        // One chunk waits in the channel, the next in `send`.
        let (sender, chunks) = mpsc::channel(DEPTH - 1);
        let reader = tokio::spawn(async move {
            let (mut request, mut cursor) = (request, cursor);
            loop {
                let mut chunk = read(request, cursor.take()).await;
                let next = match &mut chunk {
                    Ok(chunk) if chunk.more && !chunk.records.is_empty() => {
                        cursor = chunk.cursor.take();
                        Some(chunk.next_offset)
                    }
                    _ => None,
                };
                if sender.send(chunk).await.is_err() {
                    return;
                }
                match next {
                    Some(offset) => request.offset = offset,
                    None => return,
                }
            }
        });
        let stream = Stream {
            next_offset: request.offset,
            chunks,
            reader,
            last_taken: now,
        };
        held.streams.insert(request.stream(), stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn request(offset: i64, max_bytes: usize) -> ChunkRequest {
        ChunkRequest {
            topic_id: Uuid::nil(),
            partition: 0,
            offset,
            max_bytes,
            isolation: Isolation::ReadUncommitted,
        }
    }

    /// One chunk at `request.offset`, the last one.
    fn last(
        records: &'static [u8],
    ) -> impl FnMut(
        ChunkRequest,
        Option<BatchCursor>,
    ) -> futures::future::Ready<Result<Chunk, LogError>>
           + Send
           + 'static {
        move |request, _| {
            futures::future::ready(Ok(Chunk {
                records: Bytes::from_static(records),
                next_offset: request.offset + 1,
                more: false,
                cursor: None,
            }))
        }
    }

    #[tokio::test]
    async fn a_chunk_is_taken_once_and_only_by_the_same_request() {
        let ahead = ReadAhead::new(DEPTH * MIN_READ_AHEAD);
        ahead.start(request(5, 10), None, last(b"batch"));
        assert!(ahead.take(&request(5, 20)).await.is_none());
        let taken = ahead.take(&request(5, 10)).await.map(|c| c.records);
        assert_eq!(taken.as_deref(), Some(&b"batch"[..]));
        assert!(ahead.take(&request(5, 10)).await.is_none());

        ahead.start(request(5, 10), None, last(b"batch"));
        assert!(
            ahead.take(&request(6, 10)).await.is_none(),
            "another offset"
        );
        assert!(
            ahead.take(&request(5, 10)).await.is_none(),
            "a seek ends the stream"
        );
    }

    #[tokio::test]
    async fn a_stream_reads_two_chunks_ahead_and_no_further() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let ahead = ReadAhead::new(DEPTH * MIN_READ_AHEAD);
        ahead.start(request(0, 10), None, move |request, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            futures::future::ready(Ok(Chunk {
                records: Bytes::from_static(b"batch"),
                next_offset: request.offset + 3,
                more: true,
                cursor: None,
            }))
        });
        let settled = || async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        };
        settled().await;
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        for (taken, offset) in [0, 3, 6].into_iter().enumerate() {
            let chunk = ahead.take(&request(offset, 10)).await.expect("read ahead");
            assert_eq!(chunk.next_offset, offset + 3);
            settled().await;
            assert_eq!(
                reads.load(Ordering::SeqCst),
                3 + taken,
                "one more per chunk taken"
            );
        }
    }

    #[tokio::test]
    async fn the_budget_bounds_the_streams_held_and_is_returned_when_they_end() {
        // Small limits count as what their cursors read ahead: two streams fit, not three.
        let ahead = ReadAhead::new(2 * DEPTH * MIN_READ_AHEAD + MIN_READ_AHEAD / 2);
        ahead.start(request(1, 10), None, last(b"a"));
        let mut other = request(2, 10);
        other.partition = 1;
        ahead.start(other, None, last(b"b"));
        let mut third = request(3, 10);
        third.partition = 2;
        ahead.start(third, None, last(b"c"));
        assert!(ahead.take(&third).await.is_none(), "over budget");
        assert!(ahead.take(&request(1, 10)).await.is_some());
        ahead.start(third, None, last(b"c"));
        assert!(ahead.take(&third).await.is_some());
    }

    #[tokio::test]
    async fn a_fetch_cancelled_while_waiting_gives_its_budget_back() {
        let ahead = ReadAhead::new(DEPTH * MIN_READ_AHEAD);
        ahead.start(request(1, 10), None, |_, _| futures::future::pending());
        let stuck = request(1, 10);
        let waited = tokio::time::timeout(Duration::from_millis(10), ahead.take(&stuck));
        assert!(waited.await.is_err(), "the read never finishes");
        let mut other = request(1, 10);
        other.partition = 1;
        ahead.start(other, None, last(b"b"));
        assert!(
            ahead.take(&other).await.is_some(),
            "the budget is free again"
        );
    }

    #[tokio::test]
    async fn empty_or_failed_reads_are_not_served() {
        let ahead = ReadAhead::new(2 * DEPTH * MIN_READ_AHEAD);
        ahead.start(request(1, 10), None, last(b""));
        let mut failing = request(2, 10);
        failing.partition = 1;
        ahead.start(failing, None, |_, _| {
            futures::future::ready(Err(LogError::Corrupt("test".into())))
        });
        assert!(ahead.take(&request(1, 10)).await.is_none());
        assert!(ahead.take(&failing).await.is_none());
    }
}
