//! The hub: every channel's log, publishing, and subscriptions.
//!
//! [`Hub`] is the async handle every transport adapter talks to. The log of
//! each channel is the pure [`ChannelLog`]; this layer adds the locking, the
//! wake-ups and the idle-channel eviction around it.
//!
//! # Delivery design
//!
//! A subscriber owns no queue. It keeps a cursor (the last offset it was
//! given) into its channel's retained history and, when woken, copies the
//! `Arc`s of the messages after its cursor out of the log. So:
//!
//! - replaying history and going live are the same operation, which closes
//!   the read-history-then-subscribe race by construction;
//! - a message is stored and encoded once however many subscribers read it;
//! - each subscriber's backlog is bounded by the channel's history
//!   (`--history`). When a message the subscriber has not yet read is
//!   evicted from history, the subscriber has *lagged*: it is told so with
//!   the last offset it received and dropped, and can resume with `since`.
//!
//! # Backends
//!
//! Where offsets come from and what survives a restart is the job of the
//! [`backend`]: memory (the default), an embedded durable file, or Redis
//! shared by several nodes. The ring above is the fan-out cache for all of
//! them, so subscribers read the same way whichever is configured.

pub mod backend;
mod channel;
pub mod idempotency;
pub mod presence;
mod state;
mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::name::{
    ChannelName, Epoch, IdempotencyKey, KeyError, MAX_CHANNEL_LEN, NameError, Position,
};
pub use backend::{BackendConfig, BackendError, Fsync};
pub use channel::{ChannelLog, Commit, ReadOutcome, Start, Truncation};
pub use presence::{Presence, PresenceConfig, PresenceEvent};
pub use subscription::{Event, Subscription};

use self::backend::{Appended, Backend};
use self::state::{Channel, ReaderGuard};
use crate::protocol::{Data, ErrorCode, Message, ProtocolError};

/// What the hub needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Messages retained per channel.
    pub history: usize,
    /// Most channels held at once.
    pub max_channels: usize,
    /// A channel with no subscriber and no publish for this long is evicted.
    pub idle_ttl: Duration,
    /// Where the logs live.
    pub backend: BackendConfig,
    /// Presence limits and lapse.
    pub presence: PresenceConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            history: 1000,
            max_channels: 100_000,
            idle_ttl: Duration::from_secs(300),
            backend: BackendConfig::Memory,
            presence: PresenceConfig::default(),
        }
    }
}

/// Why the hub refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// Creating the channel would exceed `max_channels`.
    #[error("too many channels (limit {0}); try again later")]
    TooManyChannels(usize),
    /// The log backend cannot serve the request right now.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<HubError> for ProtocolError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::TooManyChannels(_) | HubError::Backend(BackendError::Unavailable(_)) => {
                Self::new(ErrorCode::Unavailable, e.to_string())
            }
            // Paths and details of damaged files are for the log, not clients.
            HubError::Backend(_) => Self::new(
                ErrorCode::Unavailable,
                "storage unavailable: stored data could not be read",
            ),
        }
    }
}

/// The acknowledgement of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The channel's epoch.
    pub epoch: Epoch,
    /// The offset the message received.
    pub offset: u64,
}

/// The answer to a poll.
#[derive(Debug)]
pub struct Page {
    /// The channel's epoch.
    pub epoch: Epoch,
    /// Set when the requested position could not be honoured exactly.
    pub truncated: Option<Truncation>,
    /// Messages after the position, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// The `since` to ask with next time.
    pub next: u64,
}

/// The pub/sub hub. Cloning is shallow: every clone is the same hub.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: HubConfig,
    backend: Backend,
    /// Who is in each channel (shared through Redis with that backend).
    presence: Presence,
    channels: RwLock<HashMap<ChannelName, Arc<Channel>>>,
    /// Random keys, so epochs differ between runs of the server.
    epoch_keys: std::collections::hash_map::RandomState,
    epoch_counter: AtomicU64,
    /// Recent idempotency keys, for the backends that do not keep them.
    recent: idempotency::Recent,
}

/// Largest batch a subscriber copies out of the log under one lock.
const READ_BATCH: usize = 64;

