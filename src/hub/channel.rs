//! Sans-IO channel log: a bounded ring of messages numbered 1, 2, 3, …
//!
//! [`ChannelLog`] does no I/O and reads no clock: the caller passes `now`.
//! It decides where a reader starts ([`ChannelLog::start`]), what a reader
//! gets next ([`ChannelLog::read_after`]) and when a reader has fallen out of
//! the retained window. The async layer in `hub/mod.rs` only adds locking and
//! wake-ups around it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::name::{ChannelName, Epoch, Position};
use crate::protocol::{Data, Message};

/// The reader asked for messages that are no longer retained, or its epoch is
/// stale: it continues from `oldest` in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The oldest offset still retained (head + 1 when nothing is retained).
    pub oldest: u64,
    /// The channel's current epoch.
    pub epoch: Epoch,
}

/// Where a reader starts: its cursor (the last offset it has, or is treated
/// as having) and whether it must be told of a gap first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// Deliver offsets greater than this.
    pub cursor: u64,
    /// Set when the reader's position could not be honoured exactly.
    pub truncated: Option<Truncation>,
}

/// What a read after a cursor found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Messages were appended to the output (possibly none).
    Read(usize),
    /// The cursor is older than the retained window: the reader missed
    /// messages it had not yet been given.
    Behind,
}

/// What [`ChannelLog::commit`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// It (and any stashed successors) joined the ring.
    Applied,
    /// Its offset is at or below the head: already delivered, ignored.
    Duplicate,
    /// Offsets `from..=to` are missing before it; it waits in the stash
    /// until they are committed.
    Gap {
        /// First missing offset.
        from: u64,
        /// Last missing offset.
        to: u64,
    },
}

/// One channel's retained history and numbering.
///
/// Offsets are assigned in two steps so that a backend can make a message
/// durable between them: [`ChannelLog::reserve`] numbers it,
/// [`ChannelLog::commit`] makes it visible to readers, strictly in offset
/// order (a message committed early waits in a small stash). The memory
/// backend does both at once ([`ChannelLog::append`]).
#[derive(Debug)]
pub struct ChannelLog {
    name: ChannelName,
    epoch: Epoch,
    messages: VecDeque<Arc<Message>>,
    capacity: usize,
    /// Offset of the newest message readers can see.
    head: u64,
    /// Offset of the newest message numbered (≥ `head` while commits are
    /// in flight).
    reserved: u64,
    /// Messages committed ahead of a missing offset; empty in steady state.
    stash: BTreeMap<u64, Arc<Message>>,
    /// Set once the channel has been removed from the hub; writers that raced
    /// the eviction must look the channel up again.
    evicted: bool,
}

impl ChannelLog {
    /// An empty channel retaining at most `capacity` (≥ 1) messages.
    pub fn new(name: ChannelName, epoch: Epoch, capacity: usize) -> Self {
        Self {
            name,
            epoch,
            messages: VecDeque::with_capacity(capacity.clamp(1, 64)),
            capacity: capacity.max(1),
            head: 0,
            reserved: 0,
            stash: BTreeMap::new(),
            evicted: false,
        }
    }

    /// A channel restored from a backend: `messages` are the retained tail
    /// of its history, contiguous and ending at `head` (older ones beyond
    /// `capacity` are dropped).
    pub fn restore(
        name: ChannelName,
        epoch: Epoch,
        capacity: usize,
        head: u64,
        messages: impl IntoIterator<Item = Arc<Message>>,
    ) -> Self {
        let mut log = Self::new(name, epoch, capacity);
        log.head = head;
        log.reserved = head;
        let first = messages.into_iter().collect::<Vec<_>>();
        let keep = first.len().min(log.capacity);
        let tail = &first[first.len() - keep..];
        debug_assert!(
            tail.iter()
                .enumerate()
                .all(|(i, m)| m.offset() + (keep - i) as u64 == head + 1),
            "restored history must be contiguous and end at the head"
        );
        log.messages.extend(tail.iter().cloned());
        log
    }

