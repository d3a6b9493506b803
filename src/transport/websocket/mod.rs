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

mod frames;
pub(crate) mod outlet;
#[cfg(feature = "uring")]
#[allow(unsafe_code)]
pub(crate) mod uring;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::debug;

use self::frames::FrameMeter;
pub(crate) use self::frames::PerStream;
use self::outlet::Outlet;
use super::extract::{Granted, ensure_enabled};
use super::fanout::{Fanouts, Member};
use super::lease::Lender;
use super::meter::Meter;
use super::session::{Credentials, OpSession, token_expired};
use crate::config::WsFanout;
use crate::context::Ctx;
use crate::hub::{ChannelName, Event};
use crate::protocol::{self, DeliveryMode, ErrorCode, ProtocolError};
use crate::stats::{ConnGuard, Transport};

/// Close code sent after `{"op":"lagged"}`.
pub(crate) const CLOSE_LAGGED: u16 = 4000;
/// Close code sent when the token that opened the socket expires.
pub(crate) const CLOSE_EXPIRED: u16 = 4001;
/// Most frames coalesced into one flush.
const COALESCE_FRAMES: usize = 64;

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

/// One WebSocket connection.
struct Handler {
    ctx: Ctx,
    /// The fan-outs the socket is lent to.
    fanouts: Fanouts,
    socket: WebSocket,
    session: OpSession,
    guard: ConnGuard,
    meter: Option<Arc<Meter>>,
    /// Counts frames when the socket is a stream of a multiplexed
    /// connection (no `meter` then). Boxed: one pointer per idle socket.
    frames: Option<Box<FrameMeter>>,
    last_pong: Instant,
    /// When the token that opened the socket expires.
    expires: Option<Instant>,
    /// Lending the socket to fan-outs; `None` until first tried.
    direct: Option<Direct>,
    /// Keeps shutdown waiting for this connection.
    _keep: TaskTrackerToken,
}

/// The socket's lending state.
struct Direct {
    outlet: Arc<Outlet>,
    lender: Lender,
}

/// What woke the connection's task.
enum Wake {
    Shutdown,
    Expired,
    Frame(Option<Result<Message, axum::Error>>),
    Event(Option<(ChannelName, DeliveryMode, Event)>),
    Returned,
    Ping,
}

enum Flow {
    Continue,
    Close(u16, &'static str),
    Drop,
}

impl Handler {
    fn new(
        ctx: Ctx,
        fanouts: Fanouts,
        socket: WebSocket,
        guard: ConnGuard,
        (meter, frames): (Option<Arc<Meter>>, Option<Box<FrameMeter>>),
        creds: Credentials,
        keep: TaskTrackerToken,
    ) -> Self {
        Self {
            _keep: keep,
            expires: creds.deadline(),
            session: OpSession::new(ctx.clone(), Transport::WebSocket, creds),
            ctx,
            fanouts,
            socket,
            guard,
            meter,
            frames,
            last_pong: Instant::now(),
            direct: None,
        }
    }

