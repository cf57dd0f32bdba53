//! Broker settings (the `serve` flags) and the topic configs Shale knows.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args};

use crate::log::TopicDefaults;

/// Flags of `shale serve`; each has a `SHALE_*` environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to accept Kafka clients on. Port 0 picks a free port.
    #[arg(long, env = "SHALE_LISTEN", default_value = "127.0.0.1:9092")]
    pub listen: SocketAddr,

    /// host:port given to clients in Metadata (default: the listen address).
    #[arg(long, env = "SHALE_ADVERTISE")]
    pub advertise: Option<String>,

    /// Folder for data when no --store is given.
    #[arg(long, env = "SHALE_DATA_DIR", default_value = "./shale-data")]
    pub data_dir: PathBuf,

    /// Object store URL instead of the data folder: memory://, file:///path,
    /// s3://bucket/prefix (credentials, region and endpoint from AWS_* variables).
    #[arg(long, env = "SHALE_STORE")]
    pub store: Option<String>,

    /// Create unknown topics when clients ask for them in Metadata.
    #[arg(long, env = "SHALE_AUTO_CREATE_TOPICS", default_value_t = true, action = ArgAction::Set)]
    pub auto_create_topics: bool,

    /// Partitions of auto-created topics and of CreateTopics asking for the default (-1).
    #[arg(long, env = "SHALE_DEFAULT_PARTITIONS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub default_partitions: u32,

    /// Largest request frame accepted; a longer one closes the connection.
    #[arg(long, env = "SHALE_MAX_REQUEST_BYTES", default_value_t = 100 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=1 << 30))]
    pub max_request_bytes: u32,

    /// Request bytes held at once over all connections (Kafka's
    /// `queued.max.request.bytes`): while they are, connections stop reading until requests
    /// are answered, so memory follows this setting rather than the load. A request larger
    /// than this is read once every other one is answered.
    #[arg(long, env = "SHALE_QUEUED_MAX_REQUEST_BYTES", default_value_t = 128 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1 << 40))]
    pub queued_max_request_bytes: u64,

    /// Record bytes fetches hold at once over all connections, from their read until their
    /// answer is written. A fetch that finds too little of it free answers with what it
    /// has (or waits, up to its `max_wait_ms`, for room or new data), so consumers slow
    /// down rather than the broker's memory growing with their number.
    #[arg(long, env = "SHALE_FETCH_MEMORY_BYTES", default_value_t = 128 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 40))]
    pub fetch_memory_bytes: u64,

    /// Milliseconds a connection may go without a whole request read or an answer written
    /// while it has nothing in progress, before it is closed (Kafka's
    /// `connections.max.idle.ms`); also how long an answer may wait for its client to read
    /// it. Clients reconnect when they next need to; one that stalls in the middle of a
    /// request or stops reading gives its share of the memory budgets back.
    #[arg(long, env = "SHALE_CONNECTIONS_MAX_IDLE_MS", default_value_t = 600_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connections_max_idle_ms: u64,

    /// Most client connections served at once; further ones wait to be accepted until one
    /// closes, so a flood of connections cannot exhaust file descriptors or memory.
    #[arg(long, env = "SHALE_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// SlateDB's WAL flush tick, in milliseconds. Every write a client waits on (appends,
    /// offset commits, coordinator and topic records) starts a WAL write at once, so this
    /// tick is only a backstop; a short one wakes an idle broker often (at 2 ms it used 2%
    /// of a core doing nothing).
    #[arg(long, env = "SHALE_FLUSH_INTERVAL_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub flush_interval_ms: u64,

    /// Shortest consumer session timeout accepted, in milliseconds (Kafka's
    /// `group.min.session.timeout.ms`; lower than Kafka's 6000 so tests can fail over fast).
    #[arg(
        long,
        env = "SHALE_GROUP_MIN_SESSION_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub group_min_session_timeout_ms: u64,

    /// Longest consumer session timeout accepted, in milliseconds.
    #[arg(
        long,
        env = "SHALE_GROUP_MAX_SESSION_TIMEOUT_MS",
        default_value_t = 1_800_000
    )]
    pub group_max_session_timeout_ms: u64,

    /// How long the first rebalance of an empty group waits for more members, in
    /// milliseconds (Kafka's `group.initial.rebalance.delay.ms`, 3000 there).
    #[arg(
        long,
        env = "SHALE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        default_value_t = 0
    )]
    pub group_initial_rebalance_delay_ms: u64,

    /// How long a group's committed offsets are kept, in milliseconds (Kafka's
    /// `offsets.retention.minutes`, seven days): from the moment the group became empty, or
    /// from each commit for groups without members (manual assignment) and for topics a
    /// live consumer group no longer subscribes to. An empty group with nothing committed
    /// is then removed.
    #[arg(
        long,
        env = "SHALE_OFFSETS_RETENTION_MS",
        default_value_t = 604_800_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub offsets_retention_ms: u64,

    /// Longest transaction timeout a transactional producer may ask for, in milliseconds
    /// (Kafka's `transaction.max.timeout.ms`).
    #[arg(
        long,
        env = "SHALE_TRANSACTION_MAX_TIMEOUT_MS",
        default_value_t = 900_000,
        value_parser = clap::value_parser!(i32).range(1..)
    )]
    pub transaction_max_timeout_ms: i32,

    /// How long a transactional id with no transaction open is kept after its last use, in
    /// milliseconds (Kafka's `transactional.id.expiration.ms`); initialised again later, it
    /// gets a new producer id.
    #[arg(
        long,
        env = "SHALE_TRANSACTIONAL_ID_EXPIRATION_MS",
        default_value_t = 604_800_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub transactional_id_expiration_ms: u64,

    /// Default `retention.ms` for topics that do not set it: records older than this are
    /// dropped, a whole segment at a time (-1 keeps them forever).
    #[arg(
        long,
        env = "SHALE_RETENTION_MS",
        default_value_t = 604_800_000,
        value_parser = clap::value_parser!(i64).range(-1..)
    )]
    pub retention_ms: i64,

    /// Default `retention.bytes` per partition for topics that do not set it (-1: no limit).
    #[arg(
        long,
        env = "SHALE_RETENTION_BYTES",
        default_value_t = -1,
        value_parser = clap::value_parser!(i64).range(-1..)
    )]
    pub retention_bytes: i64,

    /// Default `segment.bytes`: a topic's active segment rolls after this many bytes.
    #[arg(
        long,
        env = "SHALE_SEGMENT_BYTES",
        default_value_t = 1 << 30,
        value_parser = clap::value_parser!(u64).range(1024..)
    )]
    pub segment_bytes: u64,

    /// Default `segment.ms`: a topic's active segment rolls after this long.
    #[arg(
        long,
        env = "SHALE_SEGMENT_MS",
        default_value_t = 604_800_000,
        value_parser = clap::value_parser!(i64).range(1..)
    )]
    pub segment_ms: i64,

    /// Default `shale.key.index` for topics that do not set it: index records by message
    /// key, for key streams and conditional appends over HTTP. Off, keyed produce skips the
    /// index's memory and work (docs/performance.md).
    #[arg(long, env = "SHALE_KEY_INDEX", default_value_t = true, action = ArgAction::Set)]
    pub key_index: bool,

    /// How long an idempotent producer's state on a partition (its epoch and last batches,
    /// which make retries exactly-once) is kept after its last write there, in
    /// milliseconds: Kafka's `producer.id.expiration.ms`. A producer with a transaction open
    /// keeps it.
    #[arg(
        long,
        env = "SHALE_PRODUCER_ID_EXPIRATION_MS",
        default_value_t = 86_400_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub producer_id_expiration_ms: u64,

    /// How often retention looks for segments to drop, in milliseconds.
    #[arg(
        long,
        env = "SHALE_RETENTION_CHECK_INTERVAL_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(10..)
    )]
    pub retention_check_interval_ms: u64,

    /// How long after a segment is drained (or compacted away) its files are deleted, in
    /// milliseconds: the delay before retention's space is reclaimed.
    #[arg(
        long,
        env = "SHALE_RECLAIM_DELAY_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(100..)
    )]
    pub reclaim_delay_ms: u64,

    /// MiB of recently written batch objects (large appends) kept in memory, so consumers
    /// at the tail read them without a request to the store. Default: 64 on `s3://`, none
    /// on a local folder (a local read is fast) or in memory.
    #[arg(long, env = "SHALE_OBJECT_CACHE_MB",
          value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    pub object_cache_mb: Option<u64>,

    /// KiB from which one partition's batches in a produce request go to a batch object of
    /// their own instead of SlateDB. Default: 16 in a local folder (keeps SlateDB's memtable
    /// flushes from stalling the WAL), 256 on `s3://` and in memory. Each object is a file
    /// (an S3 object): higher means fewer of them.
    #[arg(long, env = "SHALE_OBJECT_MIN_KB",
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub object_min_kb: Option<u64>,

    /// Write and read batch objects in a local data folder with direct I/O (O_DIRECT, Linux),
    /// bypassing the page cache. Off, or on a file system that refuses it (some FUSE file
    /// systems, tmpfs before Linux 6.6), they go through the page cache.
    #[arg(long, env = "SHALE_DIRECT_IO", default_value_t = true, action = ArgAction::Set)]
    pub direct_io: bool,

    /// Address for the HTTP/JSON API (key streams, the global log, conditional appends),
    /// e.g. `127.0.0.1:8082`; off when unset.
    #[arg(long, env = "SHALE_HTTP")]
    pub http: Option<std::net::SocketAddr>,

    /// SASL users as `name:password,...`: every client must then authenticate as one of
    /// them (SASL_PLAINTEXT with PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512). Unset, clients need
    /// no authentication, and those configured for SASL PLAIN are accepted whatever their
    /// credentials. Parsed in `main`, so that a bad value's message does not repeat the
    /// passwords.
    #[arg(long, env = "SHALE_SASL_USERS", hide_env_values = true)]
    pub sasl_users: Option<String>,

    /// PEM certificate chain (the broker's own first): the Kafka listener then speaks TLS,
    /// as Kafka's SSL listener (SASL_SSL with `--sasl-users`). Needs `--tls-key`. The TLS
    /// files are read again on SIGHUP.
    #[arg(long, env = "SHALE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "SHALE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// PEM certificates of the CAs that sign client certificates: every client must then
    /// present one (Kafka's `ssl.client.auth=required`). Needs `--tls-cert`.
    #[arg(long, env = "SHALE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `shale=debug,slatedb=warn`.
    /// SlateDB's retries of a failing store stay visible by default: with the disk full,
    /// its WAL writes retry (and acks wait) with no other sign in the log.
    #[arg(
        long,
        env = "SHALE_LOG",
        default_value = "info,slatedb=warn,slatedb::retrying_object_store=info"
    )]
    pub log: String,
}

