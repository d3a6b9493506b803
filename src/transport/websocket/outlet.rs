//! A WebSocket's socket, lent to the channels' fan-out tasks while its own
//! task has nothing in flight.
//!
//! Waking one task per subscriber per message costs more than the write it
//! leads to. So a caught-up socket is *lent*: the channel's fan-out
//! ([`super::fanout`]) writes each batch of frames straight to it, with one
//! non-blocking `send()`, and the socket's task sleeps. Whenever the task
//! needs the socket back (to reply to an op, ping, close) or a direct write
//! cannot complete (the client is slow: `EAGAIN`, or only part was
//! accepted), the lease ends; the task takes over from the cursors recorded
//! here, through the ordinary path with its send timeout and lag policy.
//!
//! Frames never interleave: every write to the socket, direct or through the
//! WebSocket layer ([`crate::http::meter::MeteredIo`]), holds this outlet's
//! lock, and direct writes happen only while lent, which the task grants
//! only with the WebSocket layer's output fully flushed.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

use super::fanout::{Batch, ChannelFanout};
use crate::hub::ChannelName;
use crate::stats::{Stats, Transport};

/// One connection's lendable socket.
#[derive(Debug)]
pub struct Outlet {
    /// The connection's socket. Only used under `state`'s lock while
    /// `state.open`; see [`Outlet::close`].
    fd: RawFd,
    state: Mutex<State>,
    /// Tells the socket's task the lease ended.
    returned: Notify,
    stats: Arc<Stats>,
}

/// The lease, under the outlet's lock.
#[derive(Debug, Default)]
pub struct State {
    open: bool,
    lent: bool,
    /// The lent subscriptions and the last offset written for each.
    slots: Vec<Slot>,
    /// The unwritten end of a batch a direct write got only partly out:
    /// written first by the next write of any kind.
    leftover: Option<Bytes>,
}

/// A lent subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Its channel.
    pub channel: ChannelName,
    /// The last offset written to the socket.
    pub cursor: u64,
}

impl Outlet {
    /// An outlet for the open socket `fd`. The caller guarantees `fd` stays
    /// open until [`Outlet::close`] returns.
    pub(crate) fn new(fd: RawFd, stats: Arc<Stats>) -> Self {
        Self {
            fd,
            state: Mutex::new(State {
                open: true,
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

    /// Marks the socket closed; no direct write happens after this returns.
    /// Called by the socket's owner before it closes the descriptor.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.open = false;
        st.lent = false;
    }

    /// Lends the socket for the candidate subscriptions whose fan-out
    /// accepts them (the task's output is fully flushed and each one is
    /// caught up to its cursor); returns the channels lent for.
    pub fn lend<'a>(
        &self,
        candidates: impl Iterator<Item = (Slot, &'a ChannelFanout)>,
    ) -> Vec<ChannelName> {
        let mut st = self.lock();
        // Under the lock: see the fan-out module's docs for why.
        st.slots = candidates
            .filter(|(slot, fan)| fan.accepts(slot.cursor))
            .map(|(slot, _)| slot)
            .collect();
        st.lent = st.open && !st.slots.is_empty();
        if !st.lent {
            st.slots.clear();
        }
        st.slots.iter().map(|s| s.channel.clone()).collect()
    }

    /// Ends the lease (if any) and returns the slots with what was written.
    pub fn reclaim(&self) -> Vec<Slot> {
        let mut st = self.lock();
        st.lent = false;
        std::mem::take(&mut st.slots)
    }

    /// Whether the socket is lent right now.
    pub fn is_lent(&self) -> bool {
        self.lock().lent
    }

    /// Completes when a lease ended without the task asking (a direct write
    /// could not finish, or the WebSocket layer wrote on its own). May
    /// complete once spuriously.
    pub async fn returned(&self) {
        self.returned.notified().await;
    }

    /// Takes the socket for a write by the WebSocket layer: ends any lease
    /// and returns the lock, which the caller holds for its write, with the
    /// leftover of a partial direct write (to be written first).
    pub(crate) fn take(&self) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        if st.lent {
            st.lent = false;
            self.returned.notify_one();
        }
        st
    }

    /// Writes the part of `batch` that the subscription of `channel` lacks,
    /// if the socket is lent for it. Never blocks: a socket that cannot take
    /// it all at once is handed back to its task.
    pub(crate) fn offer(&self, channel: &ChannelName, batch: &Batch) {
        let mut st = self.lock();
        if !st.lent {
            return;
        }
        let Some(i) = st.slots.iter().position(|s| &s.channel == channel) else {
            return;
        };
        let cursor = st.slots[i].cursor;
        if cursor >= batch.last() {
            return;
        }
        if cursor < batch.prev() {
            // It missed messages the fan-out never wrote to it; its task
            // reads them from the log.
            self.end_lease(&mut st);
            return;
        }
        let (bytes, frames) = batch.after(cursor);
        self.stats.ws_direct_sends.inc();
        match self.send(bytes) {
            Ok(n) => {
                st.slots[i].cursor = batch.last();
                let out = self.stats.of(Transport::WebSocket);
                out.bytes_out.inc_by(n as u64);
                out.messages_out.inc_by(frames as u64);
                if n < bytes.len() {
                    st.leftover = Some(Bytes::copy_from_slice(&bytes[n..]));
                    self.stats.ws_direct_handbacks.inc();
                    self.end_lease(&mut st);
                }
            }
            // Full (a slow client) or broken: the task finds out which and
            // applies the send timeout or closes.
            Err(_) => {
                self.stats.ws_direct_handbacks.inc();
                self.end_lease(&mut st);
            }
        }
    }

    /// Ends the lease if it covers `channel` (whose fan-out lost track of
    /// it: the subscription's task reads on from the log).
    pub(crate) fn hand_back(&self, channel: &ChannelName) {
        let mut st = self.lock();
        if st.lent && st.slots.iter().any(|s| &s.channel == channel) {
            self.end_lease(&mut st);
        }
    }

    fn end_lease(&self, st: &mut State) {
        st.lent = false;
        self.returned.notify_one();
    }

    /// One non-blocking `send()` of `bytes`; `Ok(0)` never happens for a
    /// non-empty batch (a full socket is `WouldBlock`).
    fn send(&self, bytes: &[u8]) -> std::io::Result<usize> {
        // SAFETY: called only under the lock with `open` and `lent` set
        // (checked by `offer`), and `close` (which clears both under the same
        // lock) runs before the descriptor is closed, so `fd` is this
        // connection's open socket. `bytes` is a valid slice.
        let n = unsafe {
            libc::send(
                self.fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl State {
    /// The leftover of a partial direct write, to be written before anything
    /// else.
    pub(crate) fn leftover(&mut self) -> Option<&mut Bytes> {
        self.leftover.as_mut().filter(|b| !b.is_empty())
    }

    /// Drops the first `n` bytes of the leftover (they were written).
    pub(crate) fn wrote_leftover(&mut self, n: usize) {
        if let Some(b) = &mut self.leftover {
            let _ = b.split_to(n.min(b.len()));
            if b.is_empty() {
                self.leftover = None;
            }
        }
    }
}
