//! Request versions Kafka 3.x still accepts but kafka-protocol no longer decodes (it follows
//! Kafka 4.0, which dropped them in KIP-896), for older clients that pick versions from
//! their configuration instead of ApiVersions. Sarama before its Kafka 4.0 support commits
//! offsets with OffsetCommit v1 by default and lists topics and configs with DescribeConfigs
//! v0; without these its consumer groups would silently never commit.
//!
//! Each request is rewritten into the next version, which carries the same fields, and
//! decoded as that; its response is written in the old layout.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, DescribeConfigsResponse, ResponseKind};
use kafka_protocol::protocol::Encodable;

/// The legacy versions served, as `(api, version, version it is decoded as)`.
pub const VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::OffsetCommit, 1, 2),
    (ApiKey::DescribeConfigs, 0, 1),
];

/// Kafka's `ConfigSource` for a value nobody set: DescribeConfigs v0 says `is_default`.
const DEFAULT_CONFIG: i8 = 5;

/// The version a legacy request is decoded as, if `(api, version)` is one.
pub fn decoded_as(api: ApiKey, version: i16) -> Option<i16> {
    VERSIONS
        .iter()
        .find(|&&(key, old, _)| key == api && old == version)
        .map(|&(_, _, new)| new)
}

/// Rewrites the body of a legacy request into its [`decoded_as`] version.
pub fn upgrade_request(api: ApiKey, body: Bytes) -> anyhow::Result<Bytes> {
    match api {
        ApiKey::OffsetCommit => offset_commit_v1_to_v2(body),
        ApiKey::DescribeConfigs => {
            // v1 only adds `include_synonyms` at the end.
            let mut upgraded = BytesMut::with_capacity(body.len() + 1);
            upgraded.put_slice(&body);
            upgraded.put_u8(0);
            Ok(upgraded.freeze())
        }
        _ => anyhow::bail!("{api:?} has no legacy version"),
    }
}

/// Encodes the response to a legacy request in its own version's layout.
pub fn encode_response(
    body: &ResponseKind,
    version: i16,
    buf: &mut BytesMut,
) -> anyhow::Result<()> {
    match body {
        // v1's response is laid out as v2's.
        ResponseKind::OffsetCommit(response) if version == 1 => Ok(response.encode(buf, 2)?),
        ResponseKind::DescribeConfigs(response) if version == 0 => {
            describe_configs_v0(response, buf)
        }
        _ => anyhow::bail!("no legacy encoding for this response at v{version}"),
    }
}

/// OffsetCommit v1: v2 without `retention_time_ms` and with a `commit_timestamp` per
/// partition, which Kafka ignored since 2.1 and Shale has no use for.
fn offset_commit_v1_to_v2(mut body: Bytes) -> anyhow::Result<Bytes> {
    let mut out = BytesMut::with_capacity(body.len());
    copy_string(&mut body, &mut out)?; // group_id
    copy(&mut body, &mut out, 4)?; // generation_id
    copy_string(&mut body, &mut out)?; // member_id
    out.put_i64(-1); // retention_time_ms: the broker's default
    let topics = copy_count(&mut body, &mut out)?;
    for _ in 0..topics {
        copy_string(&mut body, &mut out)?; // name
        let partitions = copy_count(&mut body, &mut out)?;
        for _ in 0..partitions {
            copy(&mut body, &mut out, 4 + 8)?; // partition_index, committed_offset
            take(&mut body, 8)?; // commit_timestamp
            copy_nullable_string(&mut body, &mut out)?; // committed_metadata
        }
    }
    anyhow::ensure!(
        !body.has_remaining(),
        "{} bytes after the request",
        body.remaining()
    );
    Ok(out.freeze())
}

/// DescribeConfigs v0: each config says `is_default` where later versions give its source,
/// and has no synonyms, type or documentation.
fn describe_configs_v0(
    response: &DescribeConfigsResponse,
    buf: &mut BytesMut,
) -> anyhow::Result<()> {
    buf.put_i32(response.throttle_time_ms);
    buf.put_i32(i32::try_from(response.results.len())?);
    for result in &response.results {
        buf.put_i16(result.error_code);
        put_nullable_string(buf, result.error_message.as_deref())?;
        buf.put_i8(result.resource_type);
        put_nullable_string(buf, Some(&result.resource_name))?;
        buf.put_i32(i32::try_from(result.configs.len())?);
        for config in &result.configs {
            put_nullable_string(buf, Some(&config.name))?;
            put_nullable_string(buf, config.value.as_deref())?;
            buf.put_u8(u8::from(config.read_only));
            buf.put_u8(u8::from(config.config_source == DEFAULT_CONFIG));
            buf.put_u8(u8::from(config.is_sensitive));
        }
    }
    Ok(())
}

fn take(body: &mut Bytes, n: usize) -> anyhow::Result<Bytes> {
    anyhow::ensure!(body.remaining() >= n, "the request ends early");
    Ok(body.split_to(n))
}