/// What handlers need to know about the broker itself.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    pub max_request_bytes: u32,
    pub queued_max_request_bytes: u64,
    pub fetch_memory_bytes: u64,
    pub connections_max_idle: std::time::Duration,
    pub max_connections: u32,
    /// How long an idle producer's state is kept (`--producer-id-expiration-ms`).
    pub producer_id_expiration: std::time::Duration,
    /// How long an unused transactional id is kept (`--transactional-id-expiration-ms`).
    pub transactional_id_expiration: std::time::Duration,
    /// How long committed offsets are kept (`--offsets-retention-ms`).
    pub offsets_retention: std::time::Duration,
    /// Who may connect; `None`: anyone.
    pub sasl_users: Option<super::sasl::SaslUsers>,
    /// The listener's TLS; `None`: plaintext.
    pub tls: Option<std::sync::Arc<super::tls::Tls>>,
}

/// Kafka's `ConfigType` codes, reported in DescribeConfigs v3+.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// One topic config: its name, Kafka's default, and what values it takes.
pub struct TopicConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: ConfigType,
    /// Lowest accepted value for numbers.
    min: i64,
    /// Accepted values for enums and lists (empty: any).
    choices: &'static [&'static str],
    pub doc: &'static str,
}

const fn def(
    name: &'static str,
    default: &'static str,
    kind: ConfigType,
    min: i64,
    choices: &'static [&'static str],
    doc: &'static str,
) -> TopicConfigDef {
    TopicConfigDef {
        name,
        default,
        kind,
        min,
        choices,
        doc,
    }
}

