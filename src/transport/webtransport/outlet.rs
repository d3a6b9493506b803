//! A WebTransport stream, lent to its channels' fan-outs while its own task
//! has nothing in flight: the WebTransport side of
//! [`crate::transport::websocket::outlet`].
//!
//! A caught-up stream's send half lives here, behind a lock. While lent, the
//! channel's fan-out ([`crate::transport::fanout`]) puts each batch's lines
//! into the stream's send buffer itself (quinn takes them without blocking
//! while flow control allows) and the stream's task sleeps. Any write by the
//! task ends the lease; a fan-out write that quinn cannot take whole ends it
//! too, and the rest is written by the task first, under its send timeout.
//!
//! A subscription with datagram delivery is lent the same way: the fan-out
//! sends each message that fits as a datagram (quinn queues it without
//! blocking, dropping the oldest queued datagram when its buffer is full)
//! and writes the rest to the stream, as the task would.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::Notify;
use tracing::debug;
use wtransport::error::SendDatagramError;
use wtransport::quinn::WriteError;
use wtransport::{Connection, SendStream};

use crate::hub::ChannelName;
use crate::protocol::DeliveryMode;
use crate::stats::TransportStats;
use crate::transport::fanout::{Batch, ChannelFanout, Member};
use crate::transport::lease::{Due, Lease, Lendable, Slot};

/// One stream's lendable send half.
#[derive(Debug)]
pub(crate) struct StreamOutlet {
    state: Mutex<State>,
    /// The stream's session, for datagram delivery.
    conn: Connection,
    /// Tells the stream's task the lease ended.
    returned: Notify,
    stats: TransportStats,
}

#[derive(Debug)]
struct State {
    /// `None` once the task took it back for good (to finish or reset).
    send: Option<SendStream>,
    lease: Lease,
    /// Lines a fan-out write got only partly into the stream: written
    /// first by the next write.
    leftover: Vec<Bytes>,
}

