//! A live subscription: a cursor into one channel's log plus a wake-up.
//!
//! Entry points: [`Subscription::next`] (await the next event) and
//! [`Subscription::try_next`] (drain what is ready without waiting, used to
//! coalesce many messages into one socket write).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::channel::{ReadOutcome, Start, Truncation};
use super::{Channel, READ_BATCH, ReaderGuard};
use crate::name::{ChannelName, Epoch};
use crate::protocol::Message;

/// What a subscriber receives, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// The next message.
    Message(Arc<Message>),
    /// The requested position could not be honoured; delivery continues from
    /// `oldest` in `epoch`. Only ever the first event.
    Truncated(Truncation),
    /// The subscriber fell behind the retained history, or the backend
    /// interrupted delivery (Redis unreachable), and is dropped; it can
    /// resume with `since = last`. Every later call returns this again.
    Lagged {
        /// The last offset it was given.
        last: u64,
    },
    /// The channel's presence changed (only for subscribers that asked;
    /// never from the log, so it takes no offset).
    Presence(super::presence::PresenceEvent),
}

/// A subscription to one channel. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    guard: ReaderGuard,
    name: ChannelName,
    epoch: Epoch,
    head: u64,
    cursor: u64,
    rx: watch::Receiver<u64>,
    /// Messages copied out of the log but not yet handed out; reused, so a
    /// warm subscription allocates nothing per message.
    buf: VecDeque<Arc<Message>>,
    truncation: Option<Truncation>,
    lagged: bool,
    /// The channel's interruption count when subscribed; a later one ends
    /// this subscription with `Lagged` (see `Channel::interrupts`).
    interrupts: u64,
}

impl Subscription {
    pub(super) fn new(
        guard: ReaderGuard,
        name: ChannelName,
        epoch: Epoch,
        head: u64,
        start: Start,
        rx: watch::Receiver<u64>,
    ) -> Self {
        let interrupts = guard.0.interrupts.load(Ordering::Acquire);
        Self {
            guard,
            name,
            epoch,
            head,
            cursor: start.cursor,
            rx,
            buf: VecDeque::new(),
            truncation: start.truncated,
            lagged: false,
            interrupts,
        }
    }

    /// The channel subscribed to.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// The channel's epoch at subscription time.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// The channel's head offset at subscription time.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The last offset handed out (or the starting point).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub(super) fn channel(&self) -> &Channel {
        &self.guard.0
    }

    pub(super) fn take_truncation(&mut self) -> Option<Truncation> {
        self.truncation.take()
    }

    /// Marks the current head as seen, before reading the log, so a publish
    /// that lands after the read still wakes [`Self::changed`].
    pub(super) fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Whether the backend interrupted delivery since this subscription
    /// began.
    pub(super) fn interrupted(&self) -> bool {
        self.guard.0.interrupts.load(Ordering::Acquire) != self.interrupts
    }

    /// Waits until something was published after the last `mark_seen`.
    pub(super) async fn changed(&mut self) {
        // The sender lives in the channel this subscription keeps alive, so
        // it cannot be dropped; never return spuriously if it somehow were.
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A future that completes once something is published after the last
    /// read, owning its own handle on the channel's wake-up (so a caller can
    /// keep it apart from the subscription, and drop it to stop being woken).
    /// It may complete for a publish already read; it never misses one.
    pub fn changed_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether everything published so far has been handed out and nothing
    /// else (a truncation notice, a lag, an interruption) is due.
    pub fn is_caught_up(&self) -> bool {
        self.truncation.is_none()
            && self.buf.is_empty()
            && !self.lagged
            && !self.interrupted()
            && self.guard.0.read().head() == self.cursor
    }

    /// Records that messages up to `offset` were delivered by other means
    /// (written straight to the subscriber's socket while this subscription
    /// was paused); reading resumes after it.
    pub fn advance_to(&mut self, offset: u64) {
        if offset > self.cursor {
            self.cursor = offset;
            self.buf.retain(|m| m.offset() > offset);
        }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        if let Some(t) = self.truncation.take() {
            return Some(Event::Truncated(t));
        }
        if self.buf.is_empty() && !self.lagged {
            self.mark_seen();
            let outcome = self
                .guard
                .0
                .read()
                .read_after(self.cursor, READ_BATCH, &mut self.buf);
            // An interruption ends the subscription after what the ring
            // already holds, like falling behind does.
            self.lagged =
                outcome == ReadOutcome::Behind || (self.buf.is_empty() && self.interrupted());
        }
        if let Some(m) = self.buf.pop_front() {
            self.cursor = m.offset();
            return Some(Event::Message(m));
        }
        self.lagged.then_some(Event::Lagged { last: self.cursor })
    }

    /// Waits for the next event. Cancel-safe: nothing is consumed until it
    /// returns.
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(ev) = self.try_next() {
                return ev;
            }
            self.changed().await;
        }
    }
}
