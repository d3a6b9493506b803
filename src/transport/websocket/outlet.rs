//! A WebSocket's socket, lent to the channels' fan-out tasks while its own
//! task has nothing in flight.
//!
//! Waking one task per subscriber per message costs more than the write it
//! leads to. So a caught-up socket is *lent*: the channel's fan-out
//! ([`crate::transport::fanout`]) writes each batch of frames straight to it, with one
//! non-blocking write, and the socket's task sleeps. Whenever the task
//! needs the socket back (to reply to an op, ping, close) or a direct write
//! cannot complete (the client is slow: `EAGAIN`, or only part was
//! accepted), the lease ends; the task takes over from the cursors recorded
//! here, through the ordinary path with its send timeout and lag policy.
//!
//! The outlet holds a share of the socket ([`Socket`]) until the connection
//! closes, so a direct write never outlives the descriptor. The lock orders
//! the writers: every write to the socket, direct or through the WebSocket
//! layer ([`crate::transport::meter::MeteredIo`]), holds it, and direct writes
//! happen only while lent, which the task grants only with the WebSocket
//! layer's output fully flushed. Frames therefore never interleave.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::config::WsFanout;
use crate::hub::ChannelName;
use crate::socket::Socket;
use crate::stats::TransportStats;
use crate::transport::fanout::{Batch, ChannelFanout, Member};
use crate::transport::lease::{Due, Lease, Lendable, Slot};
use crate::transport::meter::handover::Borrower;

/// One connection's lendable socket.
#[derive(Debug)]
pub(crate) struct Outlet {
    state: Mutex<State>,
    /// Tells the socket's task the lease ended.
    returned: Notify,
    /// The WebSocket counters.
    stats: TransportStats,
}

/// The lease, under the outlet's lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The outlet's share of the socket, until the connection closes
    /// ([`Outlet::close`]); lent only while it is here.
    socket: Option<Socket>,
    lease: Lease,
    /// The unwritten end of a batch a direct write got only partly out:
    /// written first by the next write of any kind.
    leftover: Option<Bytes>,
}

impl Outlet {
    /// An outlet sharing `socket`, counting into `stats`.
    pub(crate) fn new(socket: Socket, stats: TransportStats) -> Self {
        Self {
            state: Mutex::new(State {
                socket: Some(socket),
                ..State::default()
            }),
            returned: Notify::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under the lock is a plain field assignment; a panic
        // cannot leave it half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets go of the socket: the connection is closing, and no direct
    /// write happens after this returns.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.socket = None;
        st.lease.end();
    }

    /// Takes the socket for a write by the WebSocket layer: ends any lease
    /// and returns the lock, which the caller holds for its write, with the
    /// leftover of a partial direct write (to be written first).
    pub(crate) fn take(&self) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        if st.lease.end() {
            self.returned.notify_one();
        }
        st
    }

    /// Locks the outlet for a direct write of what `channel`'s subscription
    /// lacks from `batch`, if the socket is lent for it; the write's outcome
    /// goes to [`DirectSend::complete`], which releases the lock.
    pub(crate) fn prepare<'a>(
        &'a self,
        channel: &ChannelName,
        batch: &'a Batch,
    ) -> Option<DirectSend<'a>> {
        let mut st = self.lock();
        let socket = st.socket.clone()?;
        let (slot, cursor) = match st.lease.due(channel, batch) {
            Due::Nothing => return None,
            Due::Missed => {
                self.end_lease(&mut st);
                return None;
            }
            Due::After { slot, cursor } => (slot, cursor),
        };
        let (bytes, frames) = batch.after(cursor);
        self.stats.direct_writes.inc();
        Some(DirectSend {
            outlet: self,
            st,
            socket,
            slot,
            bytes,
            frames,
            batch,
        })
    }

    /// Ends the lease if it covers `channel` (whose fan-out lost track of
    /// it: the subscription's task reads on from the log).
    pub(crate) fn hand_back(&self, channel: &ChannelName) {
        let mut st = self.lock();
        if st.lease.covers(channel) {
            self.end_lease(&mut st);
        }
    }

    fn end_lease(&self, st: &mut State) {
        st.lease.end();
        self.returned.notify_one();
    }
}

/// A direct write in progress: the outlet stays locked (so nothing else
/// writes) until it completes.
#[derive(Debug)]
pub(crate) struct DirectSend<'a> {
    outlet: &'a Outlet,
    st: MutexGuard<'a, State>,
    /// A share of the socket, for this write (and, should `io_uring` not
    /// finish with it at once, for as long as the kernel needs it).
    socket: Socket,
    slot: usize,
    bytes: &'a [u8],
    frames: usize,
    batch: &'a Batch,
}

