//! The Kafka wire protocol: framing, headers, version negotiation, codecs.
//!
//! Turns bytes into decoded requests and responses into bytes; it never decides what a
//! request means (that is `broker`'s) and never touches storage.

pub mod budget;
pub mod codec;
pub mod frame;
mod legacy;
pub mod versions;

pub use codec::{
    decode_request, encode_api_versions_too_new, encode_response, DecodeError, Incoming,
    ResponseFrame,
};
