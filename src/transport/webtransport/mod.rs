//! WebTransport: one accepted session at a time, speaking the JSON ops of
//! [`super::session`] as `\n`-terminated lines on client-opened
//! bidirectional streams, plus datagrams.
//!
//! Entry point: [`run_session`], called by [`crate::quic`] once a session
//! at `/wt` is accepted.
//!
//! # Streams
//!
//! Every client-opened bidirectional stream is its own task with its own
//! [`OpSession`]: what a stream subscribes to is delivered on that stream
//! only. Streams share no lock or queue, so a stream whose reader stalls
//! blocks only its own writes (QUIC flow control is per stream); it is then
//! cut off by the send timeout or ends with a `lagged` line, and every other
//! stream carries on. The one shared limit is inbound: a session may hold at
//! most four stream windows of unread client data in all (see
//! [`crate::quic`]), so a client that stops Ladder from reading four or more
//! of its own streams *and* fills their windows stalls its uploads on the
//! others until the send timeout resets the stuck ones — the price of
//! bounding a session's memory.
//!
//! - A malformed line gets an `{"op":"error"}` line; the stream stays.
//! - A line longer than `--max-message-bytes` + 1024 gets a `too_large`
//!   error line, then the stream is finished and its receive side stopped
//!   with [`STREAM_TOO_LARGE`]; the session and other streams stay.
//! - `lagged`: a `{"op":"lagged"}` line, then the stream is finished.
//! - A write blocked longer than `--send-timeout`: the stream is reset with
//!   [`STREAM_TOO_SLOW`] (nothing more can be written to it) and counted as
//!   lagged.
//!
//! Stream and session codes go on the wire as raw QUIC codes (wtransport
//! does not map them into the HTTP/3 WebTransport error range), so browsers
//! may not see them as such; the JSON line sent before each is the part
//! clients should rely on.
//!
//! # Session close codes
//!
//! wtransport closes a session with a QUIC `CONNECTION_CLOSE` carrying a raw
//! application code and reason:
//!
//! | code | reason | when |
//! |---|---|---|
//! | [`CLOSE_SHUTDOWN`] = 0 | `server shutting down` | graceful shutdown |
//! | [`CLOSE_PROTOCOL_ERROR`] = 1 | `protocol error: …` | the client broke the session protocol (it opened a unidirectional stream, which Ladder does not use) |
//!
//! # Datagrams
//!
//! - A datagram holding `{"op":"echo",…}` is answered by a datagram holding
//!   `{"op":"echo","data":…}`. Any other datagram (another op, bad JSON) is
//!   answered by an `{"op":"error"}` datagram, since the client cannot
//!   otherwise learn why nothing came back. A reply larger than the
//!   session's current datagram size is dropped (datagrams are unreliable
//!   anyway). All are counted in `datagrams_in` / `datagrams_out`.
//! - `"delivery": "datagram"` subscriptions get each message as one
//!   datagram (`{"op":"message",…}`, no newline) when it fits
//!   `max_datagram_size()` at that moment. **A message that does not fit**
//!   (or a peer without datagram support) **is sent on the subscribing
//!   stream instead**, as the usual line, so no message is lost for being
//!   big; it counts in `messages_out` but not in `datagrams_out`.
//!   `truncated` and `lagged` always go on the stream.
//!
//! # Counters
//!
//! Sessions are `connections_*` and `requests`; `bytes_in` / `bytes_out`
//! are the UDP bytes quinn reports for the connection (QUIC and HTTP/3
//! overhead included), read when the counters are read
//! ([`crate::stats::ByteSource`]) and at the end of the session.

use std::time::Duration;

use bytes::Bytes;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span};
use wtransport::{Connection, RecvStream, SendStream, VarInt};

use self::outlet::StreamOutlet;
use super::fanout::{Fanouts, Member};
use super::lease::Lender;
use super::session::{Credentials, OpSession, token_expired};
use super::sleep_until_opt;
use crate::config::WtFanout;
use crate::context::Ctx;
use crate::hub::{ChannelName, Event};
use crate::protocol::{self, ClientOp, DeliveryMode, ErrorCode, ProtocolError};
use crate::stats::{ByteSource, Transport, TransportStats};

mod lines;
pub(crate) mod outlet;

pub use lines::LineBuf;

/// Session close code on server shutdown.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Reason sent with [`CLOSE_SHUTDOWN`].
pub const CLOSE_SHUTDOWN_REASON: &str = "server shutting down";
/// Session close code when the client breaks the session protocol.
pub const CLOSE_PROTOCOL_ERROR: u32 = 1;
/// Stream code: the receive side was stopped after an oversized line.
pub(crate) const STREAM_TOO_LARGE: u32 = 1;
/// Stream code: the send side was reset because the client stopped reading.
pub(crate) const STREAM_TOO_SLOW: u32 = 2;

