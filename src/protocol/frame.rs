//! Kafka framing: a 4-byte big-endian length, then that many bytes.
//!
//! The request bytes all connections hold are bounded by one [`RequestBudget`], as Kafka's
//! `queued.max.request.bytes` bounds them: a connection takes its frame's share of the
//! budget before it reads the frame's body, and the share goes back when the request is
//! answered. While the budget is spent, connections stop reading and TCP holds their
//! clients back, so the broker's memory follows its configuration, not its load.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;

/// The length field before every frame.
const LENGTH_BYTES: usize = 4;

/// Bytes read from the socket at a time while no frame's length is known yet; also what a
/// connection may read ahead of its budget.
const READ_CHUNK: usize = 8 << 10;

/// Request bytes the broker holds at once, shared by every connection.
///
/// A frame takes its share as soon as that much is free, whatever else waits, as Kafka's
/// memory pool does: a connection waiting to read a large produce request does not hold
/// up the heartbeats and offset commits of the others, which need little.
#[derive(Clone)]
pub struct RequestBudget {
    inner: Arc<BudgetState>,
}

struct BudgetState {
    total: usize,
    free: AtomicUsize,
    /// Signalled whenever a share comes back.
    returned: Notify,
}

impl RequestBudget {
    pub fn new(total: usize) -> Self {
        RequestBudget {
            inner: Arc::new(BudgetState {
                total,
                free: AtomicUsize::new(total),
                returned: Notify::new(),
            }),
        }
    }

    /// Waits until a frame of `frame_len` bytes can take its share. A frame larger than
    /// the whole budget takes all of it, so it is served alone rather than never.
    async fn take(&self, frame_len: usize) -> Share {
        let bytes = frame_len.min(self.inner.total);
        loop {
            // Listening before trying, so a share returned in between is not missed.
            let returned = self.inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let taken = self
                .inner
                .free
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                    free.checked_sub(bytes)
                });
            if taken.is_ok() {
                return Share {
                    budget: self.inner.clone(),
                    bytes,
                };
            }
            returned.await;
        }
    }
}

/// A frame's part of the budget; given back when dropped.
pub struct Share {
    budget: Arc<BudgetState>,
    bytes: usize,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.free.fetch_add(self.bytes, Ordering::AcqRel);
        self.budget.returned.notify_waiters();
    }
}

/// One request frame and its share of the budget, held until the request is answered.
pub struct Frame {
    pub bytes: Bytes,
    pub share: Share,
}

/// Reads request frames of at most `max_frame_bytes` from one connection.
pub struct FrameReader<R> {
    source: R,
    buffer: BytesMut,
    max_frame_bytes: usize,
    budget: RequestBudget,
    /// The share taken for the frame being read, kept here so that a read cancelled by the
    /// connection's other work resumes where it was.
    share: Option<Share>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(source: R, max_frame_bytes: usize, budget: &RequestBudget) -> Self {
        FrameReader {
            source,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            max_frame_bytes,
            budget: budget.clone(),
            share: None,
        }
    }

