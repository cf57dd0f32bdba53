//! JoinGroup: enter a group's rebalance and learn the generation, leader and protocol.

use std::time::Duration;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::group_coordinator::JoinRequest;
use super::{str_bytes, Broker, RequestContext};

pub async fn handle(
    broker: &Broker,
    context: &RequestContext,
    version: i16,
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    let session_timeout = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
    // v0 has no rebalance timeout: Kafka uses the session timeout.
    let rebalance_timeout = if version >= 1 {
        Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64)
    } else {
        session_timeout
    };
    let result = broker
        .groups
        .join(JoinRequest {
            group_id: request.group_id.to_string(),
            member_id: request.member_id.to_string(),
            instance_id: request.group_instance_id.map(|i| i.to_string()),
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            session_timeout,
            rebalance_timeout,
            client_id: context.client_id.clone(),
            client_host: context.client_host(),
            require_known_member_id: version >= 4,
        })
        .await;
    let mut response = JoinGroupResponse::default();
    response.error_code = result.error.map_or(0, |e| e.code());
    response.generation_id = result.generation;
    response.protocol_type = result.protocol_type.map(str_bytes);
    response.protocol_name = Some(str_bytes(result.protocol.unwrap_or_default()));
    response.leader = str_bytes(result.leader);
    response.member_id = str_bytes(result.member_id);
    response.skip_assignment = version >= 9 && result.skip_assignment;
    response.members = result
        .members
        .into_iter()
        .map(|m| {
            let mut member = JoinGroupResponseMember::default();
            member.member_id = str_bytes(m.member_id);
            member.group_instance_id = m.instance_id.map(str_bytes);
            member.metadata = m.metadata;
            member
        })
        .collect();
    response
}
