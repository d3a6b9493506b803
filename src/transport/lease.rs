//! Lending a caught-up socket or stream to its channels' fan-outs: the state
//! both kinds of outlet keep under their lock ([`Lease`]) and the task-side
//! bookkeeping ([`Lender`]), shared by WebSocket and WebTransport.
//!
//! The task lends only with nothing of its own in flight and every
//! subscription caught up; it reclaims before it writes anything itself,
//! and then each paused subscription reads on from the offset the fan-out
//! reached.

use std::sync::Arc;

use super::fanout::{Batch, ChannelFanout, Fanouts, Member, Membership};
use super::session::OpSession;
use crate::context::Ctx;
use crate::hub::ChannelName;
use crate::protocol::DeliveryMode;

/// A lent subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Its channel.
    pub(crate) channel: ChannelName,
    /// The last offset written.
    pub(crate) cursor: u64,
    /// How its messages travel (datagrams only over WebTransport).
    pub(crate) mode: DeliveryMode,
}

/// Which subscriptions an outlet is lent for, kept under the outlet's lock.
#[derive(Debug, Default)]
pub(crate) struct Lease {
    lent: bool,
    slots: Vec<Slot>,
}

/// What a fan-out owes a lent outlet for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Not lent for the channel, or it has the whole batch already.
    Nothing,
    /// It lacks messages from before the batch, which the fan-out never
    /// wrote to it: the lease must end and its task read them from the log.
    Missed,
    /// The batch's messages after `cursor`, for slot `slot`.
    After {
        /// Index of the slot.
        slot: usize,
        /// The last offset it has.
        cursor: u64,
    },
}

impl Lease {
    /// Lends for the candidates whose fan-out accepts them, if `may` (the
    /// outlet can take direct writes); returns the channels lent for.
    /// Called under the outlet's lock: see the fan-out module's docs.
    pub(crate) fn grant<'a>(
        &mut self,
        may: bool,
        candidates: impl Iterator<Item = (Slot, &'a ChannelFanout)>,
    ) -> Vec<ChannelName> {
        self.slots.clear();
        if may {
            for (slot, fan) in candidates {
                if fan.accepts(slot.cursor) {
                    // One at a time: most outlets lend for a single channel.
                    self.slots.reserve_exact(1);
                    self.slots.push(slot);
                }
            }
        }
        self.lent = !self.slots.is_empty();
        self.slots.iter().map(|s| s.channel.clone()).collect()
    }

    /// Ends the lease; returns whether it was lent.
    pub(crate) fn end(&mut self) -> bool {
        std::mem::replace(&mut self.lent, false)
    }

    /// Ends the lease and passes each slot, with what was written, to
    /// `each`.
    pub(crate) fn reclaim(&mut self, each: impl FnMut(&Slot)) {
        self.lent = false;
        self.slots.iter().for_each(each);
        self.slots.clear();
    }

    /// Whether it is lent for `channel`.
    pub(crate) fn covers(&self, channel: &ChannelName) -> bool {
        self.lent && self.slots.iter().any(|s| &s.channel == channel)
    }

    /// What `channel`'s subscription lacks from `batch`.
    pub(crate) fn due(&self, channel: &ChannelName, batch: &Batch) -> Due {
        if !self.lent {
            return Due::Nothing;
        }
        let Some(slot) = self.slots.iter().position(|s| &s.channel == channel) else {
            return Due::Nothing;
        };
        let cursor = self.slots[slot].cursor;
        if cursor >= batch.last() {
            Due::Nothing
        } else if cursor < batch.prev() {
            Due::Missed
        } else {
            Due::After { slot, cursor }
        }
    }

    /// How slot `slot`'s messages travel.
    pub(crate) fn mode(&self, slot: usize) -> DeliveryMode {
        self.slots[slot].mode
    }

    /// Slot `slot` now has all of `batch`.
    pub(crate) fn wrote(&mut self, slot: usize, batch: &Batch) {
        self.slots[slot].cursor = batch.last();
    }
}

/// An outlet a task can lend (a WebSocket's socket, a WebTransport stream).
pub(crate) trait Lendable {
    /// Runs [`Lease::grant`] under the outlet's lock, with whether the
    /// outlet can take direct writes now.
    fn lend<'a>(
        &self,
        candidates: impl Iterator<Item = (Slot, &'a ChannelFanout)>,
    ) -> Vec<ChannelName>;

