//! Presence: who is in a channel now. [`Presence`] is the async handle the
//! adapters use; the bookkeeping itself is sans-IO: the [`Registry`] of
//! this node's members and the [`Feed`] of joins and leaves told. With
//! Redis the members of every node, and their joins and leaves, are shared
//! (the private `redis` module).
//!
//! A member joins when it subscribes with an identity and is held by that
//! subscription ([`Held`]: dropping it leaves), or — for polls, which hold
//! nothing between requests — by a lease each poll renews
//! ([`Presence::touch`]). Joins and leaves go to watchers of the channel
//! ([`Presence::watch`]) and pollers ([`Presence::since`]) as events of
//! their own, never as messages, so they take no offset. On one node the
//! registry's changes are told at once; with Redis every change is told by
//! Redis, to every node alike, so an id held on two nodes joins and leaves
//! once. Entry point: [`Presence::run`] (in `sweep`), the task that ends
//! lapsed leases and, with Redis, keeps this node's members alive there
//! and hears the other nodes.

mod feed;
mod member;
mod redis;
mod registry;
mod shared;
mod sweep;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;

pub use feed::{Feed, RECENT, Since};
pub use member::{ClientId, Info, MAX_CLIENT_ID, Member, PresenceError, members_json};
pub use registry::{Change, Registry};

use self::redis::RedisPresence;
use super::{ChannelName, now_ms};

/// Presence settings.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Most members per channel (`--max-presence`).
    pub max_members: usize,
    /// Largest `info`, compact JSON bytes (`--max-presence-info`).
    pub max_info_bytes: usize,
    /// How long a poller stays present after its last poll, and how long a
    /// node's members outlive it in Redis (`--presence-lapse`).
    pub lapse: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            max_members: 1000,
            max_info_bytes: 512,
            lapse: Duration::from_secs(30),
        }
    }
}

/// Join and leave events buffered per watcher; one that falls further
/// behind is told so and sent a fresh snapshot instead.
const WATCH_CAPACITY: usize = 64;

/// The presence of every channel. Cloning is shallow.
#[derive(Debug, Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: PresenceConfig,
    registry: Mutex<Registry>,
    /// Taken after `registry` when both are needed.
    told: Mutex<Told>,
    store: Option<RedisPresence>,
}

/// Where changes are told: the feed for pollers, the senders for watchers.
#[derive(Debug)]
struct Told {
    feed: Feed,
    watchers: HashMap<ChannelName, broadcast::Sender<Change>>,
}

impl Told {
    fn watched(&self, channel: &ChannelName) -> bool {
        self.watchers
            .get(channel)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }
}

/// A member held by a live subscription; dropping it releases the hold.
#[derive(Debug)]
pub struct Held {
    presence: Presence,
    channel: ChannelName,
    id: ClientId,
}

impl Held {
    /// The member's id.
    pub fn id(&self) -> &ClientId {
        &self.id
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Told under the registry's lock, like every change, so a watcher's
        // snapshot and its events never overlap or miss one.
        let mut reg = self.presence.inner.registry();
        if let Some(change) = reg.release(&self.channel, &self.id, now_ms()) {
            self.presence.changed(&self.channel, change);
        }
    }
}

/// What a watcher of a channel's presence is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The whole member list: first, and again after falling behind.
    Snapshot(Vec<Member>),
    /// One join or leave.
    Change(Change),
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn told(&self) -> MutexGuard<'_, Told> {
        self.told.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells a change to the channel's pollers and watchers. On one node
    /// every channel's changes are kept for pollers; with Redis, which
    /// tells this node every channel's, only those of channels watched or
    /// polled here.
    fn tell(&self, channel: &ChannelName, change: Change) {
        let mut told = self.told();
        let keep = self.store.is_none() || told.watched(channel);
        told.feed.record(channel, change.clone(), keep, now_ms());
        if let Some(tx) = told.watchers.get(channel)
            && tx.send(change).is_err()
        {
            // Nobody watches any more.
            told.watchers.remove(channel);
        }
    }
}

/// Versions start above every version of an earlier run (see
/// [`Feed::new`]): the start time in µs.
fn first_version() -> u64 {
    now_ms().saturating_mul(1000)
}

impl Presence {
    /// Presence on this node alone.
    pub fn new(cfg: PresenceConfig) -> Self {
        Self::with_store(cfg, None)
    }

    /// Presence shared through the Redis at `url`.
    pub async fn shared(cfg: PresenceConfig, url: &str) -> Result<Self, PresenceError> {
        let node = format!(
            "{:016x}",
            first_version() ^ u64::from(std::process::id()) << 40
        );
        let store = RedisPresence::connect(url, cfg.lapse, node).await?;
        Ok(Self::with_store(cfg, Some(store)))
    }

