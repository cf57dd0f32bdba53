//! A Kafka broker that stores nothing: it acknowledges every produce request, and answers
//! fetches from one record batch built at start. What the client can send and receive from
//! its core, the ceilings any broker's produce and consume figures on this machine are under.
//!
//! It speaks just enough of the protocol for a librdkafka producer without idempotence and
//! a consumer by assignment: ApiVersions, Metadata (one broker, the topics asked for with a
//! fixed partition count), Produce, ListOffsets and Fetch. It runs on threads of this
//! process, moved to the core a broker would get.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataResponse, ProduceResponse, RequestHeader, RequestKind,
    ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// What every partition of the sink holds for consumers: `records` values of `record_bytes`,
/// in batches of about the size a producer sends.
#[derive(Clone)]
struct Log {
    partitions: i32,
    /// One batch, offsets from 0; each fetch copies it and sets the base offset.
    batch: Bytes,
    batch_records: i64,
    /// A whole number of batches, at least the records asked for.
    end_offset: i64,
}

impl Log {
    fn new(partitions: i32, records: usize, record_bytes: usize) -> Result<Self> {
        let batch_records = (1_000_000 / (record_bytes + 32)).max(1);
        let value = Bytes::from(vec![b'x'; record_bytes]);
        let batch: Vec<Record> = (0..batch_records)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder keeps records in one batch while offset - sequence is constant.
                sequence: i as i32,
                timestamp: 0,
                key: None,
                value: Some(value.clone()),
                headers: Default::default(),
            })
            .collect();
        let mut encoded = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut encoded, &batch, &options)?;
        let batches = records.div_ceil(batch_records) as i64;
        Ok(Log {
            partitions,
            batch: encoded.freeze(),
            batch_records: batch_records as i64,
            end_offset: batches * batch_records as i64,
        })
    }
}

/// Where the sink listens; it runs until the process ends. Its partitions hold `records`
/// records of `record_bytes` each for consumers.
pub fn start(
    partitions: i32,
    records: usize,
    record_bytes: usize,
    core: Option<usize>,
) -> Result<String> {
    let log = Log::new(partitions, records, record_bytes)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    std::thread::spawn(move || {
        for connection in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                if let Some(core) = core {
                    pin_this_thread(core);
                }
                // A client closing its connection ends the loop; nothing to report.
                let _ = serve(connection, address.port(), &log);
            });
        }
    });
    Ok(address.to_string())
}

/// Moves the calling thread to `core`, as `taskset` does for a process.
fn pin_this_thread(core: usize) {
    let Ok(thread) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    let Some(tid) = thread.file_name().and_then(|t| t.to_str()) else {
        return;
    };
    let _ = std::process::Command::new("taskset")
        .args(["-p", "-c", &core.to_string(), tid])
        .stdout(std::process::Stdio::null())
        .status();
}

fn serve(mut connection: TcpStream, port: u16, log: &Log) -> Result<()> {
    connection.set_nodelay(true)?;
    let mut length = [0u8; 4];
    // One buffer, reused: memory new to the process is slow to touch on this VM, and a
    // fresh buffer per request would measure that instead of the client.
    let mut buffer = BytesMut::new();
    let mut records = BytesMut::new();
    loop {
        connection.read_exact(&mut length)?;
        let len = i32::from_be_bytes(length).max(0) as usize;
        anyhow::ensure!(len >= 4, "a frame shorter than its header");
        buffer.reserve(len);
        buffer.resize(len, 0);
        connection.read_exact(&mut buffer)?;
        let mut frame = buffer.split().freeze();
        let api = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]]))
            .map_err(|_| anyhow::anyhow!("unknown API"))?;
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let header = RequestHeader::decode(&mut frame, api.request_header_version(version))?;
        let response = match RequestKind::decode(api, &mut frame, version)? {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions()),
            RequestKind::Metadata(request) => {
                let names = request
                    .topics
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|t| t.name);
                ResponseKind::Metadata(metadata(port, log.partitions, names))
            }
            RequestKind::Produce(request) => {
                if request.acks == 0 {
                    continue;
                }
                let mut response = ProduceResponse::default();
                for topic in request.topic_data {
                    let mut acked = TopicProduceResponse::default();
                    acked.name = topic.name;
                    for partition in topic.partition_data {
                        let mut done = PartitionProduceResponse::default();
                        done.index = partition.index;
                        done.log_start_offset = -1;
                        acked.partition_responses.push(done);
                    }
                    response.responses.push(acked);
                }
                ResponseKind::Produce(response)
            }
            RequestKind::ListOffsets(request) => {
                ResponseKind::ListOffsets(list_offsets(log, request))
            }
            RequestKind::Fetch(request) => ResponseKind::Fetch(fetch(log, request, &mut records)),
            other => anyhow::bail!("the sink does not answer {other:?}"),
        };
        let mut out = BytesMut::new();
        out.extend_from_slice(&[0; 4]);
        let mut response_header = ResponseHeader::default();
        response_header.correlation_id = header.correlation_id;
        response_header.encode(&mut out, api.response_header_version(version))?;
        response.encode(&mut out, version)?;
        let length = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&length.to_be_bytes());
        connection.write_all(&out).context("answering")?;
    }
}

