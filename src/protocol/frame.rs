//! Kafka framing: a 4-byte big-endian length, then that many bytes.
//!
//! A connection takes a frame's share of the broker's request budget before it reads the
//! frame's body; while the budget is spent, connections stop reading and TCP holds their
//! clients back.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::budget::{ByteBudget, Share};

/// The length field before every frame.
const LENGTH_BYTES: usize = 4;

/// Bytes read from the socket at a time while no frame's length is known yet; also what a
/// connection may read ahead of its budget.
const READ_CHUNK: usize = 8 << 10;

/// One request frame and its share of the request budget, held until it is answered.
pub struct Frame {
    pub bytes: Bytes,
    pub share: Share,
}

/// Reads request frames of at most `max_frame_bytes` from one connection.
pub struct FrameReader<R> {
    source: R,
    buffer: BytesMut,
    max_frame_bytes: usize,
    budget: ByteBudget,
    /// The share taken for the frame being read, kept here so that a read cancelled by the
    /// connection's other work resumes where it was.
    share: Option<Share>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(source: R, max_frame_bytes: usize, budget: &ByteBudget) -> Self {
        FrameReader {
            source,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            max_frame_bytes,
            budget: budget.clone(),
            share: None,
        }
    }

    /// Changes the largest frame accepted from the next one on.
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
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
        let budget = ByteBudget::new(1 << 20, "test");
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
        let budget = ByteBudget::new(1 << 20, "test");
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
        let budget = ByteBudget::new(30_000, "test");
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
        assert_eq!(budget.free(), 10_000);
        drop(frame);
        assert_eq!(budget.free(), 30_000);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_takes_all_of_it() {
        let budget = ByteBudget::new(10, "test");
        let stream = framed(&[1; 50]);
        let mut reader = FrameReader::new(stream.as_slice(), 1 << 20, &budget);
        let frame = reader.next().await.unwrap().unwrap();
        assert_eq!(frame.bytes.len(), 50);
        assert_eq!(budget.free(), 0);
    }
}
