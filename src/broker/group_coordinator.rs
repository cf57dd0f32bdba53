//! The group coordinator: Kafka's classic consumer-group protocol and committed offsets.
//!
//! A group moves through `Empty -> PreparingRebalance -> CompletingRebalance -> Stable`.
//! A rebalance starts when a member joins, leaves, changes its subscription or misses its
//! session timeout; it completes once every known member has rejoined (or the rebalance
//! timeout drops those that did not), the leader computes assignments, and SyncGroup hands
//! them out. Assignment strategies (range, roundrobin, cooperative-sticky) run in the
//! clients; the broker only picks a protocol every member supports. Static members
//! (`group.instance.id`) keep their assignment across a quick restart without a rebalance.
//!
//! Committed offsets and group records are stored through `log`; a commit is acknowledged
//! only once durable. A background sweep enforces session and rebalance timeouts; another
//! expires committed offsets as Kafka's `offsets.retention.minutes` does, and removes empty
//! groups with nothing committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::Decodable;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Mutex};

use crate::log::groups::GroupWrite;
use crate::log::{LogError, LogStore};
use crate::storage::keys::OffsetValue;

/// How often session and rebalance deadlines are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Longest offset-commit metadata accepted, as Kafka's `offset.metadata.max.bytes`.
const MAX_METADATA_BYTES: usize = 4096;

/// Group settings, from `shale serve` flags.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    /// How long the first rebalance of an empty group waits for more members to join.
    pub initial_rebalance_delay: Duration,
    /// How long committed offsets are kept (Kafka's `offsets.retention.minutes`).
    pub offsets_retention: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupState {
    #[default]
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka's admin APIs use.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A JoinGroup request, version differences resolved.
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub client_id: String,
    pub client_host: String,
    /// v4+: a new member first gets MEMBER_ID_REQUIRED and a member id to rejoin with.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member with its subscription, for the leader only.
    pub members: Vec<JoinedMember>,
    /// The leader already holds the current assignment (a static leader rejoined).
    pub skip_assignment: bool,
}

impl JoinResult {
    fn failed(error: ResponseError, member_id: &str) -> Self {
        JoinResult {
            error: Some(error),
            generation: -1,
            member_id: member_id.to_string(),
            ..JoinResult::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    fn failed(error: ResponseError) -> Self {
        SyncResult {
            error: Some(error),
            ..SyncResult::default()
        }
    }
}

/// A member as DescribeGroups shows it.
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

pub struct GroupDescription {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat: Instant,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    fn expired(&self, now: Instant) -> bool {
        self.join_waiter.is_none() && now.duration_since(self.last_heartbeat) > self.session_timeout
    }
}

#[derive(Default)]
struct Group {
    state: GroupState,
    protocol_type: Option<String>,
    protocol: Option<String>,
    generation: i32,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they rejoin or expire.
    pending: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    /// The first rebalance of an empty group completes no earlier than this.
    join_not_before: Option<Instant>,
    offsets: BTreeMap<(String, i32), OffsetValue>,
    /// When the group last became empty (Unix ms): its offsets' retention starts here.
    emptied_ms: i64,
}

impl Group {
    fn member_with_instance(&self, instance: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id.clone())
    }

    /// Protocols every current member supports, in the first member's preference order.
    fn common_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut common: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for member in members {
            common.retain(|name| member.protocols.iter().any(|(n, _)| n == name));
        }
        common
    }

