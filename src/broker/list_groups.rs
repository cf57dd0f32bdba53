//! ListGroups, with the state (v4+) and type (v5+) filters.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{str_bytes, Broker};

/// Shale's groups all use the classic rebalance protocol.
const GROUP_TYPE: &str = "classic";

pub async fn handle(broker: &Broker, request: ListGroupsRequest) -> ListGroupsResponse {
    let wants = |filter: &[kafka_protocol::protocol::StrBytes], value: &str| {
        filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(value))
    };
    let mut response = ListGroupsResponse::default();
    response.groups = broker
        .groups
        .list()
        .await
        .into_iter()
        .filter(|g| {
            wants(&request.states_filter, g.state.name())
                && wants(&request.types_filter, GROUP_TYPE)
        })
        .map(|g| {
            let mut listed = ListedGroup::default();
            listed.group_id = GroupId(str_bytes(g.group_id));
            listed.protocol_type = str_bytes(g.protocol_type);
            listed.group_state = str_bytes(g.state.name());
            listed.group_type = str_bytes(GROUP_TYPE);
            listed
        })
        .collect();
    response
}
