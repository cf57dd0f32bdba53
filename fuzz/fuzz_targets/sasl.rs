//! A SASL exchange as a client may drive it: a mechanism chosen by the first byte, then
//! SaslAuthenticate messages split at 0xff bytes, answered in turn until one fails. The
//! exchange runs before a client has proved anything, so nothing here may panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use shale::broker::sasl::{Authenticator, SaslUsers};

/// Parsed once: deriving SCRAM keys is deliberately slow.
static USERS: LazyLock<SaslUsers> =
    LazyLock::new(|| SaslUsers::parse("alice:secret,bob:pa=ss").expect("valid users"));

const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, messages)) = data.split_first() else {
        return;
    };
    let mut auth = Authenticator::new(Some(USERS.clone()));
    if auth
        .handshake(MECHANISMS[choice as usize % MECHANISMS.len()])
        .is_err()
    {
        return;
    }
    for message in messages.split(|&b| b == 0xff) {
        if auth.authenticate(message).is_err() {
            break;
        }
    }
});
