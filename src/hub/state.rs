//! Shared per-channel state ([`Channel`]), the reader count that keeps a
//! channel from eviction ([`ReaderGuard`]), and the hub's channel map
//! operations. Split from `mod.rs` to keep each file on one topic.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use super::{ChannelLog, ChannelName, Commit, Epoch, Inner, now_ms};
use crate::protocol::Message;

/// Shared state of one channel.
#[derive(Debug)]
pub(super) struct Channel {
    pub(super) log: RwLock<ChannelLog>,
    /// Carries the head offset; its only job is waking readers, who then
    /// read the log itself (the log, not this value, is the truth).
    pub(super) head_tx: watch::Sender<u64>,
    /// Live subscriptions and waiting long polls; a channel is evicted only
    /// at zero.
    pub(super) readers: AtomicUsize,
    /// Unix ms of the last publish or the last reader leaving.
    pub(super) last_active: AtomicU64,
    /// Bumped when the backend lost contact (Redis down): subscriptions
    /// that started before are ended with `lagged` so their clients learn
    /// delivery was interrupted and resume from their last offset.
    pub(super) interrupts: AtomicU64,
}

impl Channel {
    pub(super) fn new(log: ChannelLog) -> Self {
        let head = log.head();
        Self {
            log: RwLock::new(log),
            head_tx: watch::Sender::new(head),
            readers: AtomicUsize::new(0),
            last_active: AtomicU64::new(now_ms()),
            interrupts: AtomicU64::new(0),
        }
    }

    /// Wakes readers after the head moved to `head`.
    pub(super) fn notify(&self, head: u64) {
        self.last_active.fetch_max(now_ms(), Ordering::Relaxed);
        self.head_tx.send_modify(|h| *h = (*h).max(head));
    }

    /// Makes a numbered message visible (in offset order) and wakes readers.
    pub(super) fn commit(&self, msg: Arc<Message>) -> Commit {
        let (outcome, head) = {
            let mut log = self.write();
            let outcome = log.commit(msg);
            (outcome, log.head())
        };
        if outcome == Commit::Applied {
            self.notify(head);
        }
        outcome
    }

    /// Ends current subscriptions with `lagged` (see `interrupts`).
    pub(super) fn interrupt(&self) {
        self.interrupts.fetch_add(1, Ordering::AcqRel);
        self.head_tx.send_modify(|_| {});
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, ChannelLog> {
        // A panic while holding the lock cannot leave the ring inconsistent
        // (every mutation is a single push/pop), so poisoning is ignored.
        self.log.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, ChannelLog> {
        self.log.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts a reader of a channel for as long as it lives.
#[derive(Debug)]
pub(super) struct ReaderGuard(pub(super) Arc<Channel>);

impl ReaderGuard {
    /// Registers a reader. Called with the channel's log lock held, so the
    /// eviction sweep (which takes the write lock) cannot interleave.
    pub(super) fn new(channel: Arc<Channel>) -> Self {
        channel.readers.fetch_add(1, Ordering::AcqRel);
        Self(channel)
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.last_active.fetch_max(now_ms(), Ordering::Relaxed);
        self.0.readers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    pub(super) fn map(&self) -> RwLockReadGuard<'_, HashMap<ChannelName, Arc<Channel>>> {
        self.channels.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn map_mut(&self) -> RwLockWriteGuard<'_, HashMap<ChannelName, Arc<Channel>>> {
        self.channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A new epoch, different from every other this process or (with
    /// overwhelming likelihood) any other node hands out.
    pub(super) fn new_epoch(&self) -> Epoch {
        let mut h = self.epoch_keys.build_hasher();
        h.write_u64(self.epoch_counter.fetch_add(1, Ordering::Relaxed));
        h.write_u64(now_ms());
        Epoch::new(&format!("{:012x}", h.finish() & 0xffff_ffff_ffff))
    }

    /// The cached channel of that name, if any.
    pub(super) fn lookup(&self, name: &ChannelName) -> Option<Arc<Channel>> {
        self.map().get(name).cloned()
    }

    /// Every cached channel.
    pub(super) fn cached(&self) -> Vec<Arc<Channel>> {
        self.map().values().cloned().collect()
    }

    /// Drops a channel from the cache at once, readers or not, telling its
    /// subscribers (used when the backend says its numbering restarted).
    pub(super) fn discard(&self, name: &ChannelName, ch: &Arc<Channel>) {
        let mut map = self.map_mut();
        if map.get(name).is_some_and(|c| Arc::ptr_eq(c, ch)) {
            map.remove(name);
        }
        drop(map);
        ch.write().mark_evicted();
        ch.interrupt();
    }
}
