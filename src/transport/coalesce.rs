//! Coalescing, shared by the WebSocket and WebTransport adapters: the task
//! woken by one event also takes whatever else its subscriptions have
//! ready, up to a bound, so a burst costs one write instead of one each.
//!
//! [`Coalesce`] yields each event as the [`Frame`] to write, in order; the
//! adapter decides only how a frame goes on its wire (a text frame, a line,
//! a datagram) and when its buffer is full. The counters every delivery
//! moves (`messages_out`, `lagged`) are counted here, once.

use std::sync::Arc;

use bytes::Bytes;

use super::presence;
use super::session::OpSession;
use crate::hub::{ChannelName, Event};
use crate::protocol::{self, DeliveryMode, Message};
use crate::stats::TransportStats;

/// Most events taken for one write.
const MAX_EVENTS: usize = 64;

/// An event of a subscription, as [`OpSession::next_event`] yields it.
pub(crate) type Ready = (ChannelName, DeliveryMode, Event);

/// One event, ready for the wire.
pub(crate) enum Frame {
    /// A message, sent as its subscription's delivery mode asks; its
    /// encodings are shared, not copied per subscriber.
    Message(DeliveryMode, Arc<Message>),
    /// Any other op (`truncated`, presence), JSON without framing.
    Op(Bytes),
    /// The `lagged` op: the subscription fell behind, and the conversation
    /// ends once this is written.
    Lagged(Bytes),
}

/// The events one wake-up delivers: the one that woke the task, then those
/// ready without waiting.
pub(crate) struct Coalesce {
    next: Option<Ready>,
    taken: usize,
}

impl Coalesce {
    /// Starts with `first`, the event that woke the task.
    pub(crate) fn new(first: Ready) -> Self {
        Self {
            next: Some(first),
            taken: 0,
        }
    }

    /// The next frame to write, counted in `stats`: the first event, then
    /// each one `session` has ready, up to [`MAX_EVENTS`] and while `room`
    /// (the adapter's buffer is not full). Nothing follows a
    /// [`Frame::Lagged`].
    pub(crate) fn next(
        &mut self,
        session: &mut OpSession,
        stats: &TransportStats,
        room: bool,
    ) -> Option<Frame> {
        let (channel, mode, event) = match self.next.take() {
            Some(first) => first,
            None if room && self.taken < MAX_EVENTS => session.try_next_event()?,
            None => return None,
        };
        self.taken += 1;
        Some(match event {
            Event::Message(m) => {
                stats.messages_out.inc();
                Frame::Message(mode, m)
            }
            Event::Truncated(t) => {
                Frame::Op(protocol::truncated_frame(&channel, t.oldest, &t.epoch))
            }
            Event::Presence(p) => Frame::Op(presence::op_frame(&channel, &p)),
            Event::Lagged { last } => {
                stats.lagged.inc();
                self.taken = MAX_EVENTS;
                Frame::Lagged(protocol::lagged_frame(&channel, last))
            }
        })
    }
}
