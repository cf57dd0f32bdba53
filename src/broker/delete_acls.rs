//! DeleteAcls: SECURITY_DISABLED for every filter, as by a Kafka broker without an
//! authorizer (there are no ACLs to delete).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_acls_response::DeleteAclsFilterResult;
use kafka_protocol::messages::{DeleteAclsRequest, DeleteAclsResponse};

use super::str_bytes;

pub fn handle(request: DeleteAclsRequest) -> DeleteAclsResponse {
    let mut response = DeleteAclsResponse::default();
    response.filter_results = request
        .filters
        .iter()
        .map(|_| {
            let mut result = DeleteAclsFilterResult::default();
            result.error_code = ResponseError::SecurityDisabled.code();
            result.error_message = Some(str_bytes("No Authorizer is configured."));
            result
        })
        .collect();
    response
}