    /// The channel's name.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// The current epoch.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Offset of the newest message (0 when none was ever published).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Offset of the oldest retained message; `head + 1` when none is retained.
    pub fn oldest(&self) -> u64 {
        self.head + 1 - self.messages.len() as u64
    }

    /// Appends a message with the next offset and returns it.
    pub fn append(&mut self, data: &Data, now: u64) -> Arc<Message> {
        let msg = self.reserve(data, now);
        self.push(msg.clone());
        msg
    }

    /// Numbers a message without making it visible; it must be passed to
    /// [`Self::commit`] once the backend has made it durable.
    pub fn reserve(&mut self, data: &Data, now: u64) -> Arc<Message> {
        self.reserved = self.reserved.max(self.head) + 1;
        Arc::new(Message::new(
            self.name.clone(),
            self.epoch.clone(),
            self.reserved,
            now,
            data,
        ))
    }

    /// Makes a numbered message visible to readers, in offset order: one
    /// that arrives ahead of a missing offset waits until the gap is filled.
    pub fn commit(&mut self, msg: Arc<Message>) -> Commit {
        let offset = msg.offset();
        if offset <= self.head {
            return Commit::Duplicate;
        }
        if offset > self.head + 1 {
            let from = self.head + 1;
            self.stash.insert(offset, msg);
            return Commit::Gap {
                from,
                to: offset - 1,
            };
        }
        self.push(msg);
        while let Some(next) = self.stash.remove(&(self.head + 1)) {
            self.push(next);
        }
        Commit::Applied
    }

    /// Messages numbered or stashed but not yet visible.
    pub fn pending(&self) -> u64 {
        self.reserved.saturating_sub(self.head) + self.stash.len() as u64
    }

    fn push(&mut self, msg: Arc<Message>) {
        self.head = msg.offset();
        if self.messages.len() == self.capacity {
            self.messages.pop_front();
        }
        self.messages.push_back(msg);
    }

    /// Resolves a client's position into a cursor.
    ///
    /// A stale epoch, an offset older than the retained window, or an offset
    /// beyond the head (a position from a previous life of the channel) all
    /// start from the oldest retained message and report a [`Truncation`],
    /// so the client is never silently skipped forward.
    pub fn start(&self, pos: &Position) -> Start {
        let Some(since) = pos.since else {
            return Start {
                cursor: self.head,
                truncated: None,
            };
        };
        let stale_epoch = pos
            .epoch
            .as_deref()
            .is_some_and(|e| e != self.epoch.as_str());
        let oldest = self.oldest();
        if stale_epoch || since + 1 < oldest || since > self.head {
            Start {
                cursor: oldest - 1,
                truncated: Some(self.truncation()),
            }
        } else {
            Start {
                cursor: since,
                truncated: None,
            }
        }
    }

    /// The truncation notice for this channel as it is now.
    pub fn truncation(&self) -> Truncation {
        Truncation {
            oldest: self.oldest(),
            epoch: self.epoch.clone(),
        }
    }

    /// Appends up to `limit` messages with offset > `cursor` to `out`.
    pub fn read_after(
        &self,
        cursor: u64,
        limit: usize,
        out: &mut impl Extend<Arc<Message>>,
    ) -> ReadOutcome {
        let oldest = self.oldest();
        if cursor + 1 < oldest {
            return ReadOutcome::Behind;
        }
        if cursor >= self.head {
            return ReadOutcome::Read(0);
        }
        let skip = (cursor + 1 - oldest) as usize;
        let n = (self.head - cursor).min(limit as u64) as usize;
        out.extend(self.messages.range(skip..skip + n).cloned());
        ReadOutcome::Read(n)
    }

    /// Whether the channel has been removed from the hub.
    pub fn is_evicted(&self) -> bool {
        self.evicted
    }