impl<'a> DirectSend<'a> {
    /// The socket.
    #[cfg(feature = "uring")]
    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    /// One non-blocking write of [`Self::bytes`].
    pub(crate) fn send(&self) -> io::Result<usize> {
        self.socket.stream().try_write(self.bytes)
    }

    /// What to write.
    #[cfg(feature = "uring")]
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Records the outcome of a non-blocking send of [`Self::bytes`]: the
    /// slot's cursor moves on once any of it was written, and a send that
    /// could not take it all hands the socket back to its task.
    pub(crate) fn complete(mut self, res: io::Result<usize>) {
        let outlet = self.outlet;
        match res {
            Ok(n) if n > 0 => {
                self.st.lease.wrote(self.slot, self.batch);
                let out = &outlet.stats;
                out.bytes_out.inc_by(n as u64);
                out.messages_out.inc_by(self.frames as u64);
                if n < self.bytes.len() {
                    self.st.leftover = Some(Bytes::copy_from_slice(&self.bytes[n..]));
                    out.direct_handbacks.inc();
                    outlet.end_lease(&mut self.st);
                }
            }
            // Full (a slow client) or broken: the task finds out which and
            // applies the send timeout or closes.
            _ => {
                outlet.stats.direct_handbacks.inc();
                outlet.end_lease(&mut self.st);
            }
        }
    }
}

impl Lendable for Outlet {
    fn lend<'a>(
        &self,
        candidates: impl Iterator<Item = (Slot, &'a ChannelFanout)>,
    ) -> Vec<ChannelName> {
        let mut st = self.lock();
        let open = st.socket.is_some();
        st.lease.grant(open, candidates)
    }

    fn reclaim(&self, each: impl FnMut(&Slot)) {
        self.lock().lease.reclaim(each);
    }

    /// A direct write could not finish, a fan-out lost track of a channel,
    /// or the WebSocket layer wrote on its own.
    async fn returned(&self) {
        self.returned.notified().await;
    }

    fn member(outlet: Arc<Self>) -> Member {
        Member::Socket(outlet)
    }
}

/// The stream under the WebSocket layer takes the socket back through this
/// for each of its writes.
impl Borrower for Outlet {
    fn close(&self) {
        Self::close(self);
    }

    fn exclusive(&self, write: &mut dyn FnMut(&mut Option<Bytes>)) {
        write(&mut self.take().leftover);
    }
}

/// Writes each batch to a fan-out's lent sockets: with `--ws-fanout uring`
/// (and the `uring` feature) through `io_uring`, [`super::uring::CHUNK`]
/// sockets per system call; else one non-blocking write per socket.
#[derive(Debug)]
pub(crate) struct Writer {
    #[cfg(feature = "uring")]
    ring: bool,
    #[cfg(feature = "uring")]
    results: Vec<io::Result<usize>>,
}

impl Writer {
    /// A writer for `mode` (only `uring` makes a difference here).
    pub(crate) fn new(mode: WsFanout) -> Self {
        #[cfg(not(feature = "uring"))]
        let _ = mode;
        Self {
            #[cfg(feature = "uring")]
            ring: mode == WsFanout::Uring,
            #[cfg(feature = "uring")]
            results: Vec::new(),
        }
    }

    /// Writes to every outlet lent for `channel` what it lacks of `batch`.
    pub(crate) fn offer(&mut self, outlets: &[Arc<Outlet>], channel: &ChannelName, batch: &Batch) {
        #[cfg(feature = "uring")]
        if self.ring {
            return self.offer_ring(outlets, channel, batch);
        }
        for outlet in outlets {
            if let Some(send) = outlet.prepare(channel, batch) {
                let res = send.send();
                send.complete(res);
            }
        }
    }

    #[cfg(feature = "uring")]
    fn offer_ring(&mut self, outlets: &[Arc<Outlet>], channel: &ChannelName, batch: &Batch) {
        use super::uring::{CHUNK, send_all};
        let mut held = Vec::with_capacity(CHUNK.min(outlets.len()));
        for chunk in outlets.chunks(CHUNK) {
            held.extend(chunk.iter().filter_map(|o| o.prepare(channel, batch)));
            let sends: Vec<_> = held.iter().map(|s| (s.socket(), s.bytes())).collect();
            send_all(batch.frames(), &sends, true, &mut self.results);
            drop(sends);
            for (send, res) in held.drain(..).zip(self.results.drain(..)) {
                send.complete(res);
            }
        }
    }
}
