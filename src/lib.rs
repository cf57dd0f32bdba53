//! Shale: a Kafka-compatible message broker that keeps its data in SlateDB on object storage.
//!
//! - [`protocol`]: the Kafka wire format (framing, headers, versions, codecs);
//! - [`broker`]: one handler per Kafka API, the server, and configuration;
//! - [`http`]: the HTTP/JSON API over key streams and the global log (`--http`);
//! - [`log`]: key logs (topics, partitions, offsets, global sequence, segments, retention,
//!   transactions, key index, tail notification);
//! - [`storage`]: SlateDB and object-store setup and the keyspace.

pub mod broker;
pub mod http;
pub mod log;
pub mod protocol;
pub mod storage;