    async fn run(mut self: Box<Self>) {
        let heartbeat = self.ctx.cfg.heartbeat_period();
        let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Created once, not per turn of the loop: each wake-up (one per
        // delivery) would otherwise re-register with the shutdown token's
        // lock and the timer.
        let shutdown = self.ctx.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        // Boxed: a `Sleep` is ~130 bytes of every idle connection's state,
        // and most connections have no deadline.
        let mut expired = self.expires.map(|d| Box::pin(tokio::time::sleep_until(d)));
        let flow = loop {
            // Waiting and handling are separate calls so that the futures
            // being waited on and the handlers' futures never share this
            // task's state: it is what every idle connection holds.
            let wake = self
                .wait(shutdown.as_mut(), expired.as_mut(), &mut ping)
                .await;
            self.reclaim();
            let flow = match wake {
                Wake::Shutdown => Flow::Close(1001, "server shutting down"),
                Wake::Expired => self.on_expired().await,
                Wake::Frame(Some(Ok(msg))) => self.on_frame(msg).await,
                Wake::Frame(Some(Err(e))) => {
                    debug!(error = %e, "websocket read failed");
                    read_failure(e)
                }
                Wake::Frame(None) => Flow::Drop,
                Wake::Event(Some(ev)) => self.deliver(ev).await,
                Wake::Event(None) | Wake::Returned => Flow::Continue,
                Wake::Ping => self.on_ping_tick(heartbeat).await,
            };
            let flow = match flow {
                Flow::Continue => self.try_lend().await,
                done => done,
            };
            match flow {
                Flow::Continue => {}
                done => break done,
            }
        };
        self.reclaim();
        if let Flow::Close(code, reason) = flow {
            let close = Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }));
            let _ = tokio::time::timeout(Duration::from_secs(2), self.send(close)).await;
        }
        if let Some(m) = &self.meter {
            m.flush_in();
        }
    }

    /// Sleeps until something needs the task. While the socket is lent
    /// that is a frame, a timer, or the lease ending.
    async fn wait(
        &mut self,
        shutdown: Pin<&mut WaitForCancellationFutureOwned>,
        expired: Option<&mut Pin<Box<Sleep>>>,
        ping: &mut Interval,
    ) -> Wake {
        let lease = self
            .direct
            .as_ref()
            .filter(|d| d.lender.is_lent())
            .map(|d| d.outlet.clone());
        tokio::select! {
            () = shutdown => Wake::Shutdown,
            () = expiry(expired) => Wake::Expired,
            frame = self.socket.recv() => Wake::Frame(frame),
            ev = self.session.next_event(), if self.session.has_subscriptions() => Wake::Event(ev),
            () = returned(lease.as_deref()), if lease.is_some() => Wake::Returned,
            _ = ping.tick() => Wake::Ping,
        }
    }

    async fn on_expired(&mut self) -> Flow {
        self.session.unsubscribe_all();
        let frame = text_frame(protocol::error_frame(&token_expired(), None));
        let _ = self.send(frame).await;
        Flow::Close(CLOSE_EXPIRED, "token expired")
    }

    async fn on_frame(&mut self, msg: Message) -> Flow {
        if let Some(m) = &self.meter {
            m.flush_in();
        }
        if let Some(f) = &self.frames {
            f.received(&msg);
        }
        let reply = match msg {
            Message::Text(text) => self.session.handle(text.as_str()).await,
            Message::Binary(_) => protocol::error_frame(
                &ProtocolError::new(
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON ops as text",
                ),
                None,
            ),
            Message::Pong(_) => {
                self.last_pong = Instant::now();
                return Flow::Continue;
            }
            // The WebSocket layer queues the pong / close reply itself;
            // flushing sends it.
            Message::Ping(payload) => {
                if let Some(f) = &self.frames {
                    f.sent(&Message::Pong(payload));
                }
                return self.flush().await;
            }
            Message::Close(_) => return Flow::Drop,
        };
        sent(self.send(text_frame(reply)).await)
    }

    /// Sends an event and whatever else is ready, then flushes once.
    async fn deliver(&mut self, first: (ChannelName, DeliveryMode, Event)) -> Flow {
        let mut next = Some(first);
        let mut n = 0;
        while let Some((channel, _, ev)) = next.take() {
            let frame = match ev {
                Event::Message(m) => {
                    self.guard.stats().messages_out.inc();
                    m.op_frame()
                }
                Event::Truncated(t) => protocol::truncated_frame(&channel, t.oldest, &t.epoch),
                Event::Presence(p) => crate::transport::presence::op_frame(&channel, &p),
                Event::Lagged { last } => {
                    self.guard.stats().lagged.inc();
                    let frame = text_frame(protocol::lagged_frame(&channel, last));
                    return match self.feed(frame).await {
                        Ok(()) => Flow::Close(CLOSE_LAGGED, "lagged"),
                        Err(_) => Flow::Drop,
                    };
                }
            };
            if self.feed(text_frame(frame)).await.is_err() {
                return Flow::Drop;
            }
            n += 1;
            if n < COALESCE_FRAMES {
                next = self.session.try_next_event();
            }
        }
        self.flush().await
    }

    /// Lends the socket to the fan-outs of its subscriptions that are
    /// caught up, if nothing is pending: no unread event on any
    /// subscription, the WebSocket layer's output fully written.
    async fn try_lend(&mut self) -> Flow {
        if let Some(d) = &mut self.direct {
            d.lender.leave_unsubscribed(&mut self.session);
        }
        let lent = self.direct.as_ref().is_some_and(|d| d.lender.is_lent());
        if self.ctx.cfg.ws_fanout == WsFanout::Task || lent || !Lender::caught_up(&mut self.session)
        {
            return Flow::Continue;
        }
        if self.direct.is_none() {
            let stats = self.guard.stats();
            let lent = self.meter.as_ref().and_then(|m| {
                m.handover()
                    .lend(|socket| Arc::new(Outlet::new(socket, stats.clone())))
            });
            let Some(outlet) = lent else {
                return Flow::Continue;
            };
            self.direct = Some(Direct {
                outlet: outlet.clone(),
                lender: Lender::new(self.fanouts.clone()),
            });
        }
        // Written out, including what a partial direct write left over.
        if let Flow::Drop = self.flush().await {
            return Flow::Drop;
        }
        if let Some(d) = &mut self.direct {
            let outlet = &d.outlet;
            d.lender.lend(&self.ctx, &mut self.session, &**outlet, || {
                Member::Socket(outlet.clone())
            });
        }
        Flow::Continue
    }

    /// Ends the lease, if any, and has each lent subscription read on from
    /// what the fan-out wrote.
    fn reclaim(&mut self) {
        if let Some(d) = &mut self.direct {
            d.lender.reclaim(&mut self.session, &*d.outlet);
        }
    }

    async fn on_ping_tick(&mut self, heartbeat: Duration) -> Flow {
        // Two heartbeats without a pong: the peer is gone without a FIN.
        if self.last_pong.elapsed() > heartbeat * 2 + Duration::from_secs(1) {
            return Flow::Close(1001, "no pong received");
        }
        sent(self.send(Message::Ping(Bytes::new())).await)
    }

    async fn flush(&mut self) -> Flow {
        sent(self.flush_socket().await)
    }

    /// Queues `msg` in the WebSocket layer (written by the next flush).
    async fn feed(&mut self, msg: Message) -> Result<(), axum::Error> {
        if let Some(f) = &self.frames {
            f.sent(&msg);
        }
        self.socket.feed(msg).await
    }

    /// Queues `msg` and writes out everything queued.
    async fn send(&mut self, msg: Message) -> Result<(), axum::Error> {
        self.feed(msg).await?;
        self.flush_socket().await
    }

    async fn flush_socket(&mut self) -> Result<(), axum::Error> {
        self.socket.flush().await?;
        if let Some(f) = &self.frames {
            f.flushed();
        }
        Ok(())
    }
}

