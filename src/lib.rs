//! Shale: a Kafka-compatible message broker that keeps its data in SlateDB on object storage.
//!
//! - [`protocol`]: the Kafka wire format (framing, headers, versions, codecs);
//! - [`broker`]: one handler per Kafka API, the server, and configuration;
//! - [`log`]: key logs (topics, partitions, offsets, global sequence, tail notification);
//! - [`storage`]: SlateDB and object-store setup and the keyspace.

pub mod broker;
pub mod log;
pub mod protocol;
pub mod storage;
