//! Idempotent publish: an [`IdempotencyKey`] a client sends with a publish,
//! and the node-local table of recent keys (`Recent`) that the memory and
//! durable backends answer retries from. (The Redis backend keeps its keys
//! in Redis, next to the channel, so every node sees them.)
//!
//! A publish that timed out may still have happened; a retry with the same
//! key then gets the original `{epoch, offset}` and appends nothing. Keys
//! are scoped to their channel and remembered for [`WINDOW`], and at most
//! [`LIMIT`] at once per node: when full, the oldest is forgotten first, so
//! under a flood of keyed publishes the window shortens rather than memory
//! growing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{ChannelName, IdempotencyKey, Published};

/// How long a key is remembered after its first use.
pub const WINDOW: Duration = Duration::from_secs(300);

/// Most keys a node remembers at once under the memory and durable
/// backends; the oldest is forgotten first when full. (Redis keeps its own
/// per-channel limit.)
pub const LIMIT: usize = 100_000;

/// The outcome of a keyed publish, shared by the first attempt and every
/// retry: a retry arriving while the first is still in flight waits for it
/// rather than appending again; if the first fails, the next one tries.
pub(super) type Slot = Arc<OnceCell<Published>>;

type Id = (ChannelName, IdempotencyKey);

/// Recently used keys of this node, oldest first.
#[derive(Debug)]
pub(super) struct Recent {
    window: Duration,
    limit: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    slots: HashMap<Id, Slot>,
    /// Insertion order, which is also expiry order.
    order: VecDeque<(Instant, Id)>,
}

impl Recent {
    pub(super) fn new(window: Duration, limit: usize) -> Self {
        Self {
            window,
            limit: limit.max(1),
            table: Mutex::default(),
        }
    }

    /// The slot of `key` on `channel`, created if new or expired.
    pub(super) fn slot(&self, channel: &ChannelName, key: &IdempotencyKey) -> Slot {
        let now = Instant::now();
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget what has expired or overflows the limit, oldest first.
        while let Some((at, _)) = t.order.front() {
            if now.duration_since(*at) < self.window && t.order.len() < self.limit {
                break;
            }
            if let Some((_, id)) = t.order.pop_front() {
                t.slots.remove(&id);
            }
        }
        let id = (channel.clone(), key.clone());
        if let Some(slot) = t.slots.get(&id) {
            return slot.clone();
        }
        let slot = Slot::default();
        t.slots.insert(id.clone(), slot.clone());
        t.order.push_back((now, id));
        slot
    }

    /// Keys remembered right now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slots
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_expire_after_the_window_and_the_oldest_go_first_when_full() {
        let recent = Recent::new(Duration::from_secs(10), 3);
        let c = ChannelName::parse("c").unwrap();
        let k = |s: &str| IdempotencyKey::parse(s).unwrap();
        let a = recent.slot(&c, &k("a"));
        assert!(
            Arc::ptr_eq(&a, &recent.slot(&c, &k("a"))),
            "same key, same slot"
        );
        let other = ChannelName::parse("d").unwrap();
        assert!(
            !Arc::ptr_eq(&a, &recent.slot(&other, &k("a"))),
            "keys are per channel"
        );
        recent.slot(&c, &k("b"));
        recent.slot(&c, &k("c"));
        assert_eq!(recent.len(), 3, "at the limit");
        assert!(
            !Arc::ptr_eq(&a, &recent.slot(&c, &k("a"))),
            "the oldest was forgotten"
        );
        assert_eq!(recent.len(), 3);
        tokio::time::advance(Duration::from_secs(11)).await;
        recent.slot(&c, &k("z"));
        assert_eq!(recent.len(), 1, "everything older than the window is gone");
    }
}
