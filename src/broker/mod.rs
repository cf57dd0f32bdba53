//! The Kafka broker: one handler per API, each a function from a decoded request to a
//! response, plus the server that feeds them from sockets.
//!
//! Handlers speak Kafka (error codes, versions, configs) and use `log` for every stored
//! fact; they never touch SlateDB directly.

mod add_offsets_to_txn;
mod add_partitions_to_txn;
mod alter_configs;
mod alter_user_scram_credentials;
mod api_versions;
mod authorized_operations;
pub mod config;
mod create_acls;
mod create_partitions;
mod create_topics;
mod delete_acls;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_acls;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod describe_log_dirs;
mod describe_producers;
mod describe_transactions;
mod describe_user_scram_credentials;
mod elect_leaders;
mod end_txn;
mod fetch;
mod find_coordinator;
pub mod group_coordinator;
mod heartbeat;
mod incremental_alter_configs;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod list_transactions;
mod metadata;
pub mod metrics;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod produce;
pub mod sasl;
mod sasl_authenticate;
mod sasl_handshake;
pub mod server;
mod sync_group;
pub mod tls;
pub mod txn_coordinator;
mod txn_offset_commit;

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use crate::log::{LogError, LogStore, Topic};
use crate::protocol::budget::{ByteBudget, Share};
use config::{validate_topic_name, BrokerConfig};
use group_coordinator::GroupCoordinator;
use txn_coordinator::TxnCoordinator;

/// Shared state of a running broker.
pub struct Broker {
    pub log: Arc<LogStore>,
    pub groups: Arc<GroupCoordinator>,
    pub txns: Arc<TxnCoordinator>,
    pub config: BrokerConfig,
    /// Record bytes fetches may hold at once, from their read until their answer is
    /// written (`--fetch-memory-bytes`).
    pub fetch_budget: ByteBudget,
    pub metrics: metrics::Metrics,
    /// SCRAM credentials set through AlterUserScramCredentials.
    pub scram: Arc<sasl::ScramCredentials>,
}

/// Who sent a request, and where it stands among its connection's produce requests.
pub struct RequestContext {
    pub client_id: String,
    pub peer: std::net::SocketAddr,
    pub append_turn: AppendTurn,
    /// Budget shares held until the answer is written: the request's own, and those of
    /// the records read for it.
    pub held: std::sync::Mutex<Vec<Share>>,
}

/// A produce request's turn to append. Requests on one connection are handled
/// concurrently, but Kafka appends a connection's produce requests in the order they were
/// sent: a client with several requests in flight to one partition (librdkafka's default)
/// relies on it for record order. Each produce request waits for the previous one on its
/// connection to have appended (or to have finished without appending) before it appends.
#[derive(Default)]
pub struct AppendTurn {
    previous: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    done: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl AppendTurn {
    /// The turn of the next produce request after `previous` (the receiver of the last
    /// produce request's turn), and the receiver the request after it waits on.
    pub fn after(previous: Option<oneshot::Receiver<()>>) -> (AppendTurn, oneshot::Receiver<()>) {
        let (done, next) = oneshot::channel();
        let turn = AppendTurn {
            previous: std::sync::Mutex::new(previous),
            done: std::sync::Mutex::new(Some(done)),
        };
        (turn, next)
    }

    /// Waits until the previous produce request of the connection has appended.
    async fn wait(&self) {
        let previous = self
            .previous
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(previous) = previous {
            // A dropped sender means that request finished without appending.
            let _ = previous.await;
        }
    }

    /// Lets the next produce request append. Dropping the turn does the same.
    fn appended(&self) {
        if let Some(done) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = done.send(());
        }
    }
}

impl RequestContext {
    /// Keeps `share` until the answer is written.
    pub fn hold(&self, share: Share) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(share);
    }

    /// The client host as Kafka reports it in group descriptions.
    fn client_host(&self) -> String {
        format!("/{}", self.peer.ip())
    }
}

impl Broker {
    pub fn new(
        log: Arc<LogStore>,
        groups: Arc<GroupCoordinator>,
        txns: Arc<TxnCoordinator>,
        config: BrokerConfig,
        scram: Arc<sasl::ScramCredentials>,
    ) -> Self {
        let fetch_budget =
            ByteBudget::new(config.fetch_memory_bytes as usize, "--fetch-memory-bytes");
        Broker {
            log,
            groups,
            txns,
            config,
            fetch_budget,
            metrics: metrics::Metrics::default(),
            scram,
        }
    }

