//! The one wire format, decided once for every transport.
//!
//! The hub stores [`Message`]s that carry their own encodings: the message
//! object is serialised when the message is published, and the framed forms
//! (an `{"op":"message",…}` line for WebSocket/WebTransport, an SSE event) are
//! built at most once on first use. Every subscriber then shares the same
//! bytes, so the fan-out path never encodes JSON per subscriber.
//!
//! Client → server operations are parsed by [`ClientOp::parse`]; server →
//! client replies are built by the `*_frame` functions and [`ErrorCode`].
//!
//! - `message`: payloads ([`Data`]) and published [`Message`]s with their
//!   shared encodings;
//! - `ops`: client operations ([`ClientOp`]);
//! - `frames`: the server's reply frames and the HTTP error body.

mod frames;
mod message;
mod ops;

pub use frames::{
    echo_frame, error_body, error_frame, lagged_frame, presence_change_frame, presence_frame,
    presence_tab_frame, published_frame, subscribed_frame, subscribed_frame_presence_error,
    truncated_frame, unsubscribed_frame,
};
pub use message::{Data, Message};
pub use ops::{ClientOp, DeliveryMode, OpError, PresenceAsk};

use crate::name::{KeyError, NameError};

/// Error codes of the contract (plus a few of Ladder's own), shared by the
/// HTTP error body and the `{"op":"error"}` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body or frame is not JSON (or not UTF-8).
    BadJson,
    /// The channel name does not match the contract's pattern.
    BadChannel,
    /// Well-formed JSON that is not a valid request.
    BadRequest,
    /// No such route.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// A message or body over the configured size.
    TooLarge,
    /// Too many requests or publishes.
    RateLimited,
    /// Missing or invalid credentials.
    Unauthorized,
    /// Credentials valid but not allowed to do this.
    Forbidden,
    /// The server is at a capacity limit or shutting down.
    Unavailable,
    /// The subscriber fell too far behind and was dropped.
    Lagged,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadChannel => "bad_channel",
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
            Self::Lagged => "lagged",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadJson | Self::BadChannel | Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::TooLarge => 413,
            Self::Lagged => 409,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
        }
    }
}

/// A protocol-level failure: a code for machines and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A sentence for the developer reading it.
    pub message: String,
}

impl ProtocolError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<KeyError> for ProtocolError {
    fn from(e: KeyError) -> Self {
        Self::new(ErrorCode::BadRequest, e.to_string())
    }
}

impl From<NameError> for ProtocolError {
    fn from(e: NameError) -> Self {
        Self::new(ErrorCode::BadChannel, e.to_string())
    }
}