    /// Runs [`Lease::reclaim`] under the outlet's lock.
    fn reclaim(&self, each: impl FnMut(&Slot));

    /// Completes when a lease ended without the task asking (a fan-out
    /// could not write, or lost track of the channel). May complete once
    /// spuriously.
    async fn returned(&self);

    /// `outlet` as it joins a fan-out.
    fn member(outlet: Arc<Self>) -> Member;
}

/// The task side of lending an outlet: the outlet, the fan-outs joined,
/// and whether it is lent. Both socket adapters decide with it when to
/// lend ([`Self::may_lend`], then [`Self::lend`]) and take their outlet
/// back before each write of their own ([`Self::reclaim`]).
#[derive(Debug)]
pub(crate) struct Lender<O> {
    outlet: Arc<O>,
    fanouts: Fanouts,
    lent: bool,
    joined: Vec<Membership>,
}

impl<O: Lendable> Lender<O> {
    /// Lends `outlet` to the fan-outs in `fanouts`.
    pub(crate) fn new(outlet: Arc<O>, fanouts: Fanouts) -> Self {
        Self {
            outlet,
            fanouts,
            lent: false,
            joined: Vec::new(),
        }
    }

    /// The outlet.
    pub(crate) fn outlet(&self) -> &Arc<O> {
        &self.outlet
    }

    /// Whether it ever joined a fan-out (only then can a direct write have
    /// left something over).
    pub(crate) fn has_joined(&self) -> bool {
        !self.joined.is_empty()
    }

    /// Completes when the lease ends without the task asking; never while
    /// the outlet is not lent.
    pub(crate) async fn returned(&self) {
        match self.lent {
            true => self.outlet.returned().await,
            false => std::future::pending().await,
        }
    }

    /// Whether the outlet may be lent now, asked after each wake-up the
    /// task handled: it leaves the fan-outs of channels no longer
    /// subscribed, then answers whether it is not lent yet and every
    /// subscription is caught up. The task then writes out whatever of its
    /// own is still in flight and calls [`Self::lend`].
    pub(crate) fn may_lend(&mut self, session: &mut OpSession) -> bool {
        self.joined
            .retain(|m| session.stream_mut(m.channel()).is_some());
        !self.lent && caught_up(session)
    }

    /// Leaves every fan-out.
    pub(crate) fn leave_all(&mut self) {
        self.joined.clear();
    }

    /// Joins the fan-out of every subscribed channel and lends the outlet
    /// for the subscriptions their fan-outs accept, pausing those.
    pub(crate) fn lend(&mut self, ctx: &Ctx, session: &mut OpSession) {
        for (channel, _) in session.streams_mut() {
            if !self.joined.iter().any(|m| m.channel() == channel) {
                // Exactly: most join one channel, and a vector would
                // otherwise make room for four.
                self.joined.reserve_exact(1);
                let member = O::member(self.outlet.clone());
                self.joined.push(self.fanouts.join(ctx, channel, member));
            }
        }
        let candidates = self.joined.iter().filter_map(|m| {
            let s = session.stream_mut(m.channel())?;
            let (cursor, mode) = (s.subscription().cursor(), s.mode());
            let channel = m.channel().clone();
            Some((
                Slot {
                    channel,
                    cursor,
                    mode,
                },
                m.fanout(),
            ))
        });
        let lent = self.outlet.lend(candidates);
        self.lent = !lent.is_empty();
        for channel in &lent {
            if let Some(s) = session.stream_mut(channel) {
                s.pause();
            }
        }
    }

    /// Ends the lease, if any; each lent subscription reads on from what the
    /// fan-out wrote.
    pub(crate) fn reclaim(&mut self, session: &mut OpSession) {
        if !std::mem::replace(&mut self.lent, false) {
            return;
        }
        self.outlet.reclaim(|slot| {
            if let Some(s) = session.stream_mut(&slot.channel) {
                s.resume(slot.cursor);
            }
        });
        for (_, s) in session.streams_mut() {
            if s.is_paused() {
                s.resume(0);
            }
        }
    }
}

/// Whether `session` could be lent: it has subscriptions, and every one is
/// caught up.
pub(crate) fn caught_up(session: &mut OpSession) -> bool {
    session.has_subscriptions()
        && session
            .streams_mut()
            .all(|(_, s)| s.subscription().is_caught_up())
}
