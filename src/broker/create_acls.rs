//! CreateAcls: refused with SECURITY_DISABLED for every ACL, as by a Kafka broker without
//! an authorizer; Shale does not store ACLs it would not enforce.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::{CreateAclsRequest, CreateAclsResponse};

use super::str_bytes;

pub fn handle(request: CreateAclsRequest) -> CreateAclsResponse {
    let mut response = CreateAclsResponse::default();
    response.results = request
        .creations
        .iter()
        .map(|_| {
            let mut result = AclCreationResult::default();
            result.error_code = ResponseError::SecurityDisabled.code();
            result.error_message = Some(str_bytes("No Authorizer is configured."));
            result
        })
        .collect();
    response
}