use ConfigType as T;
const MAX: &str = "9223372036854775807";

/// Topic configs Shale accepts, with Kafka's defaults. Where Shale does not act on one yet,
/// the README says so; it is still stored and described so tooling that sets it works.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def(
        "cleanup.policy",
        "delete",
        T::List,
        0,
        &["delete", "compact"],
        "Retention policy for old log segments.",
    ),
    def(
        "compression.type",
        "producer",
        T::String,
        0,
        &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"],
        "Final compression type for the topic.",
    ),
    def(
        "delete.retention.ms",
        "86400000",
        T::Long,
        0,
        &[],
        "How long tombstones are kept for compacted topics.",
    ),
    def(
        "file.delete.delay.ms",
        "60000",
        T::Long,
        0,
        &[],
        "Delay before deleting a file from the filesystem.",
    ),
    def(
        "flush.messages",
        MAX,
        T::Long,
        1,
        &[],
        "Messages between forced fsyncs (Shale is always durable).",
    ),
    def(
        "flush.ms",
        MAX,
        T::Long,
        0,
        &[],
        "Time between forced fsyncs (Shale is always durable).",
    ),
    def(
        "index.interval.bytes",
        "4096",
        T::Int,
        0,
        &[],
        "Offset index granularity.",
    ),
    def(
        "max.compaction.lag.ms",
        MAX,
        T::Long,
        1,
        &[],
        "Maximum time a message remains ineligible for compaction.",
    ),
    def(
        "max.message.bytes",
        "1048588",
        T::Int,
        0,
        &[],
        "Largest record batch size allowed.",
    ),
    def(
        "message.downconversion.enable",
        "true",
        T::Boolean,
        0,
        &[],
        "Whether down-conversion is enabled.",
    ),
    def(
        "message.timestamp.after.max.ms",
        MAX,
        T::Long,
        0,
        &[],
        "Allowed future skew of message timestamps.",
    ),
    def(
        "message.timestamp.before.max.ms",
        MAX,
        T::Long,
        0,
        &[],
        "Allowed past skew of message timestamps.",
    ),
    def(
        "message.timestamp.difference.max.ms",
        MAX,
        T::Long,
        0,
        &[],
        "Allowed skew of message timestamps (deprecated).",
    ),
    def(
        "message.timestamp.type",
        "CreateTime",
        T::String,
        0,
        &["CreateTime", "LogAppendTime"],
        "Whether timestamps are the producer's or the broker's.",
    ),
    def(
        "min.cleanable.dirty.ratio",
        "0.5",
        T::Double,
        0,
        &[],
        "Dirty ratio that triggers compaction.",
    ),
    def(
        "min.compaction.lag.ms",
        "0",
        T::Long,
        0,
        &[],
        "Minimum time a message remains uncompacted.",
    ),
    def(
        "min.insync.replicas",
        "1",
        T::Int,
        1,
        &[],
        "Minimum in-sync replicas for acks=all.",
    ),
    def(
        "preallocate",
        "false",
        T::Boolean,
        0,
        &[],
        "Preallocate segment files.",
    ),
    def(
        "retention.bytes",
        "-1",
        T::Long,
        -1,
        &[],
        "Maximum size of a partition before old data is dropped.",
    ),
    def(
        "retention.ms",
        "604800000",
        T::Long,
        -1,
        &[],
        "Maximum age of data before it is dropped.",
    ),
    def(
        "segment.bytes",
        "1073741824",
        T::Int,
        14,
        &[],
        "Segment file size.",
    ),
    def(
        "segment.index.bytes",
        "10485760",
        T::Int,
        4,
        &[],
        "Offset index size.",
    ),
    def(
        "segment.jitter.ms",
        "0",
        T::Long,
        0,
        &[],
        "Random jitter on segment roll time.",
    ),
    def(
        "segment.ms",
        "604800000",
        T::Long,
        1,
        &[],
        "Time after which a segment rolls.",
    ),
    def(
        "shale.key.index",
        "true",
        T::Boolean,
        0,
        &[],
        "Shale: index records by message key, for key streams and conditional appends over HTTP.",
    ),
    def(
        "shale.key.index.copy.max.bytes",
        "256",
        T::Int,
        0,
        &[],
        "Shale: keyed records whose value and headers fit are copied into the key index, so key streams read without batch look-ups.",
    ),
    def(
        "unclean.leader.election.enable",
        "false",
        T::Boolean,
        0,
        &[],
        "Allow out-of-sync replicas to become leader.",
    ),
];

