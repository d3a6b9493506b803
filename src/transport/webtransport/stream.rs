//! One client-opened bidirectional stream: [`StreamTask::run`] has the
//! WebSocket handler's shape. It waits for whatever needs it ([`Wake`]),
//! takes the stream back from the fan-outs, handles that one thing, writes
//! out what the handling buffered in one go, and lends the stream again
//! once nothing is pending.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::debug;
use wtransport::quinn::{self, Chunk, ReadError};
use wtransport::{Connection, RecvStream, SendStream, VarInt};

use super::lines::LineBuf;
use super::outlet::StreamOutlet;
use super::{STREAM_TOO_LARGE, STREAM_TOO_SLOW};
use crate::config::WtFanout;
use crate::context::Ctx;
use crate::protocol::{self, DeliveryMode, ErrorCode, ProtocolError};
use crate::stats::{Transport, TransportStats};
use crate::transport::Expiry;
use crate::transport::coalesce::{Coalesce, Frame, Ready};
use crate::transport::fanout::Fanouts;
use crate::transport::lease::Lender;
use crate::transport::session::{Credentials, OpSession, token_expired};

/// Stop coalescing once this much is buffered for one write.
const COALESCE_BYTES: usize = 64 * 1024;
/// Most bytes taken from a stream at a time. Reads borrow quinn's own
/// received buffers (`read_chunk`), so no read buffer is kept per stream:
/// an idle subscription would otherwise hold it for nothing.
const READ_CHUNK: usize = 64 * 1024;
/// Longest wait for the peer to acknowledge a finished stream.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What woke the stream's task.
enum Wake {
    /// The session ended, or the server is shutting down.
    Done,
    /// The token that opened the session ran out.
    Expired,
    /// Bytes from the client; `None` once it finished its side.
    Read(Result<Option<Chunk>, ReadError>),
    /// An event of one of the stream's subscriptions.
    Event(Option<Ready>),
    /// A fan-out ended the lease.
    Returned,
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
pub(super) struct StreamTask {
    ctx: Ctx,
    /// Lends the send half ([`StreamOutlet`], which also sends this
    /// stream's datagram deliveries) to the fan-outs of its channels.
    lender: Lender<StreamOutlet>,
    recv: RecvStream,
    /// What the client sent, split into lines.
    lines: LineBuf,
    /// Whether the client may send more (it has not finished its side).
    reading: bool,
    stats: TransportStats,
    session: OpSession,
    /// When the session's token runs out.
    expiry: Expiry,
    /// Lines ready to be written in one go.
    out: Vec<Bytes>,
    /// Bytes queued in `out`.
    out_len: usize,
}

impl StreamTask {
    pub(super) fn new(
        ctx: Ctx,
        fanouts: Fanouts,
        conn: Connection,
        (send, recv): (SendStream, RecvStream),
        stats: TransportStats,
        creds: Credentials,
    ) -> Self {
        let outlet = Arc::new(StreamOutlet::new(conn, send, stats.clone()));
        Self {
            expiry: Expiry::new(creds.deadline()),
            lines: LineBuf::new(ctx.cfg.max_message_bytes() + 1024),
            session: OpSession::new(ctx.clone(), Transport::WebTransport, creds),
            ctx,
            lender: Lender::new(outlet, fanouts),
            recv,
            reading: true,
            stats,
            out: Vec::new(),
            out_len: 0,
        }
    }

