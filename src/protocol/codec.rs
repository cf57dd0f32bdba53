//! Request decoding and response encoding for one frame (the 4-byte length is the
//! framing layer's).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::versions;

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
    let malformed = |e: anyhow::Error| DecodeError::Malformed {
        api,
        version,
        reason: e.to_string(),
    };
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(malformed)?;
    let body = RequestKind::decode(api, &mut frame, version).map_err(malformed)?;
    Ok(Incoming::Request {
        header,
        body: Box::new(body),
    })
}

/// Encodes a response frame, length prefix included.
pub fn encode_response(
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let mut frame = BytesMut::with_capacity(64);
    frame.put_i32(0);
    header.encode(&mut frame, api.response_header_version(version))?;
    body.encode(&mut frame, version)?;
    let length = i32::try_from(frame.len() - 4)?;
    frame[..4].copy_from_slice(&length.to_be_bytes());
    Ok(frame.freeze())
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
pub fn encode_api_versions_too_new(correlation_id: i32) -> anyhow::Result<Bytes> {
    let body = api_versions_response(Some(ResponseError::UnsupportedVersion));
    encode_response(
        correlation_id,
        ApiKey::ApiVersions,
        0,
        &ResponseKind::ApiVersions(body),
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
        let mut body = response.slice(8..);
        let decoded = ApiVersionsResponse::decode(&mut body, 0).unwrap();
        assert_eq!(decoded.error_code, 35);
        assert!(decoded
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Produce as i16));
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
            let _ = decode_request(full.slice(..cut));
        }
        let mut garbage = BytesMut::from(&full[..8]);
        garbage.put_slice(&[0xff; 64]);
        assert!(decode_request(garbage.freeze()).is_err());
    }
}