    /// The next frame, or `None` once the client ended the stream between frames. A length
    /// over the limit (or negative, which reads as huge) is an error before any buffer for
    /// the frame is allocated. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Option<io::Result<Frame>> {
        loop {
            if self.buffer.len() >= LENGTH_BYTES {
                let len = match self.frame_len() {
                    Ok(len) => len,
                    Err(e) => return Some(Err(e)),
                };
                if self.share.is_none() {
                    self.share = Some(self.budget.take(len).await);
                }
                let framed = LENGTH_BYTES + len;
                if self.buffer.len() >= framed {
                    self.buffer.advance(LENGTH_BYTES);
                    let bytes = self.buffer.split_to(len).freeze();
                    let share = self.share.take().expect("taken above");
                    return Some(Ok(Frame { bytes, share }));
                }
                self.buffer.reserve(framed - self.buffer.len());
            } else {
                self.buffer.reserve(READ_CHUNK);
            }
            match self.source.read_buf(&mut self.buffer).await {
                Ok(0) if self.buffer.is_empty() => return None,
                Ok(0) => return Some(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn frame_len(&self) -> io::Result<usize> {
        let field: [u8; LENGTH_BYTES] = self.buffer[..LENGTH_BYTES]
            .try_into()
            .expect("the length field is there");
        let len = i32::from_be_bytes(field);
        match usize::try_from(len) {
            Ok(len) if len <= self.max_frame_bytes => Ok(len),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a frame of {len} bytes; the limit is {}",
                    self.max_frame_bytes
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use tokio::io::AsyncWriteExt;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32);
        frame.put_slice(body);
        frame.to_vec()
    }

    #[tokio::test]
    async fn frames_over_the_limit_are_refused_unread() {
        let budget = RequestBudget::new(1 << 20);
        for length in [i32::MAX, -1, 1025] {
            let mut stream = length.to_be_bytes().to_vec();
            stream.extend_from_slice(b"hello");
            let mut reader = FrameReader::new(stream.as_slice(), 1024, &budget);
            let error = reader.next().await.unwrap().err().unwrap();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        }
    }

    #[tokio::test]
    async fn frames_are_split_from_a_stream_and_its_end() {
        let budget = RequestBudget::new(1 << 20);
        let mut stream = framed(b"hello");
        stream.extend(framed(b""));
        stream.extend(framed(&[7; 20_000]));
        let mut reader = FrameReader::new(stream.as_slice(), 1 << 20, &budget);
        assert_eq!(
            reader.next().await.unwrap().unwrap().bytes.as_ref(),
            b"hello"
        );
        assert!(reader.next().await.unwrap().unwrap().bytes.is_empty());
        assert_eq!(reader.next().await.unwrap().unwrap().bytes.len(), 20_000);
        assert!(reader.next().await.is_none());

        let cut = &framed(b"hello")[..6];
        let mut reader = FrameReader::new(cut, 1 << 20, &budget);
        let error = reader.next().await.unwrap().err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_frame_waits_for_its_share_before_its_body_is_read() {
        let budget = RequestBudget::new(30_000);
        let held = budget.take(20_000).await;
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(server, 1 << 20, &budget);
        client.write_all(&framed(&[1; 20_000])).await.unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), reader.next());
        assert!(waiting.await.is_err(), "read past a spent budget");
        // Only the first chunk was read: the rest of the body is still in the socket.
        assert_eq!(reader.buffer.len(), READ_CHUNK);
        drop(held);
        let frame = reader.next().await.unwrap().unwrap();
        assert_eq!(frame.bytes.len(), 20_000);
        assert_eq!(budget.inner.free.load(Ordering::Acquire), 10_000);
        drop(frame);
        assert_eq!(budget.inner.free.load(Ordering::Acquire), 30_000);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_takes_all_of_it() {
        let budget = RequestBudget::new(10);
        let stream = framed(&[1; 50]);
        let mut reader = FrameReader::new(stream.as_slice(), 1 << 20, &budget);
        let frame = reader.next().await.unwrap().unwrap();
        assert_eq!(frame.bytes.len(), 50);
        assert_eq!(budget.inner.free.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_small_frame_is_not_held_up_by_a_large_one_waiting() {
        let budget = RequestBudget::new(100);
        let held = budget.take(60).await;
        let large = framed(&[1; 50]);
        let mut waiting = FrameReader::new(large.as_slice(), 1 << 20, &budget);
        let timeout = tokio::time::timeout(std::time::Duration::from_millis(20), waiting.next());
        assert!(timeout.await.is_err());
        let small = framed(&[2; 30]);
        let mut passing = FrameReader::new(small.as_slice(), 1 << 20, &budget);
        assert_eq!(passing.next().await.unwrap().unwrap().bytes.len(), 30);
        drop(held);
        assert_eq!(waiting.next().await.unwrap().unwrap().bytes.len(), 50);
    }
}