    /// Serves the stream until it is finished, reset, or `done`.
    pub(super) async fn run(mut self: Box<Self>, done: CancellationToken) {
        // Made once, not per turn of the loop: each wake-up (one per
        // delivery) would otherwise re-register with the token's lock.
        let done = done.cancelled_owned();
        tokio::pin!(done);
        let end = loop {
            // Waiting and handling are separate calls, as in the WebSocket
            // handler: the futures waited on and the handlers' futures
            // never share the task's state.
            let wake = self.wait(done.as_mut()).await;
            self.reclaim();
            let flow = match wake {
                Wake::Done => Flow::Drop,
                Wake::Expired => self.on_expired(),
                Wake::Read(Ok(Some(chunk))) => self.on_read(&chunk.bytes).await,
                Wake::Read(Ok(None)) => self.on_finished().await,
                Wake::Read(Err(error)) => {
                    debug!(%error, "stream read failed");
                    Flow::Drop
                }
                Wake::Event(Some(ev)) => self.deliver(ev),
                Wake::Event(None) | Wake::Returned => Flow::Continue,
            };
            let flow = self.write_out(flow).await;
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
        self.lender.leave_all();
        self.end(end).await;
    }

    /// Sleeps until something needs the task. While the stream is lent
    /// that is a read, a timer, the session ending, or the lease ending.
    async fn wait(&mut self, done: Pin<&mut WaitForCancellationFutureOwned>) -> Wake {
        tokio::select! {
            () = done => Wake::Done,
            () = self.lender.returned() => Wake::Returned,
            () = self.expiry.elapsed() => Wake::Expired,
            read = self.recv.quic_stream_mut().read_chunk(READ_CHUNK, true), if self.reading => {
                Wake::Read(read)
            }
            ev = self.session.next_event(), if self.session.has_subscriptions() => Wake::Event(ev),
        }
    }

    /// The token ran out: its subscriptions end, the client is told why,
    /// and the stream finishes.
    fn on_expired(&mut self) -> Flow {
        self.session.unsubscribe_all();
        self.push_line(protocol::error_frame(&token_expired(), None));
        Flow::Finish
    }

    /// Runs every complete line `bytes` ends; replies are buffered in
    /// order.
    async fn on_read(&mut self, bytes: &[u8]) -> Flow {
        self.lines.push(bytes);
        loop {
            match self.lines.next_line() {
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

    /// The client finished its side: an unterminated last line still
    /// counts. Subscriptions keep delivering; with none the stream
    /// finishes.
    async fn on_finished(&mut self) -> Flow {
        self.reading = false;
        match self.on_read(b"\n").await {
            Flow::Continue if !self.session.has_subscriptions() => Flow::Finish,
            flow => flow,
        }
    }

    /// Buffers an event and whatever else is ready, for one write.
    fn deliver(&mut self, first: Ready) -> Flow {
        let mut ready = Coalesce::new(first);
        while let Some(frame) = ready.next(
            &mut self.session,
            &self.stats,
            self.out_len < COALESCE_BYTES,
        ) {
            match frame {
                Frame::Message(mode, m) => {
                    let outlet = self.lender.outlet();
                    if mode != DeliveryMode::Datagram || !outlet.send_datagram(&m.op_frame()) {
                        self.push_chunk(m.op_line().clone());
                    }
                }
                Frame::Op(op) => self.push_line(op),
                Frame::Lagged(op) => {
                    self.push_line(op);
                    return Flow::Finish;
                }
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

    /// Writes what handling buffered, unless the stream is gone; then the
    /// loop goes on as `flow` says, or as the write's failure does.
    async fn write_out(&mut self, flow: Flow) -> Flow {
        if let Flow::Drop = flow {
            return flow;
        }
        match self.write().await {
            Ok(()) => flow,
            Err(failed) => failed,
        }
    }

    /// Writes the buffered lines (after a fan-out's leftover) under the
    /// send timeout, so a client that stops reading loses this stream
    /// instead of pinning its task.
    async fn write(&mut self) -> Result<(), Flow> {
        let outlet = self.lender.outlet();
        if self.out.is_empty() && !(self.lender.has_joined() && outlet.has_leftover()) {
            return Ok(());
        }
        let limit = self.ctx.cfg.send_timeout();
        // quinn takes the chunks as they are (reference-counted), so a
        // message's shared line is never copied per stream.
        let written = tokio::time::timeout(limit, outlet.write_all(&mut self.out)).await;
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

    /// Lends the stream to the fan-outs of its subscriptions if nothing is
    /// pending: every subscription caught up and on the stream, nothing
    /// buffered or left over.
    async fn try_lend(&mut self) -> Flow {
        if self.ctx.cfg.wt_fanout == WtFanout::Task || !self.lender.may_lend(&mut self.session) {
            return Flow::Continue;
        }
        // What a fan-out write left over goes first.
        if self.lender.outlet().has_leftover()
            && let Err(flow) = self.write().await
        {
            return flow;
        }
        self.lender.lend(&self.ctx, &mut self.session);
        Flow::Continue
    }

    /// Ends the lease, if any; each lent subscription reads on from what the
    /// fan-out wrote.
    fn reclaim(&mut self) {
        self.lender.reclaim(&mut self.session);
    }

    /// Ends the stream as the loop's last `flow` says.
    async fn end(&mut self, flow: Flow) {
        match flow {
            Flow::Continue | Flow::Drop => {}
            Flow::Finish => self.finish().await,
            Flow::TooLarge => {
                let _ = self
                    .recv
                    .quic_stream_mut()
                    .stop(quinn::VarInt::from_u32(STREAM_TOO_LARGE));
                self.finish().await;
            }
            Flow::Reset(code) => {
                if let Some(mut send) = self.lender.outlet().take_send() {
                    let _ = send.reset(VarInt::from_u32(code));
                }
            }
        }
    }

    async fn finish(&mut self) {
        if let Some(mut send) = self.lender.outlet().take_send() {
            let _ = tokio::time::timeout(FINISH_TIMEOUT, send.finish()).await;
        }
    }
}