fn copy(body: &mut Bytes, out: &mut BytesMut, n: usize) -> anyhow::Result<()> {
    out.put_slice(&take(body, n)?);
    Ok(())
}

/// An array's element count (not null here), copied.
fn copy_count(body: &mut Bytes, out: &mut BytesMut) -> anyhow::Result<i32> {
    let count = take(body, 4)?.get_i32();
    anyhow::ensure!(count >= 0, "an array of {count} elements");
    out.put_i32(count);
    Ok(count)
}

fn copy_string(body: &mut Bytes, out: &mut BytesMut) -> anyhow::Result<()> {
    let length = take(body, 2)?.get_i16();
    anyhow::ensure!(length >= 0, "a null string where one is required");
    out.put_i16(length);
    copy(body, out, length as usize)
}

fn copy_nullable_string(body: &mut Bytes, out: &mut BytesMut) -> anyhow::Result<()> {
    let length = take(body, 2)?.get_i16();
    out.put_i16(length);
    if length > 0 {
        copy(body, out, length as usize)?;
    }
    Ok(())
}

fn put_nullable_string(buf: &mut BytesMut, value: Option<&str>) -> anyhow::Result<()> {
    match value {
        None => buf.put_i16(-1),
        Some(text) => {
            buf.put_i16(i16::try_from(text.len())?);
            buf.put_slice(text.as_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::describe_configs_response::{
        DescribeConfigsResourceResult, DescribeConfigsResult,
    };
    use kafka_protocol::messages::OffsetCommitRequest;
    use kafka_protocol::protocol::{Decodable, StrBytes};

    fn string(out: &mut BytesMut, s: &str) {
        out.put_i16(s.len() as i16);
        out.put_slice(s.as_bytes());
    }

    #[test]
    fn offset_commit_v1_decodes_with_its_fields() {
        let mut v1 = BytesMut::new();
        string(&mut v1, "group");
        v1.put_i32(7);
        string(&mut v1, "member-1");
        v1.put_i32(1);
        string(&mut v1, "orders");
        v1.put_i32(2);
        for (partition, offset) in [(0, 42i64), (3, 9)] {
            v1.put_i32(partition);
            v1.put_i64(offset);
            v1.put_i64(1_700_000_000_000);
            string(&mut v1, "meta");
        }
        let mut v2 = upgrade_request(ApiKey::OffsetCommit, v1.freeze()).unwrap();
        let request = OffsetCommitRequest::decode(&mut v2, 2).unwrap();
        assert_eq!(request.group_id.as_str(), "group");
        assert_eq!(request.generation_id_or_member_epoch, 7);
        assert_eq!(request.member_id.as_str(), "member-1");
        assert_eq!(request.retention_time_ms, -1);
        let partitions: Vec<(i32, i64, Option<String>)> = request.topics[0]
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition_index,
                    p.committed_offset,
                    p.committed_metadata.as_ref().map(|m| m.to_string()),
                )
            })
            .collect();
        assert_eq!(
            partitions,
            [(0, 42, Some("meta".into())), (3, 9, Some("meta".into()))]
        );
    }

    #[test]
    fn truncated_or_padded_offset_commit_v1_is_refused() {
        let mut v1 = BytesMut::new();
        string(&mut v1, "group");
        v1.put_i32(7);
        string(&mut v1, "m");
        v1.put_i32(1_000_000);
        assert!(upgrade_request(ApiKey::OffsetCommit, v1.clone().freeze()).is_err());
        let mut padded = BytesMut::new();
        string(&mut padded, "group");
        padded.put_i32(7);
        string(&mut padded, "m");
        padded.put_i32(0);
        padded.put_u8(1);
        assert!(upgrade_request(ApiKey::OffsetCommit, padded.freeze()).is_err());
    }

    #[test]
    fn describe_configs_v0_says_is_default() {
        let mut config = DescribeConfigsResourceResult::default();
        config.name = StrBytes::from_static_str("retention.ms");
        config.value = Some(StrBytes::from_static_str("604800000"));
        config.config_source = DEFAULT_CONFIG;
        let mut result = DescribeConfigsResult::default();
        result.error_message = None;
        result.resource_type = 2;
        result.resource_name = StrBytes::from_static_str("orders");
        result.configs.push(config);
        let mut response = DescribeConfigsResponse::default();
        response.results.push(result);
        let mut buf = BytesMut::new();
        encode_response(&ResponseKind::DescribeConfigs(response), 0, &mut buf).unwrap();
        let mut expected = BytesMut::new();
        expected.put_i32(0); // throttle
        expected.put_i32(1);
        expected.put_i16(0);
        expected.put_i16(-1); // no error message
        expected.put_i8(2);
        string(&mut expected, "orders");
        expected.put_i32(1);
        string(&mut expected, "retention.ms");
        string(&mut expected, "604800000");
        expected.put_slice(&[0, 1, 0]); // read_only, is_default, is_sensitive
        assert_eq!(buf, expected);
    }
}