pub fn topic_config_def(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// A config name or value Kafka would reject, with the message clients show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

impl TopicConfigDef {
    pub fn validate(&self, value: &str) -> Result<(), InvalidConfig> {
        let bad = |why: &str| {
            Err(InvalidConfig(format!(
                "Invalid value {value} for configuration {}: {why}",
                self.name
            )))
        };
        match self.kind {
            T::Boolean => match value.to_ascii_lowercase().as_str() {
                "true" | "false" => Ok(()),
                _ => bad("Expected value to be either true or false"),
            },
            T::Int | T::Long => {
                let parsed = if self.kind == T::Int {
                    value.trim().parse::<i32>().map(i64::from).ok()
                } else {
                    value.trim().parse::<i64>().ok()
                };
                match parsed {
                    None => bad("Not a number of the expected type"),
                    Some(n) if n < self.min => bad(&format!("Value must be at least {}", self.min)),
                    Some(_) => Ok(()),
                }
            }
            T::Double => match value.trim().parse::<f64>() {
                Ok(n) if (0.0..=1.0).contains(&n) => Ok(()),
                _ => bad("Value must be a number between 0 and 1"),
            },
            T::String if !self.choices.is_empty() && !self.choices.contains(&value) => bad(
                &format!("String must be one of: {}", self.choices.join(", ")),
            ),
            T::String => Ok(()),
            T::List => {
                let items: Vec<&str> = value.split(',').map(str::trim).collect();
                if items.iter().all(|item| self.choices.contains(item)) {
                    Ok(())
                } else {
                    bad(&format!(
                        "Each item must be one of: {}",
                        self.choices.join(", ")
                    ))
                }
            }
        }
    }
}

/// Kafka's `ConfigSource` for a config: set on the topic, by a `shale serve` flag (a static
/// broker config in Kafka's terms), or the default.
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

/// One of the values Kafka lists under a config as its synonyms: where the config's value
/// could come from, most specific first, the first being the one in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSynonym<'a> {
    pub name: &'static str,
    pub value: Cow<'a, str>,
    pub source: i8,
}

