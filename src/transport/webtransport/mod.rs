//! WebTransport: one accepted session at a time, speaking the JSON ops of
//! [`super::session`] as `\n`-terminated lines on client-opened
//! bidirectional streams, plus datagrams.
//!
//! Entry point: [`run_session`], called by [`crate::quic`] once a session
//! at `/wt` is accepted. Each stream is served by [`stream::StreamTask`],
//! which has the shape of the WebSocket handler; datagrams are answered by
//! `datagram`.
//!
//! # Streams
//!
//! Every client-opened bidirectional stream is its own task with its own
//! [`OpSession`](super::session::OpSession): what a stream subscribes to is delivered on that stream
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

use tracing::{Instrument, debug, debug_span};
use wtransport::{Connection, VarInt};

use self::datagram::on_datagram;
use self::stream::StreamTask;
use super::fanout::Fanouts;
use super::session::Credentials;
use crate::context::Ctx;
use crate::stats::{ByteSource, Transport};

mod datagram;
mod lines;
pub(crate) mod outlet;
mod stream;

pub use datagram::datagram_reply;
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
                    let stream = Box::new(StreamTask::new(ctx.clone(), fanouts.clone(), conn.clone(), (send, recv), stats.clone(), creds.clone()));
                    ctx.tasks.spawn(
                        stream
                            .run(done.clone())
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

/// A session's UDP bytes, as quinn counts them (QUIC and HTTP/3 overhead
/// included).
struct UdpBytes(wtransport::quinn::Connection);

impl ByteSource for UdpBytes {
    fn totals(&self) -> (u64, u64) {
        let s = self.0.stats();
        (s.udp_rx.bytes, s.udp_tx.bytes)
    }
}
