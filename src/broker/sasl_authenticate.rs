//! SaslAuthenticate: one step of the SASL exchange the handshake chose. Answered by the
//! connection itself, since it changes the connection's state; see `sasl`.

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslAuthenticateResponse};
use kafka_protocol::protocol::StrBytes;

use super::sasl::Authenticator;

/// The response, and whether the connection must close after it (a failed exchange).
pub fn handle(
    auth: &mut Authenticator,
    request: SaslAuthenticateRequest,
) -> (SaslAuthenticateResponse, bool) {
    let mut response = SaslAuthenticateResponse::default();
    // 0: no re-authentication (KIP-368) is asked of the client.
    response.session_lifetime_ms = 0;
    match auth.authenticate(&request.auth_bytes) {
        Ok(answer) => {
            response.auth_bytes = Bytes::from(answer);
            (response, false)
        }
        Err((error, message)) => {
            tracing::info!(reason = %message, "SASL authentication failed");
            response.error_code = error.code();
            response.error_message = Some(StrBytes::from_string(message));
            (response, true)
        }
    }
}
