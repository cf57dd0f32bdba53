//! FindCoordinator: this broker coordinates every group (and, later, transaction).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};

use super::{str_bytes, Broker};

/// Key types Shale coordinates: consumer groups (0) and transactional ids (1).
fn supported(key_type: i8) -> bool {
    matches!(key_type, 0 | 1)
}

pub fn handle(
    broker: &Broker,
    version: i16,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let config = &broker.config;
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let mut coordinator = Coordinator::default();
                coordinator.key = key;
                if supported(request.key_type) {
                    coordinator.node_id = config.node_id.into();
                    coordinator.host = str_bytes(config.advertised_host.clone());
                    coordinator.port = config.advertised_port;
                } else {
                    coordinator.node_id = (-1).into();
                    coordinator.port = -1;
                    coordinator.error_code = ResponseError::InvalidRequest.code();
                }
                coordinator
            })
            .collect();
    } else if supported(request.key_type) {
        response.node_id = config.node_id.into();
        response.host = str_bytes(config.advertised_host.clone());
        response.port = config.advertised_port;
    } else {
        response.error_code = ResponseError::InvalidRequest.code();
        response.node_id = (-1).into();
        response.port = -1;
    }
    response
}
