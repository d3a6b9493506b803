//! One adapter per rung. Adapters only translate: each maps its protocol's
//! framing onto [`crate::hub::Hub`] calls and the encodings of
//! [`crate::protocol`], and keeps no history or encoding of its own.
//!
//! - `polling`: short and long polling (a long poll is a poll that waits);
//! - `sse`: Server-Sent Events;
//! - `websocket`: WebSocket, speaking the JSON ops of `session`;
//! - `webtransport`: WebTransport streams and datagrams, same ops;
//! - `extract`: what the HTTP rungs' handlers share (axum extractors);
//! - `meter`: the socket under every HTTP connection: byte counts, the
//!   send timeout, and handing a lent socket back;
//! - `presence`: who a subscriber joins a channel's presence as, and
//!   presence events on each rung's wire;
//! - `fanout`: per-channel tasks that write new messages straight to the
//!   WebSockets and WebTransport streams lent to them;
//! - `lease`, `coalesce`: what the two socket adapters share: lending a
//!   caught-up socket or stream to the fan-outs and taking it back, and
//!   turning a burst of ready events into one write.

pub(crate) mod coalesce;
pub(crate) mod extract;
pub(crate) mod fanout;
pub(crate) mod lease;
pub(crate) mod meter;
pub(crate) mod polling;
pub(crate) mod presence;
pub(crate) mod session;
pub(crate) mod sse;
pub(crate) mod websocket;
pub(crate) mod webtransport;

// What the crate's users need of the adapters: the fan-out registry the
// server hands out (`server::Server::fanouts`), and the WebTransport close
// codes of the protocol.
pub use fanout::Fanouts;
pub use webtransport::{CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN, CLOSE_SHUTDOWN_REASON};

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

use crate::hub::Position;
use crate::protocol::{ErrorCode, ProtocolError};

/// Parses `since` / `epoch` query parameters into a position.
pub fn parse_position(since: Option<&str>, epoch: Option<&str>) -> Result<Position, ProtocolError> {
    let since = since
        .map(|s| {
            s.parse::<u64>().map_err(|_| {
                ProtocolError::new(
                    ErrorCode::BadRequest,
                    format!("`since` must be a non-negative integer, got {s:?}"),
                )
            })
        })
        .transpose()?;
    let epoch = epoch.map(|e| {
        if e.is_empty() || e.len() > 64 {
            Err(ProtocolError::new(
                ErrorCode::BadRequest,
                "`epoch` must be 1 to 64 characters",
            ))
        } else {
            Ok(e.to_owned())
        }
    });
    Ok(Position {
        since,
        epoch: epoch.transpose()?,
    })
}

/// Sleeps until `deadline`, or forever when there is none (a token that
/// never expires).
pub(crate) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// When a connection's token runs out, as one timer for the connection's
/// whole life: made per wake-up instead, it would re-register with the
/// timer each time. Boxed: a `Sleep` is ~130 bytes of every idle
/// connection's state, and most connections have no deadline.
#[derive(Debug)]
pub(crate) struct Expiry(Option<Pin<Box<Sleep>>>);

impl Expiry {
    /// Runs out at `deadline`; never without one.
    pub(crate) fn new(deadline: Option<Instant>) -> Self {
        Self(deadline.map(|d| Box::pin(tokio::time::sleep_until(d))))
    }

    /// Completes once the deadline has passed; never without one.
    pub(crate) async fn elapsed(&mut self) {
        match &mut self.0 {
            Some(sleep) => sleep.await,
            None => std::future::pending().await,
        }
    }
}
