//! DescribeAcls: Shale has no authorizer, so it answers as a Kafka broker without one:
//! SECURITY_DISABLED. Admin tools then report that ACLs are not in use.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::DescribeAclsResponse;

use super::str_bytes;

pub fn handle() -> DescribeAclsResponse {
    let mut response = DescribeAclsResponse::default();
    response.error_code = ResponseError::SecurityDisabled.code();
    response.error_message = Some(str_bytes("No Authorizer is configured on the broker"));
    response
}