    fn with_store(cfg: PresenceConfig, store: Option<RedisPresence>) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::new(cfg.max_members)),
                told: Mutex::new(Told {
                    feed: Feed::new(first_version()),
                    watchers: HashMap::new(),
                }),
                store,
                cfg,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PresenceConfig {
        &self.inner.cfg
    }

    /// Parses a client's `info` under the configured size limit.
    pub fn parse_info(&self, text: &str) -> Result<Info, PresenceError> {
        Info::parse(text, self.inner.cfg.max_info_bytes)
    }

    /// Joins `id` to `channel` for as long as the returned [`Held`] lives.
    pub async fn hold(
        &self,
        channel: &ChannelName,
        id: ClientId,
        info: Info,
    ) -> Result<Held, PresenceError> {
        let _turn = self.turn(channel, &id).await;
        self.admit(channel, &id, &info).await?;
        let mut reg = self.inner.registry();
        if let Some(change) = reg.hold(channel, &id, &info)? {
            self.changed(channel, change);
        }
        drop(reg);
        Ok(Held {
            presence: self.clone(),
            channel: channel.clone(),
            id,
        })
    }

    /// Keeps `id` present in `channel` for the lapse from now (a poll).
    pub async fn touch(
        &self,
        channel: &ChannelName,
        id: &ClientId,
        info: &Info,
    ) -> Result<(), PresenceError> {
        let _turn = self.turn(channel, id).await;
        let until = now_ms() + self.inner.cfg.lapse.as_millis() as u64;
        if !self.inner.registry().contains(channel, id) {
            self.admit(channel, id, info).await?;
        }
        let mut reg = self.inner.registry();
        if let Some(change) = reg.lease(channel, id, info, until)? {
            self.changed(channel, change);
        }
        Ok(())
    }

    /// With Redis: waits for `id`'s turn to write (see `redis`).
    async fn turn(
        &self,
        channel: &ChannelName,
        id: &ClientId,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.inner.store {
            Some(store) => Some(store.turn(channel, id).await),
            None => None,
        }
    }

    /// With Redis: claims the member's place among every node's members.
    async fn admit(
        &self,
        channel: &ChannelName,
        id: &ClientId,
        info: &Info,
    ) -> Result<(), PresenceError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let member = Member {
            id: id.clone(),
            info: info.clone(),
        };
        let max = self.inner.cfg.max_members;
        if store.join(channel, &member, max).await? {
            Ok(())
        } else {
            Err(PresenceError::Full(max))
        }
    }

    /// A change in this node's registry (called under its lock). Alone, it
    /// is told here and now. With Redis, a join was told by the write that
    /// admitted it, and a leave is written there to be told by Redis.
    fn changed(&self, channel: &ChannelName, change: Change) {
        match change {
            _ if self.inner.store.is_none() => self.inner.tell(channel, change),
            Change::Leave(member) => self.write_leave(channel.clone(), member),
            Change::Join(_) => {}
        }
    }

    /// The members of `channel`: on every node with Redis, else this one.
    pub async fn members(&self, channel: &ChannelName) -> Result<Vec<Member>, PresenceError> {
        match &self.inner.store {
            Some(store) => store.members(channel).await,
            None => Ok(self.inner.registry().members(channel)),
        }
    }

    /// The list a watcher that fell behind is sent: every node's with
    /// Redis (this node's if Redis cannot answer), else this node's.
    pub async fn resync(&self, channel: &ChannelName) -> Vec<Member> {
        let local = self.inner.registry().members(channel);
        // Boxed: the store's future is large and a resync is rare (a
        // watcher fell behind, a poller's changes were forgotten). Inline,
        // it would sit in every subscribed connection's task, idle or not.
        match Box::pin(self.members(channel)).await {
            Ok(all) => all,
            Err(_) => local,
        }
    }

    /// The changes since `after` (a poller's last version; `None` for
    /// none yet), or the member list; and the version to ask from next.
    pub async fn since(
        &self,
        channel: &ChannelName,
        after: Option<u64>,
    ) -> (Since<Vec<Member>>, u64) {
        let (since, version, local) = {
            let reg = self.inner.registry();
            let (since, version) = self.inner.told().feed.since(channel, after, now_ms());
            (since, version, reg.members(channel))
        };
        match since {
            Since::Changes(c) => (Since::Changes(c), version),
            Since::Snapshot(()) if self.is_shared() => {
                (Since::Snapshot(self.resync(channel).await), version)
            }
            Since::Snapshot(()) => (Since::Snapshot(local), version),
        }
    }

    /// Whether [`Self::since`] has something new for a poller at `after`
    /// (0: a poller asking for the list, which always has).
    pub fn has_news(&self, channel: &ChannelName, after: u64) -> bool {
        self.inner.told().feed.has_news(channel, after)
    }

    /// Join and leave events of `channel` from now on.
    pub fn watch(&self, channel: &ChannelName) -> broadcast::Receiver<Change> {
        self.watch_from(channel).0
    }

    /// This node's members of `channel` and the events after exactly that
    /// list. With Redis the first snapshot should come from
    /// [`Self::members`] instead, which sees every node.
    pub fn watch_from(&self, channel: &ChannelName) -> (broadcast::Receiver<Change>, Vec<Member>) {
        let reg = self.inner.registry();
        let members = reg.members(channel);
        let rx = self
            .inner
            .told()
            .watchers
            .entry(channel.clone())
            .or_insert_with(|| broadcast::channel(WATCH_CAPACITY).0)
            .subscribe();
        (rx, members)
    }

    /// Whether members are shared with other nodes (Redis).
    pub fn is_shared(&self) -> bool {
        self.inner.store.is_some()
    }
}