/// Completes at the token's deadline; never without one.
async fn expiry(sleep: Option<&mut Pin<Box<Sleep>>>) {
    match sleep {
        Some(s) => s.await,
        None => std::future::pending().await,
    }
}

/// Completes when the lease on `outlet` ends without this task asking.
async fn returned(outlet: Option<&Outlet>) {
    match outlet {
        Some(o) => o.returned().await,
        None => std::future::pending().await,
    }
}

/// Goes on after a successful write; a failed one ends the connection.
/// Writes need no timeout here: every HTTP connection, upgraded ones
/// included, fails a write blocked for `--send-timeout` at the socket
/// ([`crate::transport::meter::MeteredIo`]), counting the client as lagged.
fn sent<E>(write: Result<(), E>) -> Flow {
    match write {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Drop,
    }
}

/// What to do after the WebSocket layer failed to read a frame: a frame over
/// the hard cap gets close 1009 (RFC 6455 "message too big"); anything else
/// means the connection is unusable.
fn read_failure(e: axum::Error) -> Flow {
    match e.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Flow::Close(1009, "message too big"),
        _ => Flow::Drop,
    }
}

fn text_frame(json: Bytes) -> Message {
    // Every frame we send is built from serde_json or validated payloads, so
    // it is UTF-8; the check costs a scan, not an allocation.
    Message::Text(Utf8Bytes::try_from(json).unwrap_or_else(|_| Utf8Bytes::from_static("{}")))
}