    /// The protocol the most members list first among those all support.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.common_protocols();
        let mut votes: Vec<usize> = vec![0; candidates.len()];
        for member in self.members.values() {
            if let Some(choice) = member
                .protocols
                .iter()
                .find_map(|(name, _)| candidates.iter().position(|c| c == name))
            {
                votes[choice] += 1;
            }
        }
        let best = votes
            .iter()
            .enumerate()
            .max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i)))?;
        candidates.get(best.0).cloned()
    }

    fn join_result(&self, member_id: &str) -> JoinResult {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
            skip_assignment: false,
        }
    }

    /// Starts a rebalance: every member must rejoin before the next generation.
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == GroupState::CompletingRebalance {
            for member in self.members.values_mut() {
                if let Some(waiter) = member.sync_waiter.take() {
                    let _ = waiter.send(SyncResult::failed(ResponseError::RebalanceInProgress));
                }
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        self.join_not_before = (self.state == GroupState::Empty && !initial_delay.is_zero())
            .then(|| now + initial_delay);
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline = Some(now + timeout);
    }

    fn all_joined(&self, now: Instant) -> bool {
        self.pending.is_empty()
            && self.members.values().all(|m| m.join_waiter.is_some())
            && self.join_not_before.is_none_or(|t| now >= t)
    }

    /// Ends the join phase: members that did not rejoin are dropped, the generation moves
    /// on, and every joined member gets its answer. Returns whether the group is now empty.
    fn complete_join(&mut self, now: Instant) -> bool {
        self.members.retain(|_, m| m.join_waiter.is_some());
        self.pending.clear();
        self.generation += 1;
        self.rebalance_deadline = None;
        self.join_not_before = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.emptied_ms = crate::log::now_ms();
            self.protocol = None;
            self.leader = None;
            return true;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result(&id);
            if let Some(member) = self.members.get_mut(&id) {
                member.last_heartbeat = now;
                member.assignment = Bytes::new();
                if let Some(waiter) = member.join_waiter.take() {
                    let _ = waiter.send(result);
                }
            }
        }
        false
    }

    /// Whether a member may act for `member_id` (and `instance_id`) now.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if let Some(instance) = instance_id {
            match self.member_with_instance(instance) {
                Some(id) if id != member_id => return Err(ResponseError::FencedInstanceId),
                _ => {}
            }
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(ResponseError::UnknownMemberId)
        }
    }

    /// Committed offsets past their retention at `now_ms`, as Kafka's offset cleanup picks
    /// them: all of an empty group's once it has been empty that long; a live consumer
    /// group's for topics none of its members subscribes to, each from its commit; and a
    /// group without a protocol's (manual assignment) each from its commit.
    fn expired_offsets(&self, now_ms: i64, retention: Duration) -> Vec<(String, i32)> {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let expired = |since: i64| now_ms.saturating_sub(since) >= retention_ms;
        let committed_long_ago = |unsubscribed: &dyn Fn(&str) -> bool| -> Vec<(String, i32)> {
            self.offsets
                .iter()
                .filter(|((topic, _), value)| {
                    unsubscribed(topic) && expired(value.commit_timestamp)
                })
                .map(|(key, _)| key.clone())
                .collect()
        };
        match (self.protocol_type.as_deref(), self.state) {
            (Some(_), GroupState::Empty) if expired(self.emptied_ms) => {
                self.offsets.keys().cloned().collect()
            }
            (Some("consumer"), GroupState::Stable) => match subscribed_topics(self) {
                Some(subscribed) => {
                    committed_long_ago(&|topic| !subscribed.iter().any(|t| t == topic))
                }
                None => Vec::new(),
            },
            (None, _) => committed_long_ago(&|_| true),
            _ => Vec::new(),
        }
    }

    fn record(&self) -> GroupRecord {
        GroupRecord {
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            generation: self.generation,
            leader: self.leader.clone(),
            emptied_ms: Some(self.emptied_ms),
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberRecord {
                    id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    protocols: m
                        .protocols
                        .iter()
                        .map(|(n, b)| (n.clone(), b.to_vec()))
                        .collect(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
        }
    }

    /// Rebuilds a stored group; `now_ms` stands in for an emptied time older records lack.
    fn from_record(record: GroupRecord, now: Instant, now_ms: i64) -> Group {
        let members: BTreeMap<String, Member> = record
            .members
            .into_iter()
            .map(|m| {
                (
                    m.id,
                    Member {
                        instance_id: m.instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        session_timeout: Duration::from_millis(m.session_timeout_ms),
                        rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                        protocols: m
                            .protocols
                            .into_iter()
                            .map(|(n, b)| (n, Bytes::from(b)))
                            .collect(),
                        assignment: Bytes::from(m.assignment),
                        last_heartbeat: now,
                        join_waiter: None,
                        sync_waiter: None,
                    },
                )
            })
            .collect();
        Group {
            state: if members.is_empty() {
                GroupState::Empty
            } else {
                GroupState::Stable
            },
            protocol_type: record.protocol_type,
            protocol: record.protocol,
            generation: record.generation,
            leader: record.leader,
            members,
            emptied_ms: record.emptied_ms.unwrap_or(now_ms),
            ..Group::default()
        }
    }
}

/// The stored form of a group (its committed offsets are stored separately).
#[derive(Serialize, Deserialize)]
struct GroupRecord {
    protocol_type: Option<String>,
    protocol: Option<String>,
    generation: i32,
    leader: Option<String>,
    /// Absent in records written before offsets expired.
    #[serde(default)]
    emptied_ms: Option<i64>,
    members: Vec<MemberRecord>,
}

#[derive(Serialize, Deserialize)]
struct MemberRecord {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocols: Vec<(String, Vec<u8>)>,
    assignment: Vec<u8>,
}

/// What a JoinGroup gets under the lock: an answer now, or one to wait for (after storing
/// the writes the join caused).
enum Joining {
    Answered(Box<JoinResult>),
    Waiting(oneshot::Receiver<JoinResult>, Vec<GroupWrite>),
}

/// One partition's offset to commit.
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

pub struct GroupCoordinator {
    log: Arc<LogStore>,
    config: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
    /// Offset cleanups that deleted something, counted once their deletes are issued. A
    /// transaction that wrote offsets while one ran writes them again (`apply_committed`).
    cleanups: AtomicU64,
}

impl GroupCoordinator {
    /// Loads stored groups and offsets, and starts the timeout sweep.
    pub async fn start(log: Arc<LogStore>, config: GroupConfig) -> Result<Arc<Self>, LogError> {
        let stored = log.load_groups().await?;
        let now = Instant::now();
        let now_ms = crate::log::now_ms();
        let mut groups: HashMap<String, Group> = HashMap::new();
        for (id, record) in stored.records {
            match serde_json::from_slice::<GroupRecord>(&record) {
                Ok(record) => {
                    groups.insert(id, Group::from_record(record, now, now_ms));
                }
                Err(e) => {
                    tracing::warn!(group = %id, error = %e, "ignoring unreadable group record")
                }
            }
        }
        for (group, topic, partition, value) in stored.offsets {
            groups
                .entry(group)
                .or_default()
                .offsets
                .insert((topic, partition), value);
        }
        let coordinator = Arc::new(GroupCoordinator {
            log,
            config,
            groups: Mutex::new(groups),
            cleanups: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&coordinator);
        tokio::spawn(every(weak.clone(), SWEEP_INTERVAL, |c| async move {
            c.sweep_once().await
        }));
        // Kafka checks every `offsets.retention.check.interval.ms` (ten minutes); a short
        // retention is checked every half of it, so an offset outlives it by half at most.
        let cleanup = (coordinator.config.offsets_retention / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(600));
        tokio::spawn(every(weak, cleanup, |c| async move {
            c.expire_offsets_once().await
        }));
        Ok(coordinator)
    }

    fn new_member_id(client_id: &str) -> String {
        format!("{client_id}-{}", uuid::Uuid::new_v4())
    }

    fn persist(&self, group_id: &str, group: &Group) -> GroupWrite {
        GroupWrite::Group {
            group: group_id.to_string(),
            record: serde_json::to_vec(&group.record()).ok().map(Bytes::from),
        }
    }

    /// Writes group records without waiting: a lost one only costs members a rejoin.
    async fn store(&self, writes: Vec<GroupWrite>) {
        if let Err(e) = self.log.write_groups(writes).await {
            tracing::warn!(error = %e, "storing group state failed");
        }
    }

    pub async fn join(&self, request: JoinRequest) -> JoinResult {
        let (waiter, writes) = {
            let mut groups = self.groups.lock().await;
            match self.join_locked(&mut groups, &request) {
                Joining::Waiting(waiter, writes) => (waiter, writes),
                Joining::Answered(result) => return *result,
            }
        };
        self.store(writes).await;
        waiter.await.unwrap_or_else(|_| {
            JoinResult::failed(ResponseError::UnknownMemberId, &request.member_id)
        })
    }

    fn join_locked(&self, groups: &mut HashMap<String, Group>, request: &JoinRequest) -> Joining {
        let fail =
            |error| Joining::Answered(Box::new(JoinResult::failed(error, &request.member_id)));
        if request.group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        if request.session_timeout < self.config.min_session_timeout
            || request.session_timeout > self.config.max_session_timeout
        {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        if !groups.contains_key(&request.group_id)
            && !request.member_id.is_empty()
            && request.instance_id.is_none()
        {
            return fail(ResponseError::UnknownMemberId);
        }
        let now = Instant::now();
        let group = groups.entry(request.group_id.clone()).or_default();
        if !group.members.is_empty() {
            let common = group.common_protocols();
            let compatible = group.protocol_type.as_deref() == Some(request.protocol_type.as_str())
                && request
                    .protocols
                    .iter()
                    .any(|(name, _)| common.contains(name));
            if !compatible {
                return fail(ResponseError::InconsistentGroupProtocol);
            }
        }

        let member_id = if request.member_id.is_empty() {
            match &request.instance_id {
                Some(instance) => match group.member_with_instance(instance) {
                    Some(old_id) => {
                        // A static member restarted: it takes over its old identity.
                        let new_id = Self::new_member_id(&request.client_id);
                        if let Some(mut member) = group.members.remove(&old_id) {
                            member.join_waiter = None;
                            member.sync_waiter = None;
                            group.members.insert(new_id.clone(), member);
                        }
                        if group.leader.as_deref() == Some(old_id.as_str()) {
                            group.leader = Some(new_id.clone());
                        }
                        let unchanged = group
                            .members
                            .get(&new_id)
                            .is_some_and(|m| m.protocols == request.protocols);
                        if group.state == GroupState::Stable && unchanged {
                            let member = group.members.get_mut(&new_id).expect("just inserted");
                            member.last_heartbeat = now;
                            member.session_timeout = request.session_timeout;
                            member.rebalance_timeout = request.rebalance_timeout;
                            let mut result = group.join_result(&new_id);
                            result.skip_assignment = !result.members.is_empty();
                            let writes = vec![self.persist(&request.group_id, group)];
                            let (tx, rx) = oneshot::channel();
                            let _ = tx.send(result);
                            return Joining::Waiting(rx, writes);
                        }
                        new_id
                    }
                    None => Self::new_member_id(&request.client_id),
                },
                None if request.require_known_member_id => {
                    let id = Self::new_member_id(&request.client_id);
                    group
                        .pending
                        .insert(id.clone(), now + request.session_timeout);
                    return Joining::Answered(Box::new(JoinResult::failed(
                        ResponseError::MemberIdRequired,
                        &id,
                    )));
                }
                None => Self::new_member_id(&request.client_id),
            }
        } else {
            let known = group.members.contains_key(&request.member_id);
            if !known && group.pending.remove(&request.member_id).is_none() {
                return fail(ResponseError::UnknownMemberId);
            }
            if known {
                if let Err(error) =
                    group.check_member(&request.member_id, request.instance_id.as_deref())
                {
                    return fail(error);
                }
            }
            request.member_id.clone()
        };

        let is_new = !group.members.contains_key(&member_id);
        let member = group
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                instance_id: request.instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                session_timeout: request.session_timeout,
                rebalance_timeout: request.rebalance_timeout,
                protocols: request.protocols.clone(),
                assignment: Bytes::new(),
                last_heartbeat: now,
                join_waiter: None,
                sync_waiter: None,
            });
        let protocols_changed = member.protocols != request.protocols;
        member.protocols = request.protocols.clone();
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        member.last_heartbeat = now;
        group.protocol_type = Some(request.protocol_type.clone());

        let is_leader = group.leader.as_deref() == Some(member_id.as_str());
        let answer_now = !is_new
            && !protocols_changed
            && match group.state {
                GroupState::CompletingRebalance => true,
                GroupState::Stable => !is_leader,
                _ => false,
            };
        let (tx, rx) = oneshot::channel();
        if answer_now {
            return Joining::Answered(Box::new(group.join_result(&member_id)));
        }
        if let Some(member) = group.members.get_mut(&member_id) {
            member.join_waiter = Some(tx);
        }
        if group.state != GroupState::PreparingRebalance {
            group.prepare_rebalance(now, self.config.initial_rebalance_delay);
        }
        let mut writes = Vec::new();
        if group.all_joined(now) && group.complete_join(now) {
            writes.push(self.persist(&request.group_id, group));
        }
        Joining::Waiting(rx, writes)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResult {
        let (waiter, writes) = {
            let mut groups = self.groups.lock().await;
            let Some(group) = groups.get_mut(group_id) else {
                return SyncResult::failed(ResponseError::UnknownMemberId);
            };
            if let Err(error) = group.check_member(member_id, instance_id) {
                return SyncResult::failed(error);
            }
            if generation != group.generation {
                return SyncResult::failed(ResponseError::IllegalGeneration);
            }
            let mismatch = |given: Option<&str>, actual: &Option<String>| {
                given.is_some_and(|g| actual.as_deref() != Some(g))
            };
            if mismatch(protocol_type, &group.protocol_type) || mismatch(protocol, &group.protocol)
            {
                return SyncResult::failed(ResponseError::InconsistentGroupProtocol);
            }
            let now = Instant::now();
            if let Some(member) = group.members.get_mut(member_id) {
                member.last_heartbeat = now;
            }
            let answer = |group: &Group, assignment: Bytes| SyncResult {
                error: None,
                protocol_type: group.protocol_type.clone(),
                protocol: group.protocol.clone(),
                assignment,
            };
            match group.state {
                GroupState::Empty => return SyncResult::failed(ResponseError::UnknownMemberId),
                GroupState::PreparingRebalance => {
                    return SyncResult::failed(ResponseError::RebalanceInProgress)
                }
                GroupState::Stable => {
                    let assignment = group
                        .members
                        .get(member_id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default();
                    return answer(group, assignment);
                }
                GroupState::CompletingRebalance => {}
            }
            let (tx, rx) = oneshot::channel();
            if let Some(member) = group.members.get_mut(member_id) {
                member.sync_waiter = Some(tx);
            }
            let mut writes = Vec::new();
            if group.leader.as_deref() == Some(member_id) {
                let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                group.state = GroupState::Stable;
                let results: Vec<(String, SyncResult)> = group
                    .members
                    .keys()
                    .map(|id| {
                        (
                            id.clone(),
                            answer(group, given.remove(id).unwrap_or_default()),
                        )
                    })
                    .collect();
                for (id, result) in results {
                    if let Some(member) = group.members.get_mut(&id) {
                        member.assignment = result.assignment.clone();
                        if let Some(waiter) = member.sync_waiter.take() {
                            let _ = waiter.send(result);
                        }
                    }
                }
                writes.push(self.persist(group_id, group));
            }
            (rx, writes)
        };
        self.store(writes).await;
        waiter
            .await
            .unwrap_or_else(|_| SyncResult::failed(ResponseError::RebalanceInProgress))
    }

    pub async fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Option<ResponseError> {
        let mut groups = self.groups.lock().await;
        let Some(group) = groups.get_mut(group_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if let Err(error) = group.check_member(member_id, instance_id) {
            return Some(error);
        }
        if generation != group.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        if let Some(member) = group.members.get_mut(member_id) {
            member.last_heartbeat = Instant::now();
        }
        match group.state {
            GroupState::Empty => Some(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => None,
        }
    }

    /// Removes members (by member id, or by instance id for static members). Returns an
    /// error per member, in order.
    pub async fn leave(
        &self,
        group_id: &str,
        leaving: &[(String, Option<String>)],
    ) -> Vec<Option<ResponseError>> {
        let mut writes = Vec::new();
        let errors = {
            let mut groups = self.groups.lock().await;
            let Some(group) = groups.get_mut(group_id) else {
                return vec![Some(ResponseError::UnknownMemberId); leaving.len()];
            };
            let now = Instant::now();
            let mut errors = Vec::with_capacity(leaving.len());
            for (member_id, instance_id) in leaving {
                let target = match instance_id {
                    Some(instance) => match group.member_with_instance(instance) {
                        Some(id) if member_id.is_empty() || *id == *member_id => Ok(id),
                        Some(_) => Err(ResponseError::FencedInstanceId),
                        None => Err(ResponseError::UnknownMemberId),
                    },
                    None if group.members.contains_key(member_id) => Ok(member_id.clone()),
                    None if group.pending.remove(member_id).is_some() => {
                        errors.push(None);
                        continue;
                    }
                    None => Err(ResponseError::UnknownMemberId),
                };
                match target {
                    Ok(id) => {
                        group.members.remove(&id);
                        tracing::debug!(group = group_id, member = %id, "member left");
                        errors.push(None);
                    }
                    Err(error) => errors.push(Some(error)),
                }
            }
            if errors.iter().any(Option::is_none) && self.after_removal(group, now) {
                writes.push(self.persist(group_id, group));
            }
            errors
        };
        self.store(writes).await;
        errors
    }

    /// Reacts to members having gone: rebalance, or finish a rebalance waiting on them.
    /// Returns whether the group became empty (and so should be stored).
    fn after_removal(&self, group: &mut Group, now: Instant) -> bool {
        match group.state {
            GroupState::Empty => false,
            GroupState::Stable | GroupState::CompletingRebalance => {
                group.prepare_rebalance(now, Duration::ZERO);
                group.all_joined(now) && group.complete_join(now)
            }
            GroupState::PreparingRebalance => group.all_joined(now) && group.complete_join(now),
        }
    }

    /// Drops members whose session expired and finishes rebalances that timed out.
    async fn sweep_once(&self) {
        let mut writes = Vec::new();
        {
            let mut groups = self.groups.lock().await;
            let now = Instant::now();
            for (group_id, group) in groups.iter_mut() {
                group.pending.retain(|_, expiry| *expiry > now);
                let expired: Vec<String> = group
                    .members
                    .iter()
                    .filter(|(_, m)| m.expired(now))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &expired {
                    tracing::info!(group = %group_id, member = %id, "member session expired");
                    group.members.remove(id);
                }
                let emptied = if !expired.is_empty() {
                    self.after_removal(group, now)
                } else if group.state == GroupState::PreparingRebalance
                    && (group.all_joined(now) || group.rebalance_deadline.is_some_and(|d| now >= d))
                {
                    group.complete_join(now)
                } else {
                    false
                };
                if emptied {
                    writes.push(self.persist(group_id, group));
                }
            }
        }
        self.store(writes).await;
    }

    /// Drops expired committed offsets, then groups left empty with nothing committed
    /// (Kafka's offset cleanup, after which such a group is dead). The deletes are issued
    /// under the lock, so a commit made after this pass is written after them; they are not
    /// waited on, as one lost to a crash is made again by the next pass.
    async fn expire_offsets_once(&self) {
        let now_ms = crate::log::now_ms();
        let retention = self.config.offsets_retention;
        let mut groups = self.groups.lock().await;
        let mut writes = Vec::new();
        let mut removed_groups = 0;
        groups.retain(|group_id, group| {
            for (topic, partition) in group.expired_offsets(now_ms, retention) {
                group.offsets.remove(&(topic.clone(), partition));
                writes.push(GroupWrite::Offset {
                    group: group_id.clone(),
                    topic,
                    partition,
                    value: None,
                });
            }
            let dead = group.state == GroupState::Empty
                && group.offsets.is_empty()
                && group.pending.is_empty();
            if dead {
                tracing::debug!(group = %group_id, "removing an empty group with no committed offsets");
                removed_groups += 1;
                writes.push(GroupWrite::Group {
                    group: group_id.clone(),
                    record: None,
                });
            }
            !dead
        });
        if !writes.is_empty() {
            // One line per pass, as Kafka logs its cleanup, whatever the number of groups.
            tracing::info!(
                offsets = writes.len() - removed_groups,
                groups = removed_groups,
                "expired committed offsets and removed empty groups"
            );
            self.store(writes).await;
            self.cleanups.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Where the offset cleanup stands; a transaction reads it before writing its offsets
    /// and hands it to `apply_committed`.
    pub fn cleanup_mark(&self) -> u64 {
        self.cleanups.load(Ordering::SeqCst)
    }

    /// Commits offsets durably. Returns the group-level error, or one error per offset.
    pub async fn commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: Vec<OffsetCommit>,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let (errors, pending) = {
            let mut groups = self.groups.lock().await;
            let group = match groups.get_mut(group_id) {
                Some(group) => group,
                None if generation < 0 => groups.entry(group_id.to_string()).or_default(),
                None => return Err(ResponseError::IllegalGeneration),
            };
            let simple = generation < 0 && group.state == GroupState::Empty;
            if !simple {
                if group.state == GroupState::CompletingRebalance {
                    return Err(ResponseError::RebalanceInProgress);
                }
                group.check_member(member_id, instance_id)?;
                if generation != group.generation {
                    return Err(ResponseError::IllegalGeneration);
                }
                if let Some(member) = group.members.get_mut(member_id) {
                    member.last_heartbeat = Instant::now();
                }
            }
            let now_ms = crate::log::now_ms();
            let mut errors = Vec::with_capacity(offsets.len());
            let mut writes = Vec::new();
            for commit in offsets {
                if let Err(error) =
                    self.check_offset(&commit.topic, commit.partition, &commit.metadata)
                {
                    errors.push(Some(error));
                } else {
                    let value = OffsetValue {
                        offset: commit.offset,
                        leader_epoch: commit.leader_epoch,
                        commit_timestamp: now_ms,
                        metadata: commit.metadata,
                    };
                    group
                        .offsets
                        .insert((commit.topic.clone(), commit.partition), value.clone());
                    writes.push(GroupWrite::Offset {
                        group: group_id.to_string(),
                        topic: commit.topic,
                        partition: commit.partition,
                        value: Some(value),
                    });
                    errors.push(None);
                }
            }
            let pending = self
                .log
                .write_groups(writes)
                .await
                .map_err(|e| storage_failure(&e))?;
            (errors, pending)
        };
        pending.durable().await.map_err(|e| storage_failure(&e))?;
        Ok(errors)
    }

    /// Checks that a transactional offset commit comes from a current member (KIP-447), so
    /// a zombie from an older generation cannot commit. Commits without a generation (-1)
    /// come from producers outside a group's protocol and are not checked.
    pub async fn check_member(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        if generation < 0 && member_id.is_empty() {
            return Ok(());
        }
        let groups = self.groups.lock().await;
        let group = groups
            .get(group_id)
            .ok_or(ResponseError::IllegalGeneration)?;
        group.check_member(member_id, instance_id)?;
        if generation != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Makes offsets that a committed transaction stored visible to OffsetFetch. If an
    /// offset cleanup ran since `mark` (read before the transaction wrote them), its
    /// deletes may have landed after the transaction's write, so the offsets are written
    /// again, and durably, before the commit is acknowledged.
    pub async fn apply_committed(
        &self,
        offsets: Vec<(String, String, i32, OffsetValue)>,
        mark: u64,
    ) -> Result<(), ResponseError> {
        let pending = {
            let mut groups = self.groups.lock().await;
            let mut writes = Vec::new();
            let rewrite = self.cleanup_mark() != mark;
            for (group, topic, partition, value) in offsets {
                if rewrite {
                    writes.push(GroupWrite::Offset {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition,
                        value: Some(value.clone()),
                    });
                }
                groups
                    .entry(group)
                    .or_default()
                    .offsets
                    .insert((topic, partition), value);
            }
            self.log
                .write_groups(writes)
                .await
                .map_err(|e| storage_failure(&e))?
        };
        pending.durable().await.map_err(|e| storage_failure(&e))
    }

    /// Whether an offset may be committed: its partition exists and its metadata fits.
    pub fn check_offset(
        &self,
        topic: &str,
        partition: i32,
        metadata: &str,
    ) -> Result<(), ResponseError> {
        let known = self
            .log
            .topic(topic)
            .is_some_and(|t| t.partition(partition).is_some());
        if !known {
            Err(ResponseError::UnknownTopicOrPartition)
        } else if metadata.len() > MAX_METADATA_BYTES {
            Err(ResponseError::OffsetMetadataTooLarge)
        } else {
            Ok(())
        }
    }

    /// Committed offsets of a group: for the given partitions (`None` offset where nothing
    /// is committed), or every committed partition when `wanted` is `None`.
    pub async fn committed(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, Vec<(i32, Option<OffsetValue>)>)> {
        let groups = self.groups.lock().await;
        let offsets = groups.get(group_id).map(|g| &g.offsets);
        match wanted {
            Some(wanted) => wanted
                .into_iter()
                .map(|(topic, partitions)| {
                    let found = partitions
                        .into_iter()
                        .map(|p| (p, offsets.and_then(|o| o.get(&(topic.clone(), p)).cloned())))
                        .collect();
                    (topic, found)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<OffsetValue>)>> =
                    BTreeMap::new();
                for ((topic, partition), value) in offsets.into_iter().flatten() {
                    by_topic
                        .entry(topic.clone())
                        .or_default()
                        .push((*partition, Some(value.clone())));
                }
                by_topic.into_iter().collect()
            }
        }
    }

    pub async fn list(&self) -> Vec<GroupListing> {
        let groups = self.groups.lock().await;
        let mut listing: Vec<GroupListing> = groups
            .iter()
            .map(|(id, g)| GroupListing {
                group_id: id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state,
            })
            .collect();
        listing.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        listing
    }

    pub async fn describe(&self, group_id: &str) -> GroupDescription {
        let groups = self.groups.lock().await;
        let Some(group) = groups.get(group_id) else {
            return GroupDescription {
                state: "Dead",
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            };
        };
        let protocol = group.protocol.clone().unwrap_or_default();
        GroupDescription {
            state: group.state.name(),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            members: group
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
            protocol,
        }
    }

    /// Deletes an empty group and its committed offsets.
    pub async fn delete(&self, group_id: &str) -> Result<(), ResponseError> {
        let pending = {
            let mut groups = self.groups.lock().await;
            let group = groups.get(group_id).ok_or(ResponseError::GroupIdNotFound)?;
            if !group.members.is_empty() || group.state != GroupState::Empty {
                return Err(ResponseError::NonEmptyGroup);
            }
            let mut writes: Vec<GroupWrite> = group
                .offsets
                .keys()
                .map(|(topic, partition)| GroupWrite::Offset {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: None,
                })
                .collect();
            writes.push(GroupWrite::Group {
                group: group_id.to_string(),
                record: None,
            });
            let pending = self
                .log
                .write_groups(writes)
                .await
                .map_err(|e| storage_failure(&e))?;
            groups.remove(group_id);
            pending
        };
        pending.durable().await.map_err(|e| storage_failure(&e))
    }

    /// Deletes committed offsets; partitions of topics the group's members subscribe to
    /// are refused with GROUP_SUBSCRIBED_TO_TOPIC.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        wanted: Vec<(String, Vec<i32>)>,
    ) -> Result<Vec<(String, Vec<(i32, Option<ResponseError>)>)>, ResponseError> {
        let (results, pending) = {
            let mut groups = self.groups.lock().await;
            let group = groups
                .get_mut(group_id)
                .ok_or(ResponseError::GroupIdNotFound)?;
            let subscribed = subscribed_topics(group).unwrap_or_default();
            let mut writes = Vec::new();
            let mut results = Vec::new();
            for (topic, partitions) in wanted {
                let mut topic_results = Vec::new();
                for partition in partitions {
                    if subscribed.contains(&topic) {
                        topic_results
                            .push((partition, Some(ResponseError::GroupSubscribedToTopic)));
                        continue;
                    }
                    if group.offsets.remove(&(topic.clone(), partition)).is_some() {
                        writes.push(GroupWrite::Offset {
                            group: group_id.to_string(),
                            topic: topic.clone(),
                            partition,
                            value: None,
                        });
                    }
                    topic_results.push((partition, None));
                }
                results.push((topic, topic_results));
            }
            let pending = self
                .log
                .write_groups(writes)
                .await
                .map_err(|e| storage_failure(&e))?;
            (results, pending)
        };
        pending.durable().await.map_err(|e| storage_failure(&e))?;
        Ok(results)
    }
}

/// Topics the members of a consumer group subscribe to, read from their subscriptions;
/// `None` when the group does not use the consumer protocol or a subscription is
/// unreadable (as Kafka, which then knows no subscribed topics).
fn subscribed_topics(group: &Group) -> Option<Vec<String>> {
    if group.protocol_type.as_deref() != Some("consumer") {
        return None;
    }
    if group.members.is_empty() {
        return Some(Vec::new());
    }
    let protocol = group.protocol.as_deref()?;
    let mut topics = Vec::new();
    for member in group.members.values() {
        let mut metadata = member.metadata_for(protocol);
        if metadata.remaining() < 2 {
            return None;
        }
        let version = metadata.get_i16();
        // Newer subscription versions keep the v3 layout for the fields read here.
        let subscription =
            ConsumerProtocolSubscription::decode(&mut metadata, version.clamp(0, 3)).ok()?;
        topics.extend(subscription.topics.into_iter().map(|t| t.to_string()));
    }
    Some(topics)
}

fn storage_failure(e: &LogError) -> ResponseError {
    tracing::error!(error = %e, "storing group state failed");
    ResponseError::CoordinatorNotAvailable
}

/// Runs `pass` every `period` while the coordinator lives.
async fn every<F, Pass>(coordinator: Weak<GroupCoordinator>, period: Duration, pass: F)
where
    F: Fn(Arc<GroupCoordinator>) -> Pass,
    Pass: std::future::Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(coordinator) = coordinator.upgrade() else {
            return;
        };
        pass(coordinator).await;
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;

    const RETENTION: Duration = Duration::from_millis(1000);

    fn offset(commit_timestamp: i64) -> OffsetValue {
        OffsetValue {
            offset: 1,
            leader_epoch: -1,
            commit_timestamp,
            metadata: String::new(),
        }
    }

    /// A member whose `range` subscription lists `topics`, as a Java consumer sends it.
    fn subscriber(topics: &[&str]) -> Member {
        let subscription = ConsumerProtocolSubscription::default().with_topics(
            topics
                .iter()
                .map(|t| StrBytes::from_string(t.to_string()))
                .collect(),
        );
        let mut metadata = BytesMut::new();
        metadata.put_i16(1);
        subscription.encode(&mut metadata, 1).unwrap();
        Member {
            instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: RETENTION,
            rebalance_timeout: RETENTION,
            protocols: vec![("range".into(), metadata.freeze())],
            assignment: Bytes::new(),
            last_heartbeat: Instant::now(),
            join_waiter: None,
            sync_waiter: None,
        }
    }

    fn group_with(offsets: &[(&str, i64)]) -> Group {
        Group {
            offsets: offsets
                .iter()
                .map(|(topic, at)| (((*topic).to_string(), 0), offset(*at)))
                .collect(),
            ..Group::default()
        }
    }

    fn topics(expired: Vec<(String, i32)>) -> Vec<String> {
        expired.into_iter().map(|(topic, _)| topic).collect()
    }

    #[test]
    fn an_empty_groups_offsets_expire_together_from_when_it_emptied() {
        let mut group = group_with(&[("old", 0), ("new", 5_000)]);
        group.protocol_type = Some("consumer".into());
        group.emptied_ms = 5_000;
        assert!(group.expired_offsets(5_999, RETENTION).is_empty());
        assert_eq!(
            topics(group.expired_offsets(6_000, RETENTION)),
            ["new", "old"]
        );
    }

    #[test]
    fn a_group_without_protocol_loses_each_offset_from_its_commit() {
        let group = group_with(&[("old", 0), ("new", 5_000)]);
        assert_eq!(topics(group.expired_offsets(5_999, RETENTION)), ["old"]);
    }

    #[test]
    fn a_stable_consumer_group_keeps_its_subscribed_topics_offsets() {
        let mut group = group_with(&[("read", 0), ("dropped", 0), ("recent", 5_000)]);
        group.protocol_type = Some("consumer".into());
        group.protocol = Some("range".into());
        group.state = GroupState::Stable;
        group.members.insert("m".into(), subscriber(&["read"]));
        assert_eq!(topics(group.expired_offsets(5_999, RETENTION)), ["dropped"]);

        group.state = GroupState::PreparingRebalance;
        assert!(group.expired_offsets(5_999, RETENTION).is_empty());

        group.state = GroupState::Stable;
        group.members.get_mut("m").unwrap().protocols[0].1 = Bytes::from_static(b"\x00");
        assert!(
            group.expired_offsets(5_999, RETENTION).is_empty(),
            "unreadable subscriptions expire nothing"
        );
    }

    #[test]
    fn the_emptied_time_survives_the_stored_record() {
        let mut group = group_with(&[]);
        group.protocol_type = Some("consumer".into());
        group.emptied_ms = 1_234;
        let stored = serde_json::to_vec(&group.record()).unwrap();
        let loaded =
            Group::from_record(serde_json::from_slice(&stored).unwrap(), Instant::now(), 9);
        assert_eq!(loaded.emptied_ms, 1_234);
        let older = br#"{"protocol_type":"consumer","protocol":null,"generation":3,"leader":null,"members":[]}"#;
        let loaded = Group::from_record(serde_json::from_slice(older).unwrap(), Instant::now(), 9);
        assert_eq!(
            loaded.emptied_ms, 9,
            "a record from before offsets expired gets the load time"
        );
    }
}