impl ConfigSynonym<'_> {
    pub fn into_owned(self) -> ConfigSynonym<'static> {
        ConfigSynonym {
            name: self.name,
            value: Cow::Owned(self.value.into_owned()),
            source: self.source,
        }
    }
}

/// Where a broker config Kafka falls back to gets its own default.
#[derive(Clone, Copy)]
enum BrokerDefault {
    /// From itself: the topic config's default.
    Own,
    /// From a coarser config (`log.retention.hours` under `log.retention.ms`), which Kafka
    /// lists, under this name and value, only when the finer one is set.
    Coarser(&'static str, &'static str),
}

/// The broker config a topic config falls back to, as Kafka names it (the first of its
/// synonyms in Kafka's `ServerTopicConfigSynonyms`); `None` for configs with no broker
/// default. The topic configs a `shale serve` flag sets (see [`TopicDefaults::value_of`])
/// are described under these names.
fn broker_synonym(topic_config: &str) -> Option<(&'static str, BrokerDefault)> {
    use BrokerDefault::{Coarser, Own};
    Some(match topic_config {
        "cleanup.policy" => ("log.cleanup.policy", Own),
        "compression.type" => ("compression.type", Own),
        "delete.retention.ms" => ("log.cleaner.delete.retention.ms", Own),
        "file.delete.delay.ms" => ("log.segment.delete.delay.ms", Own),
        "flush.messages" => ("log.flush.interval.messages", Own),
        "flush.ms" => (
            "log.flush.interval.ms",
            Coarser("log.flush.scheduler.interval.ms", MAX),
        ),
        "index.interval.bytes" => ("log.index.interval.bytes", Own),
        "max.compaction.lag.ms" => ("log.cleaner.max.compaction.lag.ms", Own),
        "max.message.bytes" => ("message.max.bytes", Own),
        "message.downconversion.enable" => ("log.message.downconversion.enable", Own),
        "message.timestamp.after.max.ms" => ("log.message.timestamp.after.max.ms", Own),
        "message.timestamp.before.max.ms" => ("log.message.timestamp.before.max.ms", Own),
        "message.timestamp.difference.max.ms" => ("log.message.timestamp.difference.max.ms", Own),
        "message.timestamp.type" => ("log.message.timestamp.type", Own),
        "min.cleanable.dirty.ratio" => ("log.cleaner.min.cleanable.ratio", Own),
        "min.compaction.lag.ms" => ("log.cleaner.min.compaction.lag.ms", Own),
        "min.insync.replicas" => ("min.insync.replicas", Own),
        "preallocate" => ("log.preallocate", Own),
        "retention.bytes" => ("log.retention.bytes", Own),
        "retention.ms" => ("log.retention.ms", Coarser("log.retention.hours", "168")),
        "segment.bytes" => ("log.segment.bytes", Own),
        "segment.index.bytes" => ("log.index.size.max.bytes", Own),
        "segment.jitter.ms" => ("log.roll.jitter.ms", Coarser("log.roll.jitter.hours", "0")),
        "segment.ms" => ("log.roll.ms", Coarser("log.roll.hours", "168")),
        "shale.key.index" => ("shale.key.index", Own),
        "unclean.leader.election.enable" => ("unclean.leader.election.enable", Own),
        _ => return None,
    })
}

