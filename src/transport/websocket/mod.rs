//! WebSocket (RFC 6455): `GET /api/ws`, speaking the JSON ops of
//! [`super::session`], one op per text frame.
//!
//! Close codes: 1001 on server shutdown or a dead peer (no pong), 4000 when
//! the client lagged (it was sent `{"op":"lagged"}` first), 4001 when the
//! connection's token expired (after an `unauthorized` error frame), 1009 from the
//! WebSocket layer for a frame over the hard cap. A bad frame below the cap
//! gets an `{"op":"error"}` frame and the socket stays open.
//!
//! While a socket is caught up on every subscription and has nothing in
//! flight, it is lent to its channels' fan-outs ([`super::fanout`], [`outlet`]),
//! which write new messages to it directly; its task sleeps until it needs
//! the socket back.
//!
//! Entry point: [`upgrade`]; each socket is then served by
//! [`handler::Handler`].

mod frames;
mod handler;
pub(crate) mod outlet;
#[cfg(feature = "uring")]
#[allow(unsafe_code)]
pub(crate) mod uring;

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use self::frames::FrameMeter;
pub(crate) use self::frames::PerStream;
use self::handler::Handler;
use super::extract::{Granted, ensure_enabled};
use super::fanout::Fanouts;
use super::meter::Meter;
use super::session::Credentials;
use crate::context::Ctx;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::stats::Transport;

/// Close code sent after `{"op":"lagged"}`.
pub(crate) const CLOSE_LAGGED: u16 = 4000;
/// Close code sent when the token that opened the socket expires.
pub(crate) const CLOSE_EXPIRED: u16 = 4001;

/// `GET /api/ws`: checks the origin and upgrades.
pub(crate) async fn upgrade(
    State(ctx): State<Ctx>,
    State(fanouts): State<Fanouts>,
    meter: Option<Extension<Arc<Meter>>>,
    per_stream: Option<Extension<PerStream>>,
    granted: Result<Granted, ProtocolError>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ProtocolError> {
    ensure_enabled(&ctx, Transport::WebSocket)?;
    let creds = Credentials::new(&ctx, granted?.0);
    let ws = ws.map_err(|e| ProtocolError::new(ErrorCode::BadRequest, e.body_text()))?;
    let origin = headers.get("origin").and_then(|o| o.to_str().ok());
    if !ctx.origin_allowed(origin) {
        return Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("origin {} is not allowed", origin.unwrap_or_default()),
        ));
    }
    // Frames between the message limit and this hard cap get a `too_large`
    // error and the socket stays; beyond it the WebSocket layer closes (1009)
    // without buffering the rest.
    let hard_cap = (ctx.cfg.max_message_bytes() * 4).max(1 << 20);
    let guard = ctx.stats.open(Transport::WebSocket);
    let keep = ctx.tasks.token();
    // Small read buffer: it is allocated per socket up front and zero-filled
    // on every read attempt, and inbound traffic is small ops (large frames
    // still arrive, in more reads).
    Ok(ws
        .read_buffer_size(512)
        // Frames coalesce up to this before a write; the buffer keeps its
        // capacity per socket, so it sets memory at saturation too. 2 KiB
        // (~30 small frames per write) cost no measurable CPU against 4 KiB
        // and hold 3 MiB less per 1 000 saturated subscribers.
        .write_buffer_size(2 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        // No async block around `run`: it would store the socket and the
        // handler's future side by side (rustc keeps the captures and the
        // awaited future both), growing every idle connection. The handler
        // is boxed for the same reason: an `async fn` keeps its by-value
        // arguments twice in its state (as passed in and as moved into the
        // body), and this state is what every idle connection holds.
        .on_upgrade(move |socket| {
            let meter = meter.map(|Extension(m)| m);
            let frames =
                per_stream.map(|Extension(p)| Box::new(FrameMeter::new(guard.stats().clone(), p)));
            let handler = Handler::new(ctx, fanouts, socket, guard, (meter, frames), creds, keep);
            Box::new(handler).run()
        })
        .into_response())
}
