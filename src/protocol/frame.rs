//! Kafka framing: a 4-byte big-endian length, then that many bytes.

use tokio_util::codec::LengthDelimitedCodec;

/// A codec for request frames of at most `max_frame_bytes`. A longer (or negative, which
/// reads as huge) length is an error before any buffer for it is allocated, and the
/// connection closes.
pub fn request_codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use tokio_util::codec::Decoder;

    #[test]
    fn frames_over_the_limit_are_refused_unread() {
        let mut codec = request_codec(1024);
        let mut buf = BytesMut::new();
        buf.put_i32(5);
        buf.put_slice(b"hello");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().as_ref(), b"hello");
        let mut huge = BytesMut::new();
        huge.put_i32(i32::MAX);
        assert!(codec.decode(&mut huge).is_err());
        let mut negative = BytesMut::new();
        negative.put_i32(-1);
        assert!(request_codec(1024).decode(&mut negative).is_err());
    }
}