/// A topic config as it is in force for one topic.
pub struct EffectiveConfig<'a> {
    pub def: &'static TopicConfigDef,
    /// As Kafka lists them: the topic's own value, the broker's flag (where it differs from
    /// Kafka's default) under the broker config's name, then the broker config's default.
    /// Empty where Kafka lists none; the value is then the default.
    pub synonyms: Vec<ConfigSynonym<'a>>,
}

impl EffectiveConfig<'_> {
    pub fn value(&self) -> &str {
        self.synonyms
            .first()
            .map_or(self.def.default, |s| s.value.as_ref())
    }

    pub fn source(&self) -> i8 {
        self.synonyms.first().map_or(SOURCE_DEFAULT, |s| s.source)
    }
}

/// Every known topic config of a topic with `configs` set, on a broker with `defaults`.
pub fn effective_topic_configs<'a>(
    configs: &'a BTreeMap<String, String>,
    defaults: &'a TopicDefaults,
) -> impl Iterator<Item = EffectiveConfig<'a>> {
    TOPIC_CONFIGS.iter().map(move |def| {
        let mut synonyms = Vec::new();
        let mut add = |name, value, source| {
            synonyms.push(ConfigSynonym {
                name,
                value,
                source,
            })
        };
        if let Some(value) = configs.get(def.name) {
            add(def.name, Cow::Borrowed(value.as_str()), SOURCE_TOPIC);
        }
        if let Some((broker, fallback)) = broker_synonym(def.name) {
            let flag = defaults
                .value_of(def.name)
                .filter(|flag| flag != def.default);
            let flagged = flag.is_some();
            if let Some(flag) = flag {
                add(broker, Cow::Owned(flag), SOURCE_STATIC_BROKER);
            }
            match fallback {
                BrokerDefault::Own => add(broker, Cow::Borrowed(def.default), SOURCE_DEFAULT),
                BrokerDefault::Coarser(name, value) if flagged => {
                    add(name, Cow::Borrowed(value), SOURCE_DEFAULT)
                }
                BrokerDefault::Coarser(..) => {}
            }
        }
        EffectiveConfig { def, synonyms }
    })
}

/// Checks one `name=value` topic config.
pub fn validate_topic_config(name: &str, value: Option<&str>) -> Result<(), InvalidConfig> {
    let def = topic_config_def(name)
        .ok_or_else(|| InvalidConfig(format!("Unknown topic config name: {name}")))?;
    let value = value.ok_or_else(|| InvalidConfig(format!("Null value for config {name}")))?;
    def.validate(value)
}

/// The value in force for a topic config: the topic's own, or the default.
pub fn topic_config_value<'a>(
    configs: &'a BTreeMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    configs
        .get(name)
        .map(String::as_str)
        .or_else(|| topic_config_def(name).map(|d| d.default))
}

