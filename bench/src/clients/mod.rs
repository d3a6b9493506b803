//! One subscriber client per transport. Each connects from its own
//! 127.0.0.x source address, subscribes to the run's channel from offset 0
//! (the channel is fresh, so nothing is missed however the connects and the
//! first publish interleave), reports "ready", then records every delivery
//! in a [`Tracker`] and the shared [`Latencies`] until it has all `count`
//! messages or the run stops it.
//!
//! The Node peers are driven through the same entry point: `ws` speaks
//! Ladder's WebSocket ops, Socket.IO gets Engine.IO v4 text framing done by
//! hand in [`ws`] (it is a handful of prefixes, and a hand-framed client
//! costs the load core no more than the plain WebSocket one, so the peers
//! are compared under the same client).

pub mod http;
pub mod tls;
pub mod ws;
pub mod wt;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use wtransport::Endpoint;
use wtransport::endpoint::endpoint_side::Client;

use crate::probe::Target;
use crate::track::{Latencies, Tracker};

/// A subscriber transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// WebTransport, messages on the subscribing bidirectional stream.
    #[value(name = "webtransport")]
    Wt,
    /// WebTransport, `"delivery":"datagram"` (unreliable by design).
    #[value(name = "webtransport-datagram")]
    WtDatagram,
    /// WebSocket (Ladder or the `ws` peer).
    #[value(name = "websocket")]
    Ws,
    /// Socket.IO v4 over its WebSocket transport (the Socket.IO peer).
    #[value(name = "socketio")]
    SocketIo,
    /// Server-Sent Events.
    #[value(name = "sse")]
    Sse,
    /// Server-Sent Events over HTTP/2 (the `--https` listener).
    #[value(name = "sse-h2")]
    SseH2,
    /// Server-Sent Events over HTTP/3 (the `--https` port, UDP).
    #[value(name = "sse-h3")]
    SseH3,
    /// Long polling (`wait=30`).
    #[value(name = "longpoll")]
    LongPoll,
    /// Long polling on a connection that first fetched `/api/info`, as a
    /// browser reusing a pooled connection does: Ladder serves it with
    /// hyper, not its lean path for connections opened by a poll.
    #[value(name = "longpoll-reused")]
    LongPollReused,
    /// Short polling every `--poll-interval-ms`.
    #[value(name = "poll")]
    Poll,
}

impl Kind {
    /// The name used in reports (the CLI's).
    pub fn name(self) -> &'static str {
        match self {
            Self::Wt => "webtransport",
            Self::WtDatagram => "webtransport-datagram",
            Self::Ws => "websocket",
            Self::SocketIo => "socketio",
            Self::Sse => "sse",
            Self::SseH2 => "sse-h2",
            Self::SseH3 => "sse-h3",
            Self::LongPoll => "longpoll",
            Self::LongPollReused => "longpoll-reused",
            Self::Poll => "poll",
        }
    }

    /// The `/api/stats` row whose counters this transport moves.
    pub fn stats_key(self) -> &'static str {
        match self {
            Self::Wt | Self::WtDatagram => "webtransport",
            Self::Ws | Self::SocketIo => "websocket",
            Self::Sse | Self::SseH2 | Self::SseH3 => "sse",
            Self::LongPoll | Self::LongPollReused => "longpoll",
            Self::Poll => "poll",
        }
    }

    /// Whether the server needs its TLS listeners (`--https`).
    pub fn needs_tls(self) -> bool {
        matches!(self, Self::SseH2 | Self::SseH3)
    }

    /// Every Ladder rung the bench drives on the plain listener (what the
    /// smoke test covers; the TLS ones have a smoke test of their own).
    pub const LADDER: [Self; 7] = [
        Self::Wt,
        Self::WtDatagram,
        Self::Ws,
        Self::Sse,
        Self::LongPoll,
        Self::LongPollReused,
        Self::Poll,
    ];
}

/// What every subscriber of one run shares.
pub struct SubCtx {
    /// The server.
    pub target: Target,
    /// The transport.
    pub kind: Kind,
    /// The run's (fresh) channel.
    pub channel: String,
    /// Messages the run will publish (offsets 1..=count); 0 = idle, hold
    /// until stopped.
    pub count: u64,
    /// Where latencies go.
    pub lat: Arc<Latencies>,
    /// Spread over 127.0.0.1..=127.0.0.`src_ips`.
    pub src_ips: usize,
    /// Short-poll period.
    pub poll_interval: Duration,
    /// Flips to `true` when the run ends.
    pub stop: watch::Receiver<bool>,
    /// Subscribers 0..slow stop reading once subscribed (slow consumers).
    pub slow: usize,
    /// WebTransport client endpoints (sessions are spread over them).
    pub wt_endpoints: Vec<Endpoint<Client>>,
    /// Pinned TLS client configurations (SSE over HTTP/2 and HTTP/3).
    pub tls: Option<tls::Pinned>,
}

/// Sent once by each subscriber: subscribed, or why not.
pub type Ready = oneshot::Sender<Result<(), String>>;

/// Runs subscriber `i` to the end and returns its tracker.
pub async fn subscriber(ctx: Arc<SubCtx>, i: usize, ready: Ready) -> Tracker {
    let mut t = Tracker::new(ctx.count);
    let mut ready = Some(ready);
    let r = match ctx.kind {
        Kind::Ws | Kind::SocketIo => ws::subscriber(&ctx, i, &mut ready, &mut t).await,
        Kind::Sse => http::sse(&ctx, i, &mut ready, &mut t).await,
        Kind::SseH2 => tls::sse_h2(&ctx, i, &mut ready, &mut t).await,
        Kind::SseH3 => tls::sse_h3(&ctx, i, &mut ready, &mut t).await,
        Kind::LongPoll | Kind::LongPollReused | Kind::Poll => {
            http::poll(&ctx, i, &mut ready, &mut t).await
        }
        Kind::Wt | Kind::WtDatagram => wt::subscriber(&ctx, i, &mut ready, &mut t).await,
    };
    if let Err(e) = r {
        let msg = format!("{e:#}");
        if let Some(tx) = ready.take() {
            let _ = tx.send(Err(msg.clone()));
        }
        t.error = Some(msg);
    }
    t
}

/// Whether a subscriber has everything it will get.
pub(crate) fn complete(ctx: &SubCtx, t: &Tracker) -> bool {
    ctx.count > 0 && t.unique >= ctx.count
}

/// Records one delivered message object (any framing around it is fine as
/// long as `"offset":` and the data's `"t":` are inside).
pub(crate) fn deliver(ctx: &SubCtx, i: usize, t: &mut Tracker, msg: &[u8]) {
    if let Some((off, ts)) = crate::track::offset_and_t(msg) {
        t.note(off);
        ctx.lat.record(i, ts);
    }
}

/// Marks the subscriber ready.
pub(crate) fn set_ready(ready: &mut Option<Ready>) {
    if let Some(tx) = ready.take() {
        let _ = tx.send(Ok(()));
    }
}
