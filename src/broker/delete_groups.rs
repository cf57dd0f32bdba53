//! DeleteGroups: remove empty groups and their committed offsets.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::Broker;

pub async fn handle(broker: &Broker, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut response = DeleteGroupsResponse::default();
    for group_id in request.groups_names {
        let outcome = broker.groups.delete(&group_id).await;
        let mut result = DeletableGroupResult::default();
        result.group_id = group_id;
        result.error_code = outcome.err().map_or(0, |e| e.code());
        response.results.push(result);
    }
    response
}
