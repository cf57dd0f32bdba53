//! A Kafka broker that acknowledges every produce request without storing anything: what
//! the client can send from its core, the ceiling any broker's produce figure on this
//! machine is under.
//!
//! It speaks just enough of the protocol for a librdkafka producer without idempotence:
//! ApiVersions, Metadata (one broker, the topics asked for with a fixed partition count)
//! and Produce. It runs on threads of this process, moved to the core a broker would get.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::{Context, Result};
use bytes::BytesMut;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, MetadataResponse, ProduceResponse, RequestHeader,
    RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Where the sink listens; it runs until the process ends.
pub fn start(partitions: i32, core: Option<usize>) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    std::thread::spawn(move || {
        for connection in listener.incoming().flatten() {
            std::thread::spawn(move || {
                if let Some(core) = core {
                    pin_this_thread(core);
                }
                // A client closing its connection ends the loop; nothing to report.
                let _ = serve(connection, address.port(), partitions);
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

fn serve(mut connection: TcpStream, port: u16, partitions: i32) -> Result<()> {
    connection.set_nodelay(true)?;
    let mut length = [0u8; 4];
    // One buffer, reused: memory new to the process is slow to touch on this VM, and a
    // fresh buffer per request would measure that instead of the client.
    let mut buffer = BytesMut::new();
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
                ResponseKind::Metadata(metadata(port, partitions, names))
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
    // Fetch is listed though never answered: librdkafka writes the v2 record format only to
    // brokers that also fetch it.
    for (api, min, max) in [
        (ApiKey::Produce, 3, 9),
        (ApiKey::Fetch, 4, 11),
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
