//! ApiVersions: which APIs and versions Shale speaks.
//!
//! A request at a version newer than Shale's never reaches here: the codec answers it in
//! v0 with UNSUPPORTED_VERSION (see `protocol::codec`).

use kafka_protocol::messages::ApiVersionsResponse;

use crate::protocol::codec::api_versions_response;

pub fn handle() -> ApiVersionsResponse {
    let mut response = api_versions_response(None);
    response.finalized_features_epoch = -1;
    response
}