impl StreamOutlet {
    /// Holds `send` of a stream of `conn`; counts deliveries into `stats`.
    pub(crate) fn new(conn: Connection, send: SendStream, stats: TransportStats) -> Self {
        Self {
            conn,
            state: Mutex::new(State {
                send: Some(send),
                lease: Lease::default(),
                leftover: Vec::new(),
            }),
            returned: Notify::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under the lock is a plain assignment or a quinn call
        // that leaves the stream consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether part of a batch still waits to be written.
    pub(crate) fn has_leftover(&self) -> bool {
        !self.lock().leftover.is_empty()
    }

    /// Takes the send half back for good (to finish or reset the stream).
    pub(crate) fn take_send(&self) -> Option<SendStream> {
        let mut st = self.lock();
        st.lease.end();
        st.send.take()
    }

    fn end_lease(&self, st: &mut State) {
        st.lease.end();
        self.returned.notify_one();
    }

    /// Ends the lease if it covers `channel` (its fan-out lost track).
    pub(crate) fn hand_back(&self, channel: &ChannelName) {
        let mut st = self.lock();
        if st.lease.covers(channel) {
            self.end_lease(&mut st);
        }
    }

    /// Sends `frame` (a message without its newline) as a datagram if it
    /// fits now; false means it must go on the stream instead.
    pub(crate) fn send_datagram(&self, frame: &[u8]) -> bool {
        // The size changes with path MTU discovery: checked per send.
        if self
            .conn
            .max_datagram_size()
            .is_none_or(|max| frame.len() > max)
        {
            debug!(
                len = frame.len(),
                "message too big for a datagram; sent on the stream"
            );
            return false;
        }
        match self.conn.send_datagram(frame) {
            Ok(()) => {
                self.stats.datagrams_out.inc();
                true
            }
            Err(SendDatagramError::TooLarge | SendDatagramError::UnsupportedByPeer) => false,
            // The session is gone; the stream write will notice too.
            Err(SendDatagramError::NotConnected) => true,
        }
    }

    /// Delivers the messages of `batch` that `channel`'s subscription lacks,
    /// if the stream is lent for it, without waiting. `lines` is scratch
    /// space, reused across calls.
    pub(crate) fn offer(&self, channel: &ChannelName, batch: &Batch, lines: &mut Vec<Bytes>) {
        let mut st = self.lock();
        let (i, cursor) = match st.lease.due(channel, batch) {
            Due::Nothing => return,
            Due::Missed => return self.end_lease(&mut st),
            Due::After { slot, cursor } => (slot, cursor),
        };
        let due = batch.lines_after(cursor);
        let total = due.len();
        lines.clear();
        match st.lease.mode(i) {
            DeliveryMode::Stream => lines.extend_from_slice(due),
            // A batch line is `Message::op_line`; without its newline it
            // is the datagram form, `op_frame`.
            DeliveryMode::Datagram => lines.extend(
                due.iter()
                    .filter(|line| !self.send_datagram(&line[..line.len() - 1]))
                    .cloned(),
            ),
        }
        self.stats.direct_writes.inc();
        let n = lines.len();
        if n == 0 {
            st.lease.wrote(i, batch);
            self.stats.messages_out.inc_by(total as u64);
            return;
        }
        let written = match st.send.as_mut() {
            Some(send) => send.quic_stream_mut().write_chunks(lines).now_or_never(),
            None => None,
        };
        let taken = match written {
            Some(Ok(w)) if w.bytes > 0 => w.chunks,
            // Some went as datagrams: the batch counts as delivered and the
            // stream owes the rest, written by the task first.
            _ if n < total => 0,
            // Flow control (a slow reader) or a closed stream: the task
            // finds out which.
            _ => {
                self.stats.direct_handbacks.inc();
                return self.end_lease(&mut st);
            }
        };
        st.lease.wrote(i, batch);
        self.stats.messages_out.inc_by(total as u64);
        if taken < n {
            // quinn advanced a partly taken line in place.
            st.leftover = lines.drain(taken..).collect();
            self.stats.direct_handbacks.inc();
            self.end_lease(&mut st);
        }
    }

    /// Writes `out` (after any leftover), ending any lease first. Locks per
    /// poll, so a fan-out never writes between two of these lines' bytes.
    pub(crate) async fn write_all(&self, out: &mut [Bytes]) -> Result<(), WriteError> {
        let mut done = 0;
        std::future::poll_fn(|cx| {
            let mut guard = self.lock();
            let st = &mut *guard;
            if st.lease.end() {
                self.returned.notify_one();
            }
            let Some(send) = st.send.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            while !st.leftover.is_empty() {
                match poll_write(send, &mut st.leftover, cx) {
                    Poll::Ready(Ok(chunks)) => {
                        st.leftover.drain(..chunks);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            while done < out.len() {
                match poll_write(send, &mut out[done..], cx) {
                    Poll::Ready(Ok(chunks)) => done += chunks,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }
}

impl Lendable for StreamOutlet {
    fn lend<'a>(
        &self,
        candidates: impl Iterator<Item = (Slot, &'a ChannelFanout)>,
    ) -> Vec<ChannelName> {
        let mut st = self.lock();
        let may = st.send.is_some() && st.leftover.is_empty();
        st.lease.grant(may, candidates)
    }

    fn reclaim(&self, each: impl FnMut(&Slot)) {
        self.lock().lease.reclaim(each);
    }

    /// A fan-out write that quinn could not take whole, or a fan-out that
    /// lost track of a channel.
    async fn returned(&self) {
        self.returned.notified().await;
    }

    fn member(outlet: Arc<Self>) -> Member {
        Member::Stream(outlet)
    }
}

/// One poll of a write of `bufs`; the number of whole chunks written.
fn poll_write(
    send: &mut SendStream,
    bufs: &mut [Bytes],
    cx: &mut Context<'_>,
) -> Poll<Result<usize, WriteError>> {
    let write = send.quic_stream_mut().write_chunks(bufs);
    let mut write = std::pin::pin!(write);
    write.as_mut().poll(cx).map(|r| r.map(|w| w.chunks))
}