/// Most events coalesced into one write.
const COALESCE_EVENTS: usize = 64;
/// Stop coalescing once this much is buffered for one write.
const COALESCE_BYTES: usize = 64 * 1024;
/// Most bytes taken from a stream at a time. Reads borrow quinn's own
/// received buffers (`read_chunk`), so no read buffer is kept per stream:
/// an idle subscription would otherwise hold it for nothing.
const READ_CHUNK: usize = 64 * 1024;
/// Longest wait for the peer to acknowledge a finished stream.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one accepted session until the client leaves, breaks the
/// protocol, or the server shuts down.
pub(crate) async fn run_session(ctx: Ctx, fanouts: Fanouts, conn: Connection, creds: Credentials) {
    let guard = ctx.stats.open(Transport::WebTransport);
    let stats = guard.stats().clone();
    stats.requests.inc();
    // Cancelled when this session ends for any reason, so stream tasks that
    // are only waiting on subscriptions end with it.
    let done = ctx.shutdown.child_token();
    // Declared after `guard`, so dropped before it: the session's last
    // byte counts are in the stats before it stops counting as open.
    let udp = Box::new(UdpBytes(conn.quic_connection().clone()));
    let _metered = ctx.stats.sample(Transport::WebTransport, udp);
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => {
                conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), CLOSE_SHUTDOWN_REASON.as_bytes());
                break;
            }
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    stats.streams_total.inc();
                    let id = send.id();
                    // Boxed: an `async fn` keeps its by-value arguments twice
                    // in its state, which every open stream holds.
                    let stream = Box::new(StreamTask::new(ctx.clone(), fanouts.clone(), conn.clone(), send, stats.clone(), creds.clone()));
                    ctx.tasks.spawn(
                        stream
                            .run(recv, done.clone())
                            .instrument(debug_span!("stream", id = ?id)),
                    );
                }
                Err(error) => {
                    debug!(%error, "session ended");
                    break;
                }
            },
            uni = conn.accept_uni() => {
                if uni.is_ok() {
                    debug!("client opened a unidirectional stream; closing the session");
                    conn.close(
                        VarInt::from_u32(CLOSE_PROTOCOL_ERROR),
                        b"protocol error: unidirectional streams are not used",
                    );
                }
                break;
            }
            datagram = conn.receive_datagram() => match datagram {
                Ok(d) => on_datagram(&ctx, &conn, &stats, &d.payload()),
                Err(_) => break,
            },
        }
    }
    done.cancel();
}

/// Answers one datagram (see the module doc for the policy).
fn on_datagram(ctx: &Ctx, conn: &Connection, stats: &TransportStats, payload: &[u8]) {
    stats.datagrams_in.inc();
    let reply = datagram_reply(payload, ctx.cfg.max_message_bytes());
    match conn.max_datagram_size() {
        Some(max) if reply.len() <= max => {
            if conn.send_datagram(&reply).is_ok() {
                stats.datagrams_out.inc();
            }
        }
        _ => debug!(len = reply.len(), "datagram reply does not fit; dropped"),
    }
}

/// The reply to a datagram: echo for `echo`, an error frame otherwise.
pub fn datagram_reply(payload: &[u8], max_data: usize) -> Bytes {
    let Ok(text) = std::str::from_utf8(payload) else {
        let e = ProtocolError::new(ErrorCode::BadJson, "datagram is not UTF-8");
        return protocol::error_frame(&e, None);
    };
    match ClientOp::parse(text, max_data) {
        Ok((ClientOp::Echo { data }, _)) => protocol::echo_frame(&data),
        Ok((_, id)) => {
            let e = ProtocolError::new(
                ErrorCode::BadRequest,
                "datagrams carry only `echo`; send other ops on a stream",
            );
            protocol::error_frame(&e, id.as_deref())
        }
        Err(e) => protocol::error_frame(&e.error, e.id.as_deref()),
    }
}

/// A session's UDP bytes, as quinn counts them (QUIC and HTTP/3 overhead
/// included).
struct UdpBytes(wtransport::quinn::Connection);

impl ByteSource for UdpBytes {
    fn totals(&self) -> (u64, u64) {
        let s = self.0.stats();
        (s.udp_rx.bytes, s.udp_tx.bytes)
    }
}

/// How a stream's loop goes on.
enum Flow {
    Continue,
    /// Send what is buffered, then finish the stream.
    Finish,
    /// Send what is buffered (the error line), finish, and stop reading.
    TooLarge,
    /// Reset the send side with this code.
    Reset(u32),
    /// The stream or session is gone; nothing more to send.
    Drop,
}