    /// Serves one request. `None` means no response is sent (produce with acks=0).
    pub async fn handle(
        &self,
        context: &RequestContext,
        header: &RequestHeader,
        request: RequestKind,
    ) -> Option<ResponseKind> {
        let version = header.request_api_version;
        Some(match request {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::handle()),
            RequestKind::Metadata(r) => {
                ResponseKind::Metadata(metadata::handle(self, version, r).await)
            }
            RequestKind::Produce(r) => ResponseKind::Produce(
                produce::handle(self, version, &context.append_turn, r).await?,
            ),
            RequestKind::Fetch(r) => {
                ResponseKind::Fetch(fetch::handle(self, context, version, r).await)
            }
            RequestKind::ListOffsets(r) => {
                ResponseKind::ListOffsets(list_offsets::handle(self, version, r).await)
            }
            RequestKind::CreateTopics(r) => {
                ResponseKind::CreateTopics(create_topics::handle(self, version, r).await)
            }
            RequestKind::DeleteRecords(r) => {
                ResponseKind::DeleteRecords(delete_records::handle(self, r).await)
            }
            RequestKind::DeleteTopics(r) => {
                ResponseKind::DeleteTopics(delete_topics::handle(self, version, r).await)
            }
            RequestKind::CreatePartitions(r) => {
                ResponseKind::CreatePartitions(create_partitions::handle(self, r).await)
            }
            RequestKind::DescribeConfigs(r) => {
                ResponseKind::DescribeConfigs(describe_configs::handle(self, version, r))
            }
            RequestKind::AlterConfigs(r) => {
                ResponseKind::AlterConfigs(alter_configs::handle(self, r).await)
            }
            RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
                incremental_alter_configs::handle(self, r).await,
            ),
            RequestKind::DescribeLogDirs(r) => {
                ResponseKind::DescribeLogDirs(describe_log_dirs::handle(self, r))
            }
            RequestKind::DescribeCluster(r) => {
                ResponseKind::DescribeCluster(describe_cluster::handle(self, r))
            }
            RequestKind::InitProducerId(r) => {
                ResponseKind::InitProducerId(init_producer_id::handle(self, version, r).await)
            }
            RequestKind::AddPartitionsToTxn(r) => ResponseKind::AddPartitionsToTxn(
                add_partitions_to_txn::handle(self, version, r).await,
            ),
            RequestKind::AddOffsetsToTxn(r) => {
                ResponseKind::AddOffsetsToTxn(add_offsets_to_txn::handle(self, version, r).await)
            }
            RequestKind::TxnOffsetCommit(r) => {
                ResponseKind::TxnOffsetCommit(txn_offset_commit::handle(self, version, r).await)
            }
            RequestKind::EndTxn(r) => ResponseKind::EndTxn(end_txn::handle(self, version, r).await),
            RequestKind::DescribeProducers(r) => {
                ResponseKind::DescribeProducers(describe_producers::handle(self, r).await)
            }
            RequestKind::ListTransactions(r) => {
                ResponseKind::ListTransactions(list_transactions::handle(self, r).await)
            }
            RequestKind::DescribeTransactions(r) => {
                ResponseKind::DescribeTransactions(describe_transactions::handle(self, r).await)
            }
            RequestKind::FindCoordinator(r) => {
                ResponseKind::FindCoordinator(find_coordinator::handle(self, version, r))
            }
            RequestKind::JoinGroup(r) => {
                ResponseKind::JoinGroup(join_group::handle(self, context, version, r).await)
            }
            RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(sync_group::handle(self, r).await),
            RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(heartbeat::handle(self, r).await),
            RequestKind::LeaveGroup(r) => {
                ResponseKind::LeaveGroup(leave_group::handle(self, version, r).await)
            }
            RequestKind::OffsetCommit(r) => {
                ResponseKind::OffsetCommit(offset_commit::handle(self, r).await)
            }
            RequestKind::OffsetFetch(r) => {
                ResponseKind::OffsetFetch(offset_fetch::handle(self, version, r).await)
            }
            RequestKind::OffsetDelete(r) => {
                ResponseKind::OffsetDelete(offset_delete::handle(self, r).await)
            }
            RequestKind::ListGroups(r) => {
                ResponseKind::ListGroups(list_groups::handle(self, r).await)
            }
            RequestKind::DescribeGroups(r) => {
                ResponseKind::DescribeGroups(describe_groups::handle(self, r).await)
            }
            RequestKind::DeleteGroups(r) => {
                ResponseKind::DeleteGroups(delete_groups::handle(self, r).await)
            }
            RequestKind::DescribeAcls(_) => ResponseKind::DescribeAcls(describe_acls::handle()),
            RequestKind::CreateAcls(r) => ResponseKind::CreateAcls(create_acls::handle(r)),
            RequestKind::DeleteAcls(r) => ResponseKind::DeleteAcls(delete_acls::handle(r)),
            RequestKind::DescribeUserScramCredentials(r) => {
                ResponseKind::DescribeUserScramCredentials(describe_user_scram_credentials::handle(
                    self, r,
                ))
            }
            RequestKind::AlterUserScramCredentials(r) => ResponseKind::AlterUserScramCredentials(
                alter_user_scram_credentials::handle(self, r).await,
            ),
            RequestKind::ElectLeaders(r) => {
                ResponseKind::ElectLeaders(elect_leaders::handle(self, r))
            }
            other => {
                // The codec only decodes APIs listed in protocol::versions, each of which
                // has an arm above; reaching this is a bug in that table.
                tracing::error!(api = ?std::mem::discriminant(&other), "no handler for a decoded API");
                return None;
            }
        })
    }

    /// Looks up a topic, creating it if the broker auto-creates topics and the name is valid.
    pub(crate) async fn topic_or_auto_create(
        &self,
        name: &str,
        allow: bool,
    ) -> Result<Arc<Topic>, ResponseError> {
        if let Some(topic) = self.log.topic(name) {
            return Ok(topic);
        }
        if validate_topic_name(name).is_err() {
            return Err(ResponseError::InvalidTopicException);
        }
        if !(allow && self.config.auto_create_topics) {
            return Err(ResponseError::UnknownTopicOrPartition);
        }
        match self
            .log
            .create_topic(name, self.config.default_partitions, BTreeMap::new())
            .await
        {
            Ok(topic) => {
                tracing::info!(
                    topic = name,
                    partitions = topic.partitions.len(),
                    "auto-created topic"
                );
                Ok(topic)
            }
            Err(LogError::TopicExists(_)) => self
                .log
                .topic(name)
                .ok_or(ResponseError::UnknownTopicOrPartition),
            Err(e) => {
                tracing::error!(topic = name, error = %e, "auto-creating topic failed");
                Err(ResponseError::KafkaStorageError)
            }
        }
    }
}

