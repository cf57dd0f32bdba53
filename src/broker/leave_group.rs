//! LeaveGroup: one member (v0-v2) or a batch of members (v3+) leave a group.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::{str_bytes, Broker};

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let errors = broker.groups.leave(&request.group_id, &leaving).await;
    let mut response = LeaveGroupResponse::default();
    if version >= 3 {
        response.members = leaving
            .into_iter()
            .zip(&errors)
            .map(|((member_id, instance_id), error)| {
                let mut member = MemberResponse::default();
                member.member_id = str_bytes(member_id);
                member.group_instance_id = instance_id.map(str_bytes);
                member.error_code = error.map_or(0, |e| e.code());
                member
            })
            .collect();
    } else {
        response.error_code = errors.first().copied().flatten().map_or(0, |e| e.code());
    }
    response
}