    /// Marks the channel removed; later writers must look it up again.
    pub fn mark_evicted(&mut self) {
        self.evicted = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(cap: usize) -> ChannelLog {
        ChannelLog::new(ChannelName::parse("c").unwrap(), Epoch::new("e"), cap)
    }

    fn publish(l: &mut ChannelLog, n: u64) {
        for i in 0..n {
            l.append(&Data::parse(i.to_string().as_bytes(), 64).unwrap(), i);
        }
    }

    fn offsets(l: &ChannelLog, cursor: u64, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        assert_eq!(
            l.read_after(cursor, limit, &mut out),
            ReadOutcome::Read(out.len())
        );
        out.iter().map(|m| m.offset()).collect()
    }

    #[test]
    fn offsets_start_at_one_and_history_is_bounded() {
        let mut l = log(3);
        assert_eq!((l.head(), l.oldest()), (0, 1));
        publish(&mut l, 5);
        assert_eq!((l.head(), l.oldest()), (5, 3));
        assert_eq!(offsets(&l, 2, 10), vec![3, 4, 5]);
        assert_eq!(offsets(&l, 3, 1), vec![4]);
        assert_eq!(offsets(&l, 5, 10), Vec::<u64>::new());
        assert_eq!(l.read_after(1, 10, &mut Vec::new()), ReadOutcome::Behind);
    }

    #[test]
    fn start_positions() {
        let mut l = log(3);
        publish(&mut l, 5);
        let start = |since, epoch: Option<&str>| {
            l.start(&Position {
                since,
                epoch: epoch.map(str::to_owned),
            })
        };
        // Live: from the head, no history.
        assert_eq!(
            start(None, None),
            Start {
                cursor: 5,
                truncated: None
            }
        );
        // Within the window, with or without the right epoch.
        assert_eq!(start(Some(2), None).cursor, 2);
        assert_eq!(
            start(Some(4), Some("e")),
            Start {
                cursor: 4,
                truncated: None
            }
        );
        let trunc = Some(Truncation {
            oldest: 3,
            epoch: Epoch::new("e"),
        });
        // Older than the window, a stale epoch, or ahead of the head.
        assert_eq!(
            start(Some(0), None),
            Start {
                cursor: 2,
                truncated: trunc.clone()
            }
        );
        assert_eq!(
            start(Some(4), Some("old")),
            Start {
                cursor: 2,
                truncated: trunc.clone()
            }
        );
        assert_eq!(
            start(Some(9), None),
            Start {
                cursor: 2,
                truncated: trunc
            }
        );
    }

    #[test]
    fn commits_become_visible_in_offset_order() {
        let mut l = log(10);
        let d = Data::parse(b"1", 64).unwrap();
        let (a, b, c) = (l.reserve(&d, 0), l.reserve(&d, 0), l.reserve(&d, 0));
        assert_eq!((l.head(), l.pending()), (0, 3));
        assert_eq!(l.commit(c), Commit::Gap { from: 1, to: 2 });
        assert_eq!(l.commit(a.clone()), Commit::Applied);
        assert_eq!(l.head(), 1, "3 still waits for 2");
        assert_eq!(l.commit(b), Commit::Applied);
        assert_eq!((l.head(), l.pending()), (3, 0));
        assert_eq!(l.commit(a), Commit::Duplicate);
        assert_eq!(offsets(&l, 0, 10), vec![1, 2, 3]);
    }

    #[test]
    fn restore_continues_the_numbering() {
        let mut old = log(3);
        publish(&mut old, 5);
        let mut kept = Vec::new();
        old.read_after(2, 10, &mut kept);
        let mut l = ChannelLog::restore(
            ChannelName::parse("c").unwrap(),
            Epoch::new("e"),
            2,
            5,
            kept,
        );
        assert_eq!((l.head(), l.oldest()), (5, 4));
        assert_eq!(l.append(&Data::parse(b"1", 64).unwrap(), 0).offset(), 6);
        assert_eq!(offsets(&l, 4, 10), vec![5, 6]);
    }

    #[test]
    fn since_zero_on_a_fresh_channel_is_not_a_gap() {
        let mut l = log(3);
        assert_eq!(l.start(&Position::since(0)).truncated, None);
        publish(&mut l, 3);
        assert_eq!(
            l.start(&Position::since(0)),
            Start {
                cursor: 0,
                truncated: None
            }
        );
    }
}