/// Current unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    /// Creates an empty in-memory hub (ignoring `cfg.backend`; see
    /// [`Hub::open`] for the others).
    pub fn new(cfg: HubConfig) -> Self {
        let presence = Presence::new(cfg.presence.clone());
        Self::with_backend(cfg, Backend::memory(), presence)
    }

    /// Opens a hub on the backend `cfg.backend` names: verifies or connects
    /// to its storage first, so a damaged data file or an unreachable Redis
    /// stops the server from starting.
    pub async fn open(cfg: HubConfig) -> Result<Self, BackendError> {
        let backend = Backend::connect(&cfg.backend, cfg.history).await?;
        let presence = match &cfg.backend {
            BackendConfig::Redis { url, .. } => Presence::shared(cfg.presence.clone(), url)
                .await
                .map_err(|e| BackendError::Open(e.to_string()))?,
            _ => Presence::new(cfg.presence.clone()),
        };
        let hub = Self::with_backend(cfg, backend, presence);
        hub.inner.backend.attach(Arc::downgrade(&hub.inner));
        Ok(hub)
    }

    fn with_backend(cfg: HubConfig, backend: Backend, presence: Presence) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                backend,
                presence,
                channels: RwLock::new(HashMap::new()),
                epoch_keys: Default::default(),
                epoch_counter: AtomicU64::new(0),
                recent: idempotency::Recent::new(idempotency::WINDOW, idempotency::LIMIT),
            }),
        }
    }

    /// Flushes and closes the backend (the durable file, Redis
    /// connections). Later publishes are refused with `unavailable`.
    pub async fn close(&self) {
        self.inner.backend.close().await;
    }

    /// Who is in each channel.
    pub fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &HubConfig {
        &self.inner.cfg
    }

    /// With `--redis`: fan-out messages this node has received from Redis,
    /// and how many of them were for channels it did not hold (a node
    /// receives only the channels it holds, so that stays near zero; the
    /// bench reports both). `(0, 0)` on the other backends.
    pub fn fanout_received(&self) -> (u64, u64) {
        self.inner.backend.fanout_received()
    }

    /// Number of channels currently held.
    pub fn channel_count(&self) -> usize {
        self.inner
            .channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn new_epoch(&self) -> Epoch {
        self.inner.new_epoch()
    }

    /// Finds a cached channel, or loads it from the backend (creating it
    /// there if new) and caches it.
    async fn channel(&self, name: &ChannelName) -> Result<Arc<Channel>, HubError> {
        if let Some(ch) = self.inner.lookup(name) {
            return Ok(ch);
        }
        // Boxed: opening awaits the backend, whose futures are large, and
        // every future that awaits a channel would otherwise be sized for
        // it — a long poll holds its future for its whole wait.
        Box::pin(self.load(name)).await
    }

    /// Loads a channel that is not in memory from the backend.
    async fn load(&self, name: &ChannelName) -> Result<Arc<Channel>, HubError> {
        let inner = &self.inner;
        let max = inner.cfg.max_channels;
        if inner.map().len() >= max {
            return Err(HubError::TooManyChannels(max));
        }
        let snap = inner.backend.open(name, &self.new_epoch()).await?;
        // Kept until the channel is in the map (or the load gave up).
        let _hold = snap.hold;
        let ch = {
            let mut map = inner.map_mut();
            // Another task may have loaded it meanwhile: theirs wins.
            if let Some(ch) = map.get(name) {
                return Ok(ch.clone());
            }
            if map.len() >= max {
                return Err(HubError::TooManyChannels(max));
            }
            let log = ChannelLog::restore(
                name.clone(),
                snap.epoch,
                inner.cfg.history,
                snap.head,
                snap.messages,
            );
            let ch = Arc::new(Channel::new(log));
            map.insert(name.clone(), ch.clone());
            ch
        };
        if let Err(e) = inner.backend.opened(&ch).await {
            inner.discard(name, &ch);
            return Err(e.into());
        }
        Ok(ch)
    }

    /// Appends `data` to a channel and wakes its readers. Acknowledged once
    /// the backend's promise holds (e.g. on disk, or in Redis).
    pub async fn publish(&self, name: &ChannelName, data: &Data) -> Result<Published, HubError> {
        self.publish_with(name, data, None).await
    }

    /// Like [`Hub::publish`], with an optional idempotency key: a publish
    /// repeating the key of one on the same channel within
    /// [`idempotency::WINDOW`] appends nothing and gets the first one's
    /// acknowledgement (waiting for it if it is still in flight).
    pub async fn publish_with(
        &self,
        name: &ChannelName,
        data: &Data,
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, HubError> {
        match key {
            // Redis keeps keys next to the channel, where every node sees
            // them and a script checks and appends atomically.
            Some(key) if !self.inner.backend.keeps_keys() => {
                let slot = self.inner.recent.slot(name, key);
                slot.get_or_try_init(|| self.append(name, data, None))
                    .await
                    .cloned()
            }
            _ => self.append(name, data, key).await,
        }
    }

    async fn append(
        &self,
        name: &ChannelName,
        data: &Data,
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, HubError> {
        loop {
            let ch = self.channel(name).await?;
            match self.inner.backend.append(&ch, data, now_ms(), key).await? {
                Appended::Done(p) => return Ok(p),
                // The sweep removed it between lookup and lock: retry on the
                // new channel rather than acknowledge into the void.
                Appended::Evicted => continue,
            }
        }
    }

    /// Runs `f` on a channel's live (not evicted) log under its read lock,
    /// looking the channel up again if the sweep evicted it meanwhile.
    async fn with_log<T>(
        &self,
        name: &ChannelName,
        f: impl Fn(&Arc<Channel>, &ChannelLog) -> T,
    ) -> Result<T, HubError> {
        loop {
            self.inner.backend.ready()?;
            let ch = self.channel(name).await?;
            let log = ch.read();
            if !log.is_evicted() {
                return Ok(f(&ch, &log));
            }
        }
    }

    /// Subscribes to a channel from `pos`: retained history first (or a
    /// truncation notice), then live messages, with no gap between them.
    pub async fn subscribe(
        &self,
        name: &ChannelName,
        pos: &Position,
    ) -> Result<Subscription, HubError> {
        self.with_log(name, |ch, log| {
            // Registered under the read lock, so no publish (which takes the
            // write lock) falls between the start position and the wake-up.
            Subscription::new(
                ReaderGuard::new(ch.clone()),
                name.clone(),
                log.epoch().clone(),
                log.head(),
                log.start(pos),
                ch.head_tx.subscribe(),
            )
        })
        .await
    }

    /// Reads up to `limit` messages after `pos` without waiting.
    pub async fn read(
        &self,
        name: &ChannelName,
        pos: &Position,
        limit: usize,
    ) -> Result<Page, HubError> {
        self.with_log(name, |_, log| read_page(log, pos, limit))
            .await
    }

    /// Like [`Hub::read`], but when there is nothing to return waits up to
    /// `wait` for a message to arrive (long polling).
    ///
    /// Cancel-safe: dropping the future loses nothing, since nothing is
    /// consumed until it returns.
    pub async fn read_wait(
        &self,
        name: &ChannelName,
        pos: &Position,
        limit: usize,
        wait: Duration,
    ) -> Result<Page, HubError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut sub = self.subscribe(name, pos).await?;
        // Resolve the position once, so "live" means "after the head when the
        // poll arrived" for the whole wait.
        let pos = Position {
            since: Some(sub.cursor()),
            epoch: Some(sub.epoch().as_str().to_owned()),
        };
        let truncated = sub.take_truncation();
        loop {
            sub.mark_seen();
            let mut page = {
                let log = sub.channel().read();
                read_page(&log, &pos, limit)
            };
            if page.truncated.is_none() {
                page.truncated = truncated.clone();
            }
            if !page.messages.is_empty() || page.truncated.is_some() {
                return Ok(page);
            }
            if tokio::time::timeout_at(deadline, sub.changed())
                .await
                .is_err()
            {
                return Ok(page);
            }
            if sub.interrupted() {
                // Told like a subscriber: `unavailable` while the backend
                // is down, otherwise an empty answer to poll again.
                self.inner.backend.ready()?;
                return Ok(page);
            }
        }
    }

    /// Evicts channels that have had no reader and no publish for the idle
    /// TTL as of `now` (unix ms). Returns how many were evicted.
    ///
    /// Under the memory backend an evicted channel loses its history; if it
    /// is used again it starts a new epoch, so clients resuming with the old
    /// epoch are told `truncated` instead of being skipped silently. Under
    /// the durable and Redis backends eviction only drops the cache: the
    /// next use reloads the same epoch and history.
    pub fn sweep(&self, now: u64) -> usize {
        let ttl = self.inner.cfg.idle_ttl.as_millis() as u64;
        let idle = |ch: &Channel| {
            ch.readers.load(Ordering::Acquire) == 0
                && now.saturating_sub(ch.last_active.load(Ordering::Relaxed)) >= ttl
        };
        // A channel with publishes in flight to the backend keeps its ring
        // until they have been committed into it.
        let mut map = self
            .inner
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = map.len();
        map.retain(|_, ch| {
            if !idle(ch) {
                return true;
            }
            // Re-check under the channel's write lock: readers register under
            // its read lock, so none can slip in between check and removal.
            let mut log = ch.write();
            if idle(ch) && log.pending() == 0 {
                log.mark_evicted();
                false
            } else {
                true
            }
        });
        let evicted = before - map.len();
        drop(map);
        if evicted > 0 {
            self.inner.backend.evicted();
        }
        evicted
    }
}

fn read_page(log: &ChannelLog, pos: &Position, limit: usize) -> Page {
    let start = log.start(pos);
    let mut messages = Vec::new();
    // `start` always lies inside the retained window, so this cannot be
    // `Behind`.
    let _ = log.read_after(start.cursor, limit, &mut messages);
    let next = messages.last().map_or(start.cursor, |m| m.offset());
    Page {
        epoch: log.epoch().clone(),
        truncated: start.truncated,
        messages,
        next,
    }
}

#[cfg(test)]
mod tests;