/// One client-opened bidirectional stream.
struct StreamTask {
    ctx: Ctx,
    /// The send half, lendable to the fan-outs of the stream's channels;
    /// also sends this stream's datagram deliveries.
    outlet: Arc<StreamOutlet>,
    /// Lending the stream to its channels' fan-outs.
    lender: Lender,
    stats: TransportStats,
    session: OpSession,
    /// When the session's token expires.
    creds_deadline: Option<tokio::time::Instant>,
    /// Lines ready to be written in one go.
    out: Vec<Bytes>,
    /// Bytes queued in `out`.
    out_len: usize,
}

impl StreamTask {
    fn new(
        ctx: Ctx,
        fanouts: Fanouts,
        conn: Connection,
        send: SendStream,
        stats: TransportStats,
        creds: Credentials,
    ) -> Self {
        Self {
            creds_deadline: creds.deadline(),
            session: OpSession::new(ctx.clone(), Transport::WebTransport, creds),
            ctx,
            outlet: Arc::new(StreamOutlet::new(conn, send, stats.clone())),
            lender: Lender::new(fanouts),
            stats,
            out: Vec::new(),
            out_len: 0,
        }
    }

    async fn run(mut self: Box<Self>, mut recv: RecvStream, done: CancellationToken) {
        let mut lines = LineBuf::new(self.ctx.cfg.max_message_bytes() + 1024);
        let mut reading = true;
        let expires = self.creds_deadline;
        let outlet = self.outlet.clone();
        let end = loop {
            let lent = self.lender.is_lent();
            let flow = tokio::select! {
                () = done.cancelled() => Flow::Drop,
                () = outlet.returned(), if lent => {
                    self.reclaim();
                    Flow::Continue
                }
                () = sleep_until_opt(expires) => {
                    // The token ran out: its subscriptions end, the client
                    // is told why, and the stream finishes.
                    self.reclaim();
                    self.session.unsubscribe_all();
                    self.push_line(protocol::error_frame(&token_expired(), None));
                    Flow::Finish
                }
                read = recv.quic_stream_mut().read_chunk(READ_CHUNK, true), if reading => match read {
                    Ok(Some(chunk)) => {
                        self.reclaim();
                        lines.push(&chunk.bytes);
                        self.on_lines(&mut lines).await
                    }
                    Ok(None) => {
                        self.reclaim();
                        // The client finished its side; an unterminated last
                        // line still counts. Subscriptions keep delivering.
                        reading = false;
                        lines.push(b"\n");
                        self.on_lines(&mut lines).await
                    }
                    Err(error) => {
                        debug!(%error, "stream read failed");
                        Flow::Drop
                    }
                },
                ev = self.session.next_event(), if self.session.has_subscriptions() => {
                    self.reclaim();
                    match ev {
                        Some(ev) => self.deliver(ev),
                        None => Flow::Continue,
                    }
                }
            };
            if let Flow::Drop = flow {
                break flow;
            }
            if let Err(flow) = self.write_out().await {
                break flow;
            }
            match flow {
                Flow::Continue if !reading && !self.session.has_subscriptions() => {
                    break Flow::Finish;
                }
                Flow::Continue => {
                    if let Err(flow) = self.try_lend().await {
                        break flow;
                    }
                }
                done => break done,
            }
        };
        self.reclaim();
        self.lender.leave_all();
        match end {
            Flow::Continue | Flow::Drop => {}
            Flow::Finish => self.finish().await,
            Flow::TooLarge => {
                recv.stop(VarInt::from_u32(STREAM_TOO_LARGE));
                self.finish().await;
            }
            Flow::Reset(code) => {
                if let Some(mut send) = self.outlet.take_send() {
                    let _ = send.reset(VarInt::from_u32(code));
                }
            }
        }
    }

    /// Runs every complete line; replies are buffered in order.
    async fn on_lines(&mut self, lines: &mut LineBuf) -> Flow {
        loop {
            match lines.next_line() {
                Ok(Some(line)) => {
                    let Ok(text) = std::str::from_utf8(&line) else {
                        let e = ProtocolError::new(ErrorCode::BadJson, "line is not UTF-8");
                        self.push_line(protocol::error_frame(&e, None));
                        continue;
                    };
                    let text = text.trim();
                    if text.is_empty() {
                        continue;
                    }
                    let reply = self.session.handle(text).await;
                    self.push_line(reply);
                }
                Ok(None) => return Flow::Continue,
                Err(len) => {
                    let max = self.ctx.cfg.max_message_bytes();
                    let e = ProtocolError::new(
                        ErrorCode::TooLarge,
                        format!(
                            "line exceeds {len} bytes; message data is limited to {max}; closing this stream"
                        ),
                    );
                    self.push_line(protocol::error_frame(&e, None));
                    return Flow::TooLarge;
                }
            }
        }
    }

