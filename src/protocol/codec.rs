//! Request decoding and response encoding for one frame (the 4-byte length is the
//! framing layer's).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, FetchResponse, RequestHeader, RequestKind, ResponseHeader,
    ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::{legacy, versions};

/// A decoded frame.
#[derive(Debug)]
pub enum Incoming {
    Request {
        header: RequestHeader,
        body: Box<RequestKind>,
    },
    /// ApiVersions at a version newer than Shale's: answered in v0 with UNSUPPORTED_VERSION
    /// and the supported ranges, so the client can retry with one it shares (KIP-511).
    ApiVersionsTooNew { correlation_id: i32 },
}

impl Incoming {
    pub fn is_produce(&self) -> bool {
        matches!(self, Incoming::Request { body, .. } if matches!(**body, RequestKind::Produce(_)))
    }
}

/// Why a frame cannot be served; the connection is closed, as Kafka does.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("{api:?} version {version} is not supported")]
    UnsupportedVersion { api: ApiKey, version: i16 },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

pub fn decode_request(mut frame: Bytes) -> Result<Incoming, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::TooShort(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(raw_key).map_err(|_| DecodeError::UnknownApi(raw_key))?;
    let Some((min, max)) = versions::supported(api) else {
        return Err(DecodeError::UnknownApi(raw_key));
    };
    if version > max && api == ApiKey::ApiVersions {
        return Ok(Incoming::ApiVersionsTooNew { correlation_id });
    }
    if version < min || version > max {
        return Err(DecodeError::UnsupportedVersion { api, version });
    }
    // Some of the decoder's messages end in a newline; the reason goes into one log line.
    let malformed = |e: anyhow::Error| DecodeError::Malformed {
        api,
        version,
        reason: e.to_string().trim_end().to_string(),
    };
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(malformed)?;
    let body = match legacy::decoded_as(api, version) {
        Some(decoded_as) => {
            let mut upgraded = legacy::upgrade_request(api, frame).map_err(malformed)?;
            RequestKind::decode(api, &mut upgraded, decoded_as)
        }
        None => RequestKind::decode(api, &mut frame, version),
    }
    .map_err(malformed)?;
    Ok(Incoming::Request {
        header,
        body: Box::new(body),
    })
}

/// A response frame, length prefix included, as the pieces to write in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseFrame {
    pub pieces: Vec<Bytes>,
}

/// Fetch record sets at least this large are written from the buffers they were read into
/// rather than copied into the encoded response.
const SPLICE_MIN_BYTES: usize = 16 << 10;

/// Fetch responses are encoded with markers in place of large record sets, which are then
/// spliced back in as their own pieces (see [`splice_records`]). A marker is this tag,
/// random per process so no client-chosen bytes (a topic name) can imitate it, then the
/// record set's index, u64.
fn marker_tag() -> &'static [u8; 8] {
    static TAG: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let id = uuid::Uuid::new_v4();
        id.as_bytes()[..8].try_into().expect("a uuid has 16 bytes")
    })
}

const MARKER_LEN: usize = 16;

/// Encodes a response frame, length prefix included. Large Fetch record sets are not
/// copied: they become pieces of their own.
pub fn encode_response(
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    mut body: ResponseKind,
) -> anyhow::Result<ResponseFrame> {
    let record_sets = match &mut body {
        ResponseKind::Fetch(fetch) => take_large_record_sets(fetch),
        _ => Vec::new(),
    };
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let mut frame = BytesMut::with_capacity(64);
    frame.put_i32(0);
    header.encode(&mut frame, api.response_header_version(version))?;
    if legacy::decoded_as(api, version).is_some() {
        legacy::encode_response(&body, version, &mut frame)?;
    } else {
        body.encode(&mut frame, version)?;
    }
    let length = i32::try_from(frame.len() - 4)?;
    frame[..4].copy_from_slice(&length.to_be_bytes());
    if record_sets.is_empty() {
        return Ok(ResponseFrame {
            pieces: vec![frame.freeze()],
        });
    }
    // Fetch v12 and later encode records as compact bytes (unsigned varint of length + 1),
    // older versions with an i32 length.
    splice_records(frame, record_sets, version >= 12)
}

/// Replaces each large record set of `fetch` with a marker, returning the record sets in
/// encoding order.
fn take_large_record_sets(fetch: &mut FetchResponse) -> Vec<Bytes> {
    let mut record_sets = Vec::new();
    for partition in fetch
        .responses
        .iter_mut()
        .flat_map(|t| t.partitions.iter_mut())
    {
        if partition
            .records
            .as_ref()
            .is_some_and(|r| r.len() >= SPLICE_MIN_BYTES)
        {
            let mut marker = BytesMut::with_capacity(MARKER_LEN);
            marker.put_slice(marker_tag());
            marker.put_u64(record_sets.len() as u64);
            let records = partition.records.replace(marker.freeze());
            record_sets.extend(records);
        }
    }
    record_sets
}

