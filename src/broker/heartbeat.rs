//! Heartbeat: keeps a member's session alive and tells it when to rejoin.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::Broker;

pub async fn handle(broker: &Broker, request: HeartbeatRequest) -> HeartbeatResponse {
    let error = broker
        .groups
        .heartbeat(
            &request.group_id,
            &request.member_id,
            request.group_instance_id.as_deref(),
            request.generation_id,
        )
        .await;
    let mut response = HeartbeatResponse::default();
    response.error_code = error.map_or(0, |e| e.code());
    response
}
