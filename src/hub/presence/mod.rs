//! Presence: who is in a channel now. [`Presence`] is the async handle the
//! adapters use; the bookkeeping itself is the sans-IO [`Registry`], and
//! with Redis the members of every node are shared through
//! Redis hashes (the private `redis` module).
//!
//! A member joins when it subscribes with an identity and is held by that
//! subscription ([`Held`]: dropping it leaves), or — for polls, which hold
//! nothing between requests — by a lease each poll renews
//! ([`Presence::touch`]). Joins and leaves go to watchers of the channel
//! ([`Presence::watch`]) as events of their own, never as messages, so
//! they take no offset. Entry point: [`Presence::run`], the task that ends
//! lapsed leases and, with Redis, keeps this node's members alive there.

mod member;
mod redis;
mod registry;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use member::{ClientId, Info, MAX_CLIENT_ID, Member, PresenceError, members_json};
pub use registry::{Change, RECENT, Registry, Since};

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
    watchers: Mutex<HashMap<ChannelName, broadcast::Sender<Change>>>,
    store: Option<RedisPresence>,
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
            self.presence.left(&self.channel, change);
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

    fn emit(&self, channel: &ChannelName, change: Change) {
        let mut w = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = w.get(channel)
            && tx.send(change).is_err()
        {
            // Nobody watches any more.
            w.remove(channel);
        }
    }
}

/// Versions start above every version of an earlier run (see
/// [`Registry::new`]): the start time in µs.
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
                registry: Mutex::new(Registry::new(cfg.max_members, first_version())),
                watchers: Mutex::new(HashMap::new()),
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
        self.admit(channel, &id, &info).await?;
        let mut reg = self.inner.registry();
        if let Some(change) = reg.hold(channel, &id, &info)? {
            self.inner.emit(channel, change);
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
        let until = now_ms() + self.inner.cfg.lapse.as_millis() as u64;
        if !self.inner.registry().contains(channel, id) {
            self.admit(channel, id, info).await?;
        }
        let mut reg = self.inner.registry();
        if let Some(change) = reg.lease(channel, id, info, until)? {
            self.inner.emit(channel, change);
        }
        Ok(())
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

    /// Tells watchers a member left, and Redis too.
    fn left(&self, channel: &ChannelName, change: Change) {
        if self.inner.store.is_some()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (this, channel, id) = (self.clone(), channel.clone(), change.member().id.clone());
            rt.spawn(async move {
                if let Some(store) = &this.inner.store
                    && let Err(e) = store.leave(&channel, &id).await
                {
                    // It expires there after the lapse anyway.
                    tracing::debug!(error = %e, "presence leave not written to redis");
                }
            });
        }
        self.inner.emit(channel, change);
    }

    /// The members of `channel`: on every node with Redis, else this one.
    pub async fn members(&self, channel: &ChannelName) -> Result<Vec<Member>, PresenceError> {
        match &self.inner.store {
            Some(store) => store.members(channel).await,
            None => Ok(self.inner.registry().members(channel)),
        }
    }

    /// The changes on this node since `after` (a poller's last version), or
    /// a snapshot; and the version to ask from next.
    pub fn since(&self, channel: &ChannelName, after: Option<u64>) -> (Since, u64) {
        let reg = self.inner.registry();
        let since = match after {
            Some(v) => reg.since(channel, v),
            None => Since::Snapshot(reg.members(channel)),
        };
        (since, reg.version(channel))
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
        let mut w = self
            .inner
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rx = w
            .entry(channel.clone())
            .or_insert_with(|| broadcast::channel(WATCH_CAPACITY).0)
            .subscribe();
        (rx, members)
    }

    /// Whether members are shared with other nodes (Redis).
    pub fn is_shared(&self) -> bool {
        self.inner.store.is_some()
    }

    /// Ends the leases that ran out by `now`, telling watchers.
    pub fn expire(&self, now: u64) -> usize {
        let mut reg = self.inner.registry();
        let lapsed = reg.expire(now);
        let n = lapsed.len();
        for (channel, change) in lapsed {
            self.left(&channel, change);
        }
        drop(reg);
        // Channels whose watchers have all gone without an event since.
        self.inner
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, tx| tx.receiver_count() > 0);
        n
    }

    /// Ends lapsed leases and, with Redis, rewrites this node's members
    /// there every third of the lapse, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let period = (self.inner.cfg.lapse / 3).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.expire(now_ms());
            if let Some(store) = &self.inner.store {
                let mut by_channel: BTreeMap<ChannelName, Vec<Member>> = BTreeMap::new();
                for (ch, m) in self.inner.registry().all() {
                    by_channel.entry(ch).or_default().push(m);
                }
                for (ch, members) in by_channel {
                    let refreshed = tokio::select! {
                        () = stop.cancelled() => return,
                        r = store.refresh(&ch, &members) => r,
                    };
                    if let Err(e) = refreshed {
                        tracing::warn!(channel = %ch, error = %e, "presence not refreshed in redis");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[tokio::test]
    async fn holds_join_and_leave_and_watchers_hear_it() {
        let p = Presence::new(PresenceConfig::default());
        let a = ch("room");
        let mut events = p.watch(&a);
        let held = p
            .hold(
                &a,
                ClientId::parse("ann").unwrap(),
                p.parse_info(r#"{"n":1}"#).unwrap(),
            )
            .await
            .unwrap();
        let second = p
            .hold(&a, ClientId::parse("ann").unwrap(), Info::empty())
            .await
            .unwrap();
        assert_eq!(p.members(&a).await.unwrap().len(), 1);
        assert_eq!(events.try_recv().unwrap().kind(), "join");
        drop(held);
        assert!(events.try_recv().is_err(), "a second tab still holds ann");
        drop(second);
        assert_eq!(events.try_recv().unwrap().kind(), "leave");
        assert!(p.members(&a).await.unwrap().is_empty());
        // A watcher that went away leaves nothing behind after a sweep.
        drop(events);
        p.expire(now_ms());
        assert!(p.inner.watchers.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_poll_lease_lapses_on_the_sweep() {
        let p = Presence::new(PresenceConfig {
            lapse: Duration::from_secs(5),
            ..PresenceConfig::default()
        });
        let a = ch("room");
        let pat = ClientId::parse("pat").unwrap();
        p.touch(&a, &pat, &Info::empty()).await.unwrap();
        let (since, v) = p.since(&a, None);
        assert!(matches!(since, Since::Snapshot(m) if m.len() == 1));
        assert_eq!(p.expire(now_ms()), 0);
        assert_eq!(p.expire(now_ms() + 5_001), 1);
        let (since, _) = p.since(&a, Some(v));
        assert!(matches!(since, Since::Snapshot(m) if m.is_empty()));
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_with_the_limit() {
        let p = Presence::new(PresenceConfig {
            max_members: 1,
            ..PresenceConfig::default()
        });
        let a = ch("room");
        let _x = p
            .hold(&a, ClientId::parse("x").unwrap(), Info::empty())
            .await
            .unwrap();
        let e = p
            .hold(&a, ClientId::parse("y").unwrap(), Info::empty())
            .await
            .unwrap_err();
        assert_eq!(e, PresenceError::Full(1));
        assert!(
            p.parse_info(&format!(r#"{{"a":"{}"}}"#, "x".repeat(600)))
                .is_err()
        );
    }
}