fn api_versions() -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    // librdkafka writes the v2 record format only to brokers that also offer Fetch v4.
    for (api, min, max) in [
        (ApiKey::Produce, 3, 9),
        (ApiKey::Fetch, 4, 11),
        (ApiKey::ListOffsets, 1, 5),
        (ApiKey::Metadata, 0, 9),
        (ApiKey::ApiVersions, 0, 3),
    ] {
        let mut version = ApiVersion::default();
        version.api_key = api as i16;
        version.min_version = min;
        version.max_version = max;
        response.api_keys.push(version);
    }
    response
}

fn metadata(
    port: u16,
    partitions: i32,
    topics: impl Iterator<Item = kafka_protocol::messages::TopicName>,
) -> MetadataResponse {
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(0);
    broker.host = StrBytes::from_static_str("127.0.0.1");
    broker.port = i32::from(port);
    let mut response = MetadataResponse::default();
    response.brokers = vec![broker];
    response.controller_id = BrokerId(0);
    for name in topics {
        let mut topic = MetadataResponseTopic::default();
        topic.name = Some(name);
        for index in 0..partitions {
            let mut partition = MetadataResponsePartition::default();
            partition.partition_index = index;
            partition.leader_id = BrokerId(0);
            partition.replica_nodes = vec![BrokerId(0)];
            partition.isr_nodes = vec![BrokerId(0)];
            topic.partitions.push(partition);
        }
        response.topics.push(topic);
    }
    response
}

/// The earliest offset is 0, any other the end.
fn list_offsets(log: &Log, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in request.topics {
        let mut answered = ListOffsetsTopicResponse::default();
        answered.name = topic.name;
        for partition in topic.partitions {
            let mut offset = ListOffsetsPartitionResponse::default();
            offset.partition_index = partition.partition_index;
            offset.timestamp = -1;
            offset.offset = if partition.timestamp == -2 {
                0
            } else {
                log.end_offset
            };
            answered.partitions.push(offset);
        }
        response.topics.push(answered);
    }
    response
}

/// Copies of the batch from the one holding the fetch offset, up to the partition's byte
/// limit (at least one), built in `scratch` so its memory is reused from fetch to fetch.
fn fetch(log: &Log, request: FetchRequest, scratch: &mut BytesMut) -> FetchResponse {
    let mut response = FetchResponse::default();
    for topic in request.topics {
        let mut answered = FetchableTopicResponse::default();
        answered.topic = topic.topic;
        for partition in topic.partitions {
            let mut data = PartitionData::default();
            data.partition_index = partition.partition;
            data.high_watermark = log.end_offset;
            data.last_stable_offset = log.end_offset;
            data.log_start_offset = 0;
            let limit = partition.partition_max_bytes.max(0) as usize;
            let mut base = partition.fetch_offset / log.batch_records * log.batch_records;
            scratch.reserve(limit.max(log.batch.len()));
            while base < log.end_offset
                && (scratch.is_empty() || scratch.len() + log.batch.len() <= limit)
            {
                let at = scratch.len();
                scratch.extend_from_slice(&log.batch);
                scratch[at..at + 8].copy_from_slice(&base.to_be_bytes());
                base += log.batch_records;
            }
            data.records = Some(scratch.split().freeze());
            answered.partitions.push(data);
        }
        response.responses.push(answered);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn fetched_batches_carry_on_from_the_fetch_offset() {
        let log = Log::new(1, 5000, 1024).unwrap();
        let mut request = FetchRequest::default();
        let mut topic = kafka_protocol::messages::fetch_request::FetchTopic::default();
        let mut partition = kafka_protocol::messages::fetch_request::FetchPartition::default();
        partition.fetch_offset = log.batch_records + 1;
        partition.partition_max_bytes = 1 << 20;
        topic.partitions.push(partition);
        request.topics.push(topic);
        let response = fetch(&log, request, &mut BytesMut::new());
        let mut records = response.responses[0].partitions[0].records.clone().unwrap();
        let set = RecordBatchDecoder::decode(&mut records).unwrap();
        let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets.first(), Some(&log.batch_records));
        assert_eq!(offsets.len() as i64, log.batch_records);
        assert_eq!(offsets.last(), Some(&(2 * log.batch_records - 1)));
    }
}
