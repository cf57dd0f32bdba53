//! SyncGroup: the leader hands out assignments; every member receives its own.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::{str_bytes, Broker};

pub async fn handle(broker: &Broker, request: SyncGroupRequest) -> SyncGroupResponse {
    let result = broker
        .groups
        .sync(
            &request.group_id,
            &request.member_id,
            request.group_instance_id.as_deref(),
            request.generation_id,
            request.protocol_type.as_deref(),
            request.protocol_name.as_deref(),
            request
                .assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        )
        .await;
    let mut response = SyncGroupResponse::default();
    response.error_code = result.error.map_or(0, |e| e.code());
    response.protocol_type = result.protocol_type.map(str_bytes);
    response.protocol_name = result.protocol.map(str_bytes);
    response.assignment = result.assignment;
    response
}
