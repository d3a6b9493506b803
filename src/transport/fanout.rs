//! One fan-out task per channel that has lent WebSockets or WebTransport
//! streams: it reads each new batch of messages once, frames it once, and
//! writes it to every lent socket with a non-blocking send each (many per
//! system call through `io_uring` with the `uring` feature; see
//! [`super::websocket::outlet`] for the lease) and into every lent stream's
//! send buffer ([`super::webtransport::outlet`]).
//!
//! A channel's sockets are split among as many fan-outs as the runtime has
//! worker threads, so one busy channel still spreads over every core.
//!
//! Its position (`pos`, the last offset it has begun writing) is published
//! before it offers a batch, and a WebSocket joins only with its cursor at or
//! past that position, checked under the outlet's lock. Whichever of the two
//! takes the lock first, a socket either gets the batch from the fan-out or
//! never joined for it and reads it from the log itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::websocket::outlet::{Outlet, Writer};
use super::webtransport::outlet::StreamOutlet;
use crate::context::Ctx;
use crate::hub::{ChannelName, Event, Position, Subscription};
use crate::protocol::Message;

/// `pos` while the fan-out is not following its channel: nobody joins.
const NOT_READY: u64 = u64::MAX;
/// Most frames written per `send()`.
const BATCH_FRAMES: usize = 64;
/// Most bytes per `send()`; a bigger batch is split.
const BATCH_BYTES: usize = 64 * 1024;
/// Wait before following a channel again after the hub refused.
const RETRY: Duration = Duration::from_secs(1);

/// Every channel's fan-outs, by channel and shard.
///
/// Made once by the composition root and handed to the listeners, which
/// hand it to the socket adapters. Cloning is shallow.
#[derive(Debug, Default, Clone)]
pub struct Fanouts {
    map: Arc<Mutex<FanoutMap>>,
}

/// The running fan-outs, by channel and shard.
type FanoutMap = HashMap<(ChannelName, usize), Arc<ChannelFanout>>;

/// The fan-out of one channel.
#[derive(Debug)]
pub(crate) struct ChannelFanout {
    /// The channel; the memberships' and lent slots' names are clones of
    /// this one, so the outlets' name comparisons are pointer comparisons.
    name: ChannelName,
    pos: AtomicU64,
    /// The sockets to offer batches to.
    outlets: Mutex<Members>,
    stop: CancellationToken,
}

/// What joins a fan-out.
#[derive(Debug, Clone)]
pub(crate) enum Member {
    /// A WebSocket's socket.
    Socket(Arc<Outlet>),
    /// A WebTransport stream.
    Stream(Arc<StreamOutlet>),
}

impl Member {
    fn addr(&self) -> usize {
        match self {
            Self::Socket(o) => Arc::as_ptr(o) as usize,
            Self::Stream(o) => Arc::as_ptr(o) as usize,
        }
    }
}

/// The members of a fan-out, and a snapshot of them that a batch iterates
/// over without holding the lock (rebuilt after a change, so joins and
/// leaves stay cheap with many members).
#[derive(Debug, Default)]
struct Members {
    sockets: Vec<Arc<Outlet>>,
    streams: Vec<Arc<StreamOutlet>>,
    snapshot: Option<Arc<Snapshot>>,
}

#[derive(Debug, Default)]
struct Snapshot {
    sockets: Box<[Arc<Outlet>]>,
    streams: Box<[Arc<StreamOutlet>]>,
}

/// A socket's or stream's place in one channel's fan-out; leaving is
/// dropping it.
#[derive(Debug)]
pub(crate) struct Membership {
    fanouts: Fanouts,
    channel: ChannelName,
    shard: usize,
    fan: Arc<ChannelFanout>,
    member: Member,
}

impl Membership {
    /// The channel.
    pub(crate) fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// The fan-out.
    pub(crate) fn fanout(&self) -> &ChannelFanout {
        &self.fan
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let key = (self.channel.clone(), self.shard);
        self.fanouts.leave(&key, &self.fan, &self.member);
    }
}

