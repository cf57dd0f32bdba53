//! SaslHandshake: the mechanism a connection will authenticate with (v1: the exchange
//! follows in SaslAuthenticate requests). Answered by the connection itself, since it
//! changes the connection's state; see `sasl`.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;

use super::sasl::Authenticator;

/// The response, and whether the connection must close after it (an unsupported mechanism
/// or a handshake out of turn, as Kafka does). A v0 handshake gets UNSUPPORTED_VERSION: its
/// exchange would follow as raw frames, which this broker does not read.
pub fn handle(
    auth: &mut Authenticator,
    version: i16,
    request: SaslHandshakeRequest,
) -> (SaslHandshakeResponse, bool) {
    let mut response = SaslHandshakeResponse::default();
    response.mechanisms = auth
        .mechanisms()
        .into_iter()
        .map(StrBytes::from_static_str)
        .collect();
    if version == 0 {
        response.error_code = ResponseError::UnsupportedVersion.code();
        return (response, true);
    }
    let outcome = auth.handshake(&request.mechanism);
    if let Err(error) = outcome {
        response.error_code = error.code();
    }
    (response, outcome.is_err())
}