/// Cuts the encoded `frame` at each marker and puts the record set's real length and bytes
/// there, fixing the frame's length prefix.
fn splice_records(
    mut frame: BytesMut,
    record_sets: Vec<Bytes>,
    compact: bool,
) -> anyhow::Result<ResponseFrame> {
    let marker_prefix: &[u8] = if compact {
        &[MARKER_LEN as u8 + 1]
    } else {
        &[0, 0, 0, MARKER_LEN as u8]
    };
    let finder = memchr::memmem::Finder::new(marker_tag());
    let mut cuts = Vec::with_capacity(record_sets.len());
    for at in finder.find_iter(&frame) {
        let index = u64::from_be_bytes(frame[at + 8..at + MARKER_LEN].try_into()?);
        anyhow::ensure!(
            index == cuts.len() as u64 && frame[..at].ends_with(marker_prefix),
            "record set marker {index} out of place in a Fetch response"
        );
        cuts.push(at);
    }
    anyhow::ensure!(
        cuts.len() == record_sets.len(),
        "{} of {} record set markers found in a Fetch response",
        cuts.len(),
        record_sets.len()
    );
    let mut lengths = BytesMut::new();
    let mut spans = Vec::with_capacity(cuts.len());
    let mut total = frame.len() - 4;
    for records in &record_sets {
        let start = lengths.len();
        if compact {
            put_unsigned_varint(&mut lengths, u64::try_from(records.len())? + 1);
        } else {
            lengths.put_i32(i32::try_from(records.len())?);
        }
        spans.push(start..lengths.len());
        total = total - marker_prefix.len() - MARKER_LEN + (lengths.len() - start) + records.len();
    }
    frame[..4].copy_from_slice(&i32::try_from(total)?.to_be_bytes());
    let frame = frame.freeze();
    let lengths = lengths.freeze();
    let mut pieces = Vec::with_capacity(3 * record_sets.len() + 1);
    let mut from = 0;
    for ((at, records), span) in cuts.into_iter().zip(record_sets).zip(spans) {
        pieces.push(frame.slice(from..at - marker_prefix.len()));
        pieces.push(lengths.slice(span));
        pieces.push(records);
        from = at + MARKER_LEN;
    }
    pieces.push(frame.slice(from..));
    Ok(ResponseFrame { pieces })
}

fn put_unsigned_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// The ApiVersions response body for `version`, listing [`versions::SUPPORTED`].
pub fn api_versions_response(error: Option<ResponseError>) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error.map_or(0, |e| e.code());
    response.api_keys = versions::SUPPORTED
        .iter()
        .map(|&(api, min, max)| {
            let mut entry = ApiVersion::default();
            entry.api_key = api as i16;
            entry.min_version = min;
            entry.max_version = max;
            entry
        })
        .collect();
    response
}