/// Removes `member` (this very allocation) from `list`, if there.
fn remove<T>(list: &mut Vec<Arc<T>>, member: &Arc<T>) {
    if let Some(i) = list.iter().position(|o| Arc::ptr_eq(o, member)) {
        list.swap_remove(i);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a single insert/remove/replace.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fanouts {
    /// Adds `member` to `channel`'s fan-out, starting the fan-out if it is
    /// the first.
    pub(crate) fn join(&self, ctx: &Ctx, channel: &ChannelName, member: Member) -> Membership {
        let shards = tokio::runtime::Handle::try_current()
            .map_or(1, |h| h.metrics().num_workers())
            .max(1);
        // Members are separate allocations; their addresses spread evenly.
        let shard = (member.addr() >> 6) % shards;
        let mut map = lock(&self.map);
        let fan = map
            .entry((channel.clone(), shard))
            .or_insert_with(|| {
                let fan = Arc::new(ChannelFanout {
                    name: channel.clone(),
                    pos: AtomicU64::new(NOT_READY),
                    outlets: Mutex::default(),
                    stop: ctx.shutdown.child_token(),
                });
                ctx.tasks
                    .spawn(run(ctx.clone(), channel.clone(), fan.clone()));
                fan
            })
            .clone();
        {
            let mut members = lock(&fan.outlets);
            match &member {
                Member::Socket(o) => members.sockets.push(o.clone()),
                Member::Stream(o) => members.streams.push(o.clone()),
            }
            members.snapshot = None;
        }
        drop(map);
        Membership {
            fanouts: self.clone(),
            channel: fan.name.clone(),
            shard,
            fan,
            member,
        }
    }

    fn leave(&self, key: &(ChannelName, usize), fan: &Arc<ChannelFanout>, member: &Member) {
        let mut map = lock(&self.map);
        let empty = {
            let mut members = lock(&fan.outlets);
            match member {
                Member::Socket(m) => remove(&mut members.sockets, m),
                Member::Stream(m) => remove(&mut members.streams, m),
            }
            members.snapshot = None;
            members.sockets.is_empty() && members.streams.is_empty()
        };
        if empty && map.get(key).is_some_and(|f| Arc::ptr_eq(f, fan)) {
            map.remove(key);
            fan.stop.cancel();
        }
    }

    /// Running fan-outs (for tests and diagnostics).
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no fan-out is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ChannelFanout {
    /// Whether a subscription that has everything up to `cursor` may be lent
    /// to this fan-out. Call with the outlet's lock held (see the module
    /// docs).
    pub(crate) fn accepts(&self, cursor: u64) -> bool {
        let pos = self.pos.load(Ordering::SeqCst);
        pos != NOT_READY && cursor >= pos
    }

    fn members(&self) -> Arc<Snapshot> {
        let mut members = lock(&self.outlets);
        let Members {
            sockets,
            streams,
            snapshot,
        } = &mut *members;
        snapshot
            .get_or_insert_with(|| {
                Arc::new(Snapshot {
                    sockets: sockets.as_slice().into(),
                    streams: streams.as_slice().into(),
                })
            })
            .clone()
    }
}

/// Follows `channel` until stopped, offering every batch to the outlets.
async fn run(ctx: Ctx, channel: ChannelName, fan: Arc<ChannelFanout>) {
    let mut batch = Batch::default();
    let live = Position::default();
    loop {
        let sub = tokio::select! {
            () = fan.stop.cancelled() => return,
            s = ctx.hub.subscribe(&channel, &live) => s,
        };
        match sub {
            Ok(mut sub) => {
                fan.pos.store(sub.cursor(), Ordering::SeqCst);
                let mut writer = Writer::new(ctx.cfg.ws_fanout);
                if relay(&fan, &channel, &mut sub, &mut batch, &mut writer)
                    .await
                    .is_none()
                {
                    return;
                }
                debug!(%channel, "fan-out fell behind or was interrupted; following again");
            }
            Err(e) => {
                debug!(%channel, error = %e, "fan-out cannot follow the channel yet");
                tokio::select! {
                    () = fan.stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// Offers batches until the subscription lags (`Some`) or the fan-out stops
/// (`None`). After a lag every lease on the channel is ended.
async fn relay(
    fan: &ChannelFanout,
    channel: &ChannelName,
    sub: &mut Subscription,
    batch: &mut Batch,
    writer: &mut Writer,
) -> Option<()> {
    let mut lines = Vec::new();
    loop {
        let first = tokio::select! {
            () = fan.stop.cancelled() => return None,
            ev = sub.next() => ev,
        };
        batch.clear(fan.pos.load(Ordering::SeqCst));
        let mut next = Some(first);
        let mut lagged = false;
        while let Some(ev) = next.take() {
            match ev {
                Event::Message(m) => batch.push(&m),
                // A live subscription is never truncated, and the hub's
                // subscriptions carry no presence (sessions add it).
                Event::Truncated(_) | Event::Presence(_) => {}
                Event::Lagged { .. } => {
                    lagged = true;
                    break;
                }
            }
            if !batch.is_full() {
                next = sub.try_next();
            }
        }
        if !batch.is_empty() {
            fan.pos.store(batch.last(), Ordering::SeqCst);
            let members = fan.members();
            writer.offer(&members.sockets, channel, batch);
            for stream in &members.streams {
                stream.offer(channel, batch, &mut lines);
            }
        }
        if lagged {
            fan.pos.store(NOT_READY, Ordering::SeqCst);
            let members = fan.members();
            for outlet in &members.sockets {
                outlet.hand_back(channel);
            }
            for stream in &members.streams {
                stream.hand_back(channel);
            }
            return Some(());
        }
    }
}

/// Consecutive messages of one channel, each framed as a WebSocket text
/// frame, back to back.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The offset before the first frame.
    prev: u64,
    bytes: BytesMut,
    /// Each frame's offset and where it starts in `bytes`.
    index: Vec<(u64, usize)>,
    /// The same messages as WebTransport lines (shared, not copied).
    lines: Vec<Bytes>,
}

impl Batch {
    fn clear(&mut self, prev: u64) {
        self.prev = prev;
        self.bytes.clear();
        self.index.clear();
        self.lines.clear();
    }

    fn push(&mut self, m: &Message) {
        self.lines.push(m.op_line().clone());
        let payload = m.op_frame();
        self.index.push((m.offset(), self.bytes.len()));
        // FIN + text; server frames are not masked (RFC 6455 5.1).
        self.bytes.extend_from_slice(&[0x81]);
        match payload.len() {
            n @ 0..=125 => self.bytes.extend_from_slice(&[n as u8]),
            n @ 126..=0xffff => {
                self.bytes.extend_from_slice(&[126]);
                self.bytes.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.bytes.extend_from_slice(&[127]);
                self.bytes.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.bytes.extend_from_slice(&payload);
    }

    fn is_full(&self) -> bool {
        self.index.len() >= BATCH_FRAMES || self.bytes.len() >= BATCH_BYTES
    }

    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The offset before the first frame.
    pub(crate) fn prev(&self) -> u64 {
        self.prev
    }

    /// The offset of the last frame.
    pub(crate) fn last(&self) -> u64 {
        self.index.last().map_or(self.prev, |&(o, _)| o)
    }

    /// The lines of the messages after offset `cursor`.
    pub(crate) fn lines_after(&self, cursor: u64) -> &[Bytes] {
        let i = self.index.partition_point(|&(o, _)| o <= cursor);
        &self.lines[i.min(self.lines.len())..]
    }

    /// Every frame of the batch, back to back.
    pub(crate) fn frames(&self) -> &[u8] {
        &self.bytes
    }

    /// The frames after offset `cursor` and how many there are.
    pub(crate) fn after(&self, cursor: u64) -> (&[u8], usize) {
        let i = self.index.partition_point(|&(o, _)| o <= cursor);
        match self.index.get(i) {
            Some(&(_, start)) => (&self.bytes[start..], self.index.len() - i),
            None => (&[], 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Data;

    fn msg(offset: u64, len: usize) -> Message {
        let json = serde_json::to_string(&"x".repeat(len)).unwrap();
        let data = Data::parse(json.as_bytes(), 1 << 20).unwrap();
        Message::new(
            ChannelName::parse("c").unwrap(),
            crate::hub::Epoch::new("e"),
            offset,
            0,
            &data,
        )
    }

    #[test]
    fn frames_carry_the_rfc_6455_length_forms() {
        let mut b = Batch::default();
        b.clear(4);
        for (offset, len) in [(5, 10), (6, 200), (7, 70_000)] {
            b.push(&msg(offset, len));
        }
        let (all, n) = b.after(4);
        assert_eq!(n, 3);
        let mut rest = all;
        for (offset, len) in [(5u64, 10usize), (6, 200), (7, 70_000)] {
            let payload = msg(offset, len).op_frame();
            assert_eq!(rest[0], 0x81);
            let (plen, head) = match rest[1] {
                126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            assert_eq!(plen, payload.len());
            assert_eq!(&rest[head..head + plen], &payload[..]);
            rest = &rest[head + plen..];
        }
        assert!(rest.is_empty());
        assert_eq!((b.prev(), b.last()), (4, 7));
        let (tail, n) = b.after(6);
        assert_eq!(n, 1);
        assert_eq!(tail.len(), 10 + msg(7, 70_000).op_frame().len());
        assert_eq!(b.after(7).1, 0);
    }
}
