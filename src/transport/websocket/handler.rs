//! One WebSocket connection's task: [`Handler::run`] waits for whatever
//! needs it ([`Wake`]), takes the socket back from the fan-outs, handles
//! that one thing, and lends the socket again once nothing is pending.
//! The WebTransport stream task has the same shape.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::debug;

use super::frames::FrameMeter;
use super::outlet::Outlet;
use super::{CLOSE_EXPIRED, CLOSE_LAGGED};
use crate::config::WsFanout;
use crate::context::Ctx;
use crate::protocol::{self, ErrorCode, ProtocolError};
use crate::stats::{ConnGuard, Transport};
use crate::transport::Expiry;
use crate::transport::coalesce::{Coalesce, Frame, Ready};
use crate::transport::fanout::Fanouts;
use crate::transport::lease::{self, Lender};
use crate::transport::meter::Meter;
use crate::transport::session::{Credentials, OpSession, token_expired};

/// One WebSocket connection.
pub(super) struct Handler {
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
    /// When the token that opened the socket runs out.
    expiry: Expiry,
    /// Lends the socket to the fan-outs; `None` until first lent.
    direct: Option<Lender<Outlet>>,
    /// Keeps shutdown waiting for this connection.
    _keep: TaskTrackerToken,
}

/// What woke the connection's task.
enum Wake {
    Shutdown,
    Expired,
    Frame(Option<Result<Message, axum::Error>>),
    Event(Option<Ready>),
    Returned,
    Ping,
}

enum Flow {
    Continue,
    Close(u16, &'static str),
    Drop,
}

impl Handler {
    pub(super) fn new(
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
            expiry: Expiry::new(creds.deadline()),
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

    /// Serves the socket until either side closes it or the server shuts
    /// down.
    pub(super) async fn run(mut self: Box<Self>) {
        let heartbeat = self.ctx.cfg.heartbeat_period();
        let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Created once, not per turn of the loop: each wake-up (one per
        // delivery) would otherwise re-register with the shutdown token's
        // lock and the timer.
        let shutdown = self.ctx.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        let flow = loop {
            // Waiting and handling are separate calls so that the futures
            // being waited on and the handlers' futures never share this
            // task's state: it is what every idle connection holds.
            let wake = self.wait(shutdown.as_mut(), &mut ping).await;
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
        ping: &mut Interval,
    ) -> Wake {
        tokio::select! {
            () = shutdown => Wake::Shutdown,
            () = self.expiry.elapsed() => Wake::Expired,
            frame = self.socket.recv() => Wake::Frame(frame),
            ev = self.session.next_event(), if self.session.has_subscriptions() => Wake::Event(ev),
            () = returned(self.direct.as_ref()) => Wake::Returned,
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
    async fn deliver(&mut self, first: Ready) -> Flow {
        let mut ready = Coalesce::new(first);
        while let Some(frame) = ready.next(&mut self.session, self.guard.stats(), true) {
            let (json, lagged) = match frame {
                Frame::Message(_, m) => (m.op_frame(), false),
                Frame::Op(op) => (op, false),
                Frame::Lagged(op) => (op, true),
            };
            if self.feed(text_frame(json)).await.is_err() {
                return Flow::Drop;
            }
            if lagged {
                return Flow::Close(CLOSE_LAGGED, "lagged");
            }
        }
        self.flush().await
    }

    /// Lends the socket to the fan-outs of its subscriptions that are
    /// caught up, if nothing is pending: no unread event on any
    /// subscription, the WebSocket layer's output fully written.
    async fn try_lend(&mut self) -> Flow {
        if self.ctx.cfg.ws_fanout == WsFanout::Task {
            return Flow::Continue;
        }
        let may = match &mut self.direct {
            Some(d) => d.may_lend(&mut self.session),
            // The outlet is made the first time the socket could be lent,
            // so a socket that never catches up never pays for one.
            None => lease::caught_up(&mut self.session) && self.open_outlet(),
        };
        if !may {
            return Flow::Continue;
        }
        // Written out, including what a partial direct write left over.
        if let Flow::Drop = self.flush().await {
            return Flow::Drop;
        }
        if let Some(d) = &mut self.direct {
            d.lend(&self.ctx, &mut self.session);
        }
        Flow::Continue
    }

    /// Makes the socket lendable; false when the connection cannot lend
    /// it (it is not a metered TCP socket of its own, or is closing).
    fn open_outlet(&mut self) -> bool {
        let stats = self.guard.stats();
        let outlet = self.meter.as_ref().and_then(|m| {
            m.handover()
                .lend(|socket| Arc::new(Outlet::new(socket, stats.clone())))
        });
        let Some(outlet) = outlet else {
            return false;
        };
        self.direct = Some(Lender::new(outlet, self.fanouts.clone()));
        true
    }

    /// Ends the lease, if any, and has each lent subscription read on from
    /// what the fan-out wrote.
    fn reclaim(&mut self) {
        if let Some(d) = &mut self.direct {
            d.reclaim(&mut self.session);
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

/// Completes when the socket's lease ends without this task asking; never
/// while it is not lent.
async fn returned(direct: Option<&Lender<Outlet>>) {
    match direct {
        Some(d) => d.returned().await,
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