    /// Buffers an event and whatever else is ready, for one write.
    fn deliver(&mut self, first: (ChannelName, DeliveryMode, Event)) -> Flow {
        let mut next = Some(first);
        let mut n = 0;
        while let Some((channel, mode, ev)) = next.take() {
            match ev {
                Event::Message(m) => {
                    self.stats.messages_out.inc();
                    if mode != DeliveryMode::Datagram || !self.outlet.send_datagram(&m.op_frame()) {
                        self.push_chunk(m.op_line().clone());
                    }
                }
                Event::Truncated(t) => {
                    self.push_line(protocol::truncated_frame(&channel, t.oldest, &t.epoch));
                }
                Event::Presence(p) => {
                    self.push_line(crate::transport::presence::op_frame(&channel, &p));
                }
                Event::Lagged { last } => {
                    self.stats.lagged.inc();
                    self.push_line(protocol::lagged_frame(&channel, last));
                    return Flow::Finish;
                }
            }
            n += 1;
            if n < COALESCE_EVENTS && self.out_len < COALESCE_BYTES {
                next = self.session.try_next_event();
            }
        }
        Flow::Continue
    }

    fn push_line(&mut self, frame: Bytes) {
        self.push_chunk(frame);
        self.push_chunk(Bytes::from_static(b"\n"));
    }

    /// Queues shared bytes for the next write; messages are not copied.
    fn push_chunk(&mut self, chunk: Bytes) {
        self.out_len += chunk.len();
        self.out.push(chunk);
    }

    /// Writes the buffered lines under the send timeout, so a client that
    /// stops reading loses this stream instead of pinning its task.
    async fn write_out(&mut self) -> Result<(), Flow> {
        if self.out.is_empty() && !(self.lender.has_joined() && self.outlet.has_leftover()) {
            return Ok(());
        }
        let limit = self.ctx.cfg.send_timeout();
        // quinn takes the chunks as they are (reference-counted), so a
        // message's shared line is never copied per stream.
        let written = tokio::time::timeout(limit, self.outlet.write_all(&mut self.out)).await;
        self.out.clear();
        self.out_len = 0;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                debug!(%error, "stream write failed");
                Err(Flow::Drop)
            }
            Err(_) => {
                self.stats.lagged.inc();
                debug!("stream write timed out; resetting");
                Err(Flow::Reset(STREAM_TOO_SLOW))
            }
        }
    }

    async fn finish(&mut self) {
        if let Some(mut send) = self.outlet.take_send() {
            let _ = tokio::time::timeout(FINISH_TIMEOUT, send.finish()).await;
        }
    }

    /// Lends the stream to the fan-outs of its subscriptions if nothing is
    /// pending: every subscription caught up and on the stream, nothing
    /// buffered or left over.
    async fn try_lend(&mut self) -> Result<(), Flow> {
        self.lender.leave_unsubscribed(&mut self.session);
        if self.ctx.cfg.wt_fanout == WtFanout::Task
            || self.lender.is_lent()
            || !self.out.is_empty()
            || !Lender::caught_up(&mut self.session)
        {
            return Ok(());
        }
        if self.outlet.has_leftover() {
            return self.write_out().await;
        }
        let outlet = &self.outlet;
        self.lender
            .lend(&self.ctx, &mut self.session, &**outlet, || {
                Member::Stream(outlet.clone())
            });
        Ok(())
    }

    /// Ends the lease, if any; each lent subscription reads on from what the
    /// fan-out wrote.
    fn reclaim(&mut self) {
        self.lender.reclaim(&mut self.session, &*self.outlet);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_answer_echo_and_explain_the_rest() {
        let reply = |p: &[u8]| {
            let b = datagram_reply(p, 1024);
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()
        };
        let echo = reply(br#"{"op":"echo","data":{"x":[1,2]}}"#);
        assert_eq!(echo, serde_json::json!({"op":"echo","data":{"x":[1,2]}}));
        let other = reply(br#"{"op":"publish","channel":"a","data":1,"id":7}"#);
        assert_eq!(other["op"], "error");
        assert_eq!(other["code"], "bad_request");
        assert_eq!(other["id"], 7);
        assert_eq!(reply(b"{nope")["code"], "bad_json");
        assert_eq!(reply(b"\xff")["code"], "bad_json");
    }
}