/// The Kafka error code for a storage-level failure.
fn storage_error(e: &LogError) -> ResponseError {
    match e {
        LogError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        LogError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::VersionConflict { .. } => ResponseError::InvalidRequest,
        LogError::Corrupt(_)
        | LogError::NotDurable
        | LogError::Storage(_)
        | LogError::Objects(_)
        | LogError::ObjectFile(_) => {
            tracing::error!(error = %e, "storage failure");
            ResponseError::KafkaStorageError
        }
    }
}

/// PRODUCER_FENCED for clients that know it (KIP-588); older request versions expect
/// INVALID_PRODUCER_EPOCH, which they treat the same way.
fn fenced_for(error: ResponseError, version: i16, first_version_with_fenced: i16) -> ResponseError {
    if error == ResponseError::ProducerFenced && version < first_version_with_fenced {
        ResponseError::InvalidProducerEpoch
    } else {
        error
    }
}

/// A Kafka error code with the message clients show for it.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: ResponseError,
    pub message: Option<String>,
}

impl ApiError {
    fn new(code: ResponseError, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: Some(message.into()),
        }
    }

    fn code(&self) -> i16 {
        self.code.code()
    }

    fn message(&self) -> Option<StrBytes> {
        self.message.clone().map(str_bytes)
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        ApiError::new(storage_error(&e), e.to_string())
    }
}

/// The error code and message of a result, for response fields.
fn outcome<T>(result: &Result<T, ApiError>) -> (i16, Option<StrBytes>) {
    match result {
        Ok(_) => (0, None),
        Err(e) => (e.code(), e.message()),
    }
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Kafka's resource types in the config APIs.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

impl Broker {
    /// Replaces a topic's configs with what `change` makes of the current ones, after
    /// validating every value. Broker configs are set by flags, so only topics qualify.
    async fn alter_topic_configs(
        &self,
        resource_type: i8,
        name: &StrBytes,
        validate_only: bool,
        change: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError>,
    ) -> Result<(), ApiError> {
        match resource_type {
            RESOURCE_TOPIC => {}
            RESOURCE_BROKER => {
                return Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    "Shale's broker configs are set with `shale serve` flags, not AlterConfigs",
                ))
            }
            other => {
                return Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("Shale alters topic configs only, not resource type {other}"),
                ))
            }
        }
        let validated = |current: &BTreeMap<String, String>| {
            let configs = change(current)?;
            for (key, value) in &configs {
                config::validate_topic_config(key, Some(value))
                    .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.0))?;
            }
            Ok::<_, ApiError>(configs)
        };
        if validate_only {
            let topic = self
                .log
                .topic(name)
                .ok_or_else(|| ApiError::from(LogError::UnknownTopic(name.to_string())))?;
            return validated(&topic.configs).map(|_| ());
        }
        self.log
            .update_topic(name, |topic| {
                validated(&topic.configs).map(|configs| (topic.partitions.len() as u32, configs))
            })
            .await?;
        tracing::info!(topic = name.as_str(), "altered topic configs");
        Ok(())
    }
}