/// Kafka's topic name rules: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "Topic name {name:?} must be 1 to 249 characters long"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("Topic name cannot be {name:?}"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "Topic name {name:?} is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["orders", "a.b_c-D9", &"x".repeat(249)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/",
            "ünï",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_configs_are_checked_by_type() {
        assert!(validate_topic_config("retention.ms", Some("1000")).is_ok());
        assert!(validate_topic_config("retention.ms", Some("-1")).is_ok());
        assert!(validate_topic_config("retention.ms", Some("-2")).is_err());
        assert!(validate_topic_config("retention.ms", Some("soon")).is_err());
        assert!(validate_topic_config("max.message.bytes", Some("99999999999")).is_err());
        assert!(validate_topic_config("cleanup.policy", Some("compact,delete")).is_ok());
        assert!(validate_topic_config("cleanup.policy", Some("shred")).is_err());
        assert!(validate_topic_config("message.timestamp.type", Some("LogAppendTime")).is_ok());
        assert!(validate_topic_config("message.timestamp.type", Some("Whenever")).is_err());
        assert!(validate_topic_config("preallocate", Some("TRUE")).is_ok());
        assert!(validate_topic_config("min.cleanable.dirty.ratio", Some("1.5")).is_err());
        assert!(validate_topic_config("no.such.config", Some("1")).is_err());
        assert!(validate_topic_config("retention.ms", None).is_err());
    }

    #[test]
    fn every_default_is_a_valid_value() {
        for def in TOPIC_CONFIGS {
            def.validate(def.default).unwrap();
        }
        let set = BTreeMap::from([("retention.ms".to_string(), "5".to_string())]);
        assert_eq!(topic_config_value(&set, "retention.ms"), Some("5"));
        assert_eq!(topic_config_value(&set, "segment.ms"), Some("604800000"));
        assert_eq!(topic_config_value(&set, "nope"), None);
    }

    fn described(
        name: &str,
        configs: &BTreeMap<String, String>,
        defaults: &TopicDefaults,
    ) -> (String, i8, Vec<(&'static str, String, i8)>) {
        let config = effective_topic_configs(configs, defaults)
            .find(|c| c.def.name == name)
            .unwrap();
        let synonyms = config
            .synonyms
            .iter()
            .map(|s| (s.name, s.value.to_string(), s.source))
            .collect();
        (config.value().to_owned(), config.source(), synonyms)
    }

    #[test]
    fn synonyms_name_the_broker_config_as_kafka_does() {
        let none = BTreeMap::new();
        let kafka = TopicDefaults::default();
        // Kafka's `log.retention.ms` has no default of its own, so nothing is listed.
        assert_eq!(
            described("retention.ms", &none, &kafka),
            ("604800000".into(), SOURCE_DEFAULT, vec![])
        );
        assert_eq!(
            described("retention.bytes", &none, &kafka),
            (
                "-1".into(),
                SOURCE_DEFAULT,
                vec![("log.retention.bytes", "-1".into(), SOURCE_DEFAULT)]
            )
        );
        assert_eq!(
            described("shale.key.index.copy.max.bytes", &none, &kafka),
            ("256".into(), SOURCE_DEFAULT, vec![])
        );

        let flags = TopicDefaults {
            retention_ms: 3_600_000,
            segment_bytes: 1 << 20,
            ..TopicDefaults::default()
        };
        assert_eq!(
            described("retention.ms", &none, &flags),
            (
                "3600000".into(),
                SOURCE_STATIC_BROKER,
                vec![
                    ("log.retention.ms", "3600000".into(), SOURCE_STATIC_BROKER),
                    ("log.retention.hours", "168".into(), SOURCE_DEFAULT),
                ]
            )
        );
        let set = BTreeMap::from([("segment.bytes".to_string(), "4096".to_string())]);
        assert_eq!(
            described("segment.bytes", &set, &flags),
            (
                "4096".into(),
                SOURCE_TOPIC,
                vec![
                    ("segment.bytes", "4096".into(), SOURCE_TOPIC),
                    ("log.segment.bytes", "1048576".into(), SOURCE_STATIC_BROKER),
                    ("log.segment.bytes", "1073741824".into(), SOURCE_DEFAULT),
                ]
            )
        );
    }

    #[test]
    fn every_flag_set_config_has_a_broker_synonym() {
        let defaults = TopicDefaults::default();
        for def in TOPIC_CONFIGS {
            if defaults.value_of(def.name).is_some() {
                assert!(broker_synonym(def.name).is_some(), "{}", def.name);
            }
        }
    }
}
