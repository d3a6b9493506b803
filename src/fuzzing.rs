//! The crate's internals that the fuzz targets in `fuzz/` drive, gathered in
//! one place so that the modules themselves need not be public for them.
//!
//! Hidden from the documentation and outside any stability promise: it
//! exists for `fuzz/fuzz_targets/*` only (the same arrangement as
//! quinn-proto's `fuzzing` module). Each item is a re-export or a thin
//! wrapper; nothing here has behaviour of its own.

use axum::extract::Request;

pub use crate::auth::{Auth, token_from};
pub use crate::hub::{ChannelName, Epoch};
pub use crate::protocol::{ClientOp, Data, Message, error_frame, published_frame};
pub use crate::transport::parse_position;
pub use crate::transport::polling::{MAX_LIMIT, MAX_WAIT_SECS, parse_limit, parse_wait};
pub use crate::transport::sse::parse_last_event_id;
pub use crate::transport::webtransport::{LineBuf, datagram_reply};

/// The lean HTTP/1.1 path's most bytes of a request head
/// (`crate::http::lean`).
pub const LEAN_PEEK_BYTES: usize = crate::http::lean::PEEK_BYTES;

/// A request head the lean HTTP/1.1 path would serve itself.
#[derive(Debug)]
pub struct LeanHead {
    /// An event stream (`true`) or a poll (`false`).
    pub event_stream: bool,
    /// The request as the router would get it.
    pub request: Request,
    /// How many of the input's bytes the head is.
    pub len: usize,
    /// Whether the client asked for the connection to close after it.
    pub close: bool,
}

/// Parses `bytes` as the lean path does with the bytes it finds at the start
/// of a connection (or after a kept-alive poll); `None` means hyper serves
/// them.
pub fn lean_head(bytes: &[u8]) -> Option<LeanHead> {
    let (kind, request, len) = crate::http::lean::parse_head(bytes)?;
    Some(LeanHead {
        event_stream: kind == crate::http::routes::Lean::EventStream,
        close: crate::http::lean::asks_to_close(&request),
        request,
        len,
    })
}