/// The v0 ApiVersions answer to a client that asked with a version too new for us.
pub fn encode_api_versions_too_new(correlation_id: i32) -> anyhow::Result<ResponseFrame> {
    let body = api_versions_response(Some(ResponseError::UnsupportedVersion));
    encode_response(
        correlation_id,
        ApiKey::ApiVersions,
        0,
        ResponseKind::ApiVersions(body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{MetadataRequest, RequestHeader};
    use kafka_protocol::protocol::StrBytes;

    fn request_frame(api: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = 7;
        header.client_id = Some(StrBytes::from_static_str("test"));
        let mut frame = BytesMut::new();
        header
            .encode(&mut frame, api.request_header_version(version))
            .unwrap();
        body.encode(&mut frame, version).unwrap();
        frame.freeze()
    }

    #[test]
    fn a_supported_request_decodes() {
        let frame = request_frame(ApiKey::Metadata, 12, &MetadataRequest::default());
        match decode_request(frame).unwrap() {
            Incoming::Request { header, body } => {
                assert_eq!(header.correlation_id, 7);
                assert!(matches!(*body, RequestKind::Metadata(_)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_too_new_api_versions_gets_the_fallback() {
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::ApiVersions as i16);
        frame.put_i16(99);
        frame.put_i32(42);
        frame.put_slice(b"whatever follows is not decoded");
        assert!(matches!(
            decode_request(frame.freeze()),
            Ok(Incoming::ApiVersionsTooNew { correlation_id: 42 })
        ));
        let response = encode_api_versions_too_new(42).unwrap();
        let mut body = response.pieces.concat();
        let mut body = Bytes::from(body.split_off(8));
        let decoded = ApiVersionsResponse::decode(&mut body, 0).unwrap();
        assert_eq!(decoded.error_code, 35);
        assert!(decoded
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Produce as i16));
    }

    fn fetch_response(record_sets: &[Option<Bytes>]) -> FetchResponse {
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        use kafka_protocol::messages::TopicName;
        let mut topic = FetchableTopicResponse::default();
        topic.topic = TopicName(StrBytes::from_static_str("topic"));
        for (index, records) in record_sets.iter().enumerate() {
            let mut partition = PartitionData::default();
            partition.partition_index = index as i32;
            partition.high_watermark = 1000 + index as i64;
            partition.records = records.clone();
            topic.partitions.push(partition);
        }
        let mut response = FetchResponse::default();
        response.responses = vec![topic.clone(), topic];
        response
    }

    #[test]
    fn spliced_fetch_responses_decode_as_if_encoded_whole() {
        let large = |byte: u8, len: usize| Some(Bytes::from(vec![byte; len]));
        let record_sets = [
            large(1, SPLICE_MIN_BYTES),
            Some(Bytes::from_static(b"small")),
            None,
            large(2, 300_000),
            large(3, 70_000),
        ];
        let response = fetch_response(&record_sets);
        for version in [4, 11, 12] {
            let whole = {
                let mut header = ResponseHeader::default();
                header.correlation_id = 9;
                let mut frame = BytesMut::new();
                frame.put_i32(0);
                header
                    .encode(&mut frame, ApiKey::Fetch.response_header_version(version))
                    .unwrap();
                response.encode(&mut frame, version).unwrap();
                let length = (frame.len() - 4) as i32;
                frame[..4].copy_from_slice(&length.to_be_bytes());
                frame.freeze()
            };
            let spliced = encode_response(
                9,
                ApiKey::Fetch,
                version,
                ResponseKind::Fetch(response.clone()),
            )
            .unwrap();
            // Three large record sets in each of the two topics.
            assert_eq!(spliced.pieces.len(), 3 * 6 + 1, "v{version}");
            assert_eq!(spliced.pieces.concat(), whole.to_vec(), "v{version}");
        }
    }

    #[test]
    fn a_topic_name_that_looks_like_a_marker_does_not_confuse_the_splice() {
        use kafka_protocol::messages::TopicName;
        let mut response = fetch_response(&[Some(Bytes::from(vec![7; SPLICE_MIN_BYTES]))]);
        let mut lookalike = marker_tag().to_vec();
        lookalike.extend_from_slice(&[0; 8]);
        response.responses[0].topic = TopicName(StrBytes::from_string(
            String::from_utf8_lossy(&lookalike).into(),
        ));
        let frame = encode_response(1, ApiKey::Fetch, 12, ResponseKind::Fetch(response));
        // Either the tag is not valid UTF-8 (the name differs) or the out-of-place marker is
        // refused; never a frame with a record set in the wrong place.
        if let Ok(frame) = frame {
            let bytes = frame.pieces.concat();
            let mut body = Bytes::from(bytes).slice(4..);
            ResponseHeader::decode(&mut body, 1).unwrap();
            let decoded = FetchResponse::decode(&mut body, 12).unwrap();
            assert_eq!(
                decoded.responses[1].partitions[0]
                    .records
                    .as_ref()
                    .unwrap()
                    .len(),
                SPLICE_MIN_BYTES
            );
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 3])),
            Err(DecodeError::TooShort(2))
        ));
        let unknown = Bytes::from_static(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(
            decode_request(unknown),
            Err(DecodeError::UnknownApi(0x7f00))
        ));
        let unimplemented = Bytes::from_static(&[0, 27, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(
            decode_request(unimplemented),
            Err(DecodeError::UnknownApi(27))
        ));
        let old = request_frame(ApiKey::Produce, 2, &MetadataRequest::default());
        assert!(matches!(
            decode_request(old),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
        let full = request_frame(ApiKey::Metadata, 12, &MetadataRequest::default());
        for cut in 8..full.len() {
            if let Err(e) = decode_request(full.slice(..cut)) {
                assert!(!e.to_string().contains('\n'), "{e:?}");
            }
        }
        let mut garbage = BytesMut::from(&full[..8]);
        garbage.put_slice(&[0xff; 64]);
        assert!(decode_request(garbage.freeze()).is_err());
    }
}
