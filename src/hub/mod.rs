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
mod name;
mod subscription;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

pub use backend::{BackendConfig, BackendError, Fsync};
pub use channel::{ChannelLog, Commit, ReadOutcome, Start, Truncation};
pub use name::{ChannelName, Epoch, MAX_CHANNEL_LEN, NameError, Position};
pub use subscription::{Event, Subscription};

use self::backend::{Appended, Backend};
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
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            history: 1000,
            max_channels: 100_000,
            idle_ttl: Duration::from_secs(300),
            backend: BackendConfig::Memory,
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

/// Shared state of one channel.
#[derive(Debug)]
struct Channel {
    log: RwLock<ChannelLog>,
    /// Carries the head offset; its only job is waking readers, who then
    /// read the log itself (the log, not this value, is the truth).
    head_tx: watch::Sender<u64>,
    /// Live subscriptions and waiting long polls; a channel is evicted only
    /// at zero.
    readers: AtomicUsize,
    /// Unix ms of the last publish or the last reader leaving.
    last_active: AtomicU64,
    /// Bumped when the backend lost contact (Redis down): subscriptions
    /// that started before are ended with `lagged` so their clients learn
    /// delivery was interrupted and resume from their last offset.
    interrupts: AtomicU64,
}

impl Channel {
    fn new(log: ChannelLog) -> Self {
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
    fn notify(&self, head: u64) {
        self.last_active.fetch_max(now_ms(), Ordering::Relaxed);
        self.head_tx.send_modify(|h| *h = (*h).max(head));
    }

    /// Makes a numbered message visible (in offset order) and wakes readers.
    fn commit(&self, msg: Arc<Message>) -> Commit {
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
    fn interrupt(&self) {
        self.interrupts.fetch_add(1, Ordering::AcqRel);
        self.head_tx.send_modify(|_| {});
    }

    fn read(&self) -> RwLockReadGuard<'_, ChannelLog> {
        // A panic while holding the lock cannot leave the ring inconsistent
        // (every mutation is a single push/pop), so poisoning is ignored.
        self.log.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, ChannelLog> {
        self.log.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts a reader of a channel for as long as it lives.
#[derive(Debug)]
struct ReaderGuard(Arc<Channel>);

impl ReaderGuard {
    /// Registers a reader. Called with the channel's log lock held, so the
    /// eviction sweep (which takes the write lock) cannot interleave.
    fn new(channel: Arc<Channel>) -> Self {
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

/// The pub/sub hub. Cloning is shallow: every clone is the same hub.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: HubConfig,
    backend: Backend,
    channels: RwLock<HashMap<ChannelName, Arc<Channel>>>,
    /// Random keys, so epochs differ between runs of the server.
    epoch_keys: std::collections::hash_map::RandomState,
    epoch_counter: AtomicU64,
}

/// Largest batch a subscriber copies out of the log under one lock.
const READ_BATCH: usize = 64;

/// Current unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Inner {
    fn map(&self) -> RwLockReadGuard<'_, HashMap<ChannelName, Arc<Channel>>> {
        self.channels.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn map_mut(&self) -> RwLockWriteGuard<'_, HashMap<ChannelName, Arc<Channel>>> {
        self.channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A new epoch, different from every other this process or (with
    /// overwhelming likelihood) any other node hands out.
    fn new_epoch(&self) -> Epoch {
        let mut h = self.epoch_keys.build_hasher();
        h.write_u64(self.epoch_counter.fetch_add(1, Ordering::Relaxed));
        h.write_u64(now_ms());
        Epoch::new(&format!("{:012x}", h.finish() & 0xffff_ffff_ffff))
    }

    /// The cached channel of that name, if any.
    fn lookup(&self, name: &ChannelName) -> Option<Arc<Channel>> {
        self.map().get(name).cloned()
    }

    /// Every cached channel.
    fn cached(&self) -> Vec<Arc<Channel>> {
        self.map().values().cloned().collect()
    }

    /// Drops a channel from the cache at once, readers or not, telling its
    /// subscribers (used when the backend says its numbering restarted).
    fn discard(&self, name: &ChannelName, ch: &Arc<Channel>) {
        let mut map = self.map_mut();
        if map.get(name).is_some_and(|c| Arc::ptr_eq(c, ch)) {
            map.remove(name);
        }
        drop(map);
        ch.write().mark_evicted();
        ch.interrupt();
    }
}

impl Hub {
    /// Creates an empty in-memory hub (ignoring `cfg.backend`; see
    /// [`Hub::open`] for the others).
    pub fn new(cfg: HubConfig) -> Self {
        Self::with_backend(cfg, Backend::memory())
    }

    /// Opens a hub on the backend `cfg.backend` names: verifies or connects
    /// to its storage first, so a damaged data file or an unreachable Redis
    /// stops the server from starting.
    pub async fn open(cfg: HubConfig) -> Result<Self, BackendError> {
        let backend = Backend::connect(&cfg.backend, cfg.history).await?;
        let hub = Self::with_backend(cfg, backend);
        hub.inner.backend.attach(Arc::downgrade(&hub.inner));
        Ok(hub)
    }

    fn with_backend(cfg: HubConfig, backend: Backend) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                backend,
                channels: RwLock::new(HashMap::new()),
                epoch_keys: Default::default(),
                epoch_counter: AtomicU64::new(0),
            }),
        }
    }

    /// Flushes and closes the backend (the durable file, Redis
    /// connections). Later publishes are refused with `unavailable`.
    pub async fn close(&self) {
        self.inner.backend.close().await;
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &HubConfig {
        &self.inner.cfg
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
        let inner = &self.inner;
        let max = inner.cfg.max_channels;
        if let Some(ch) = inner.lookup(name) {
            return Ok(ch);
        }
        if inner.map().len() >= max {
            return Err(HubError::TooManyChannels(max));
        }
        let snap = inner.backend.open(name, &self.new_epoch()).await?;
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
        loop {
            let ch = self.channel(name).await?;
            match self.inner.backend.append(&ch, data, now_ms()).await? {
                Appended::Done(p) => return Ok(p),
                // The sweep removed it between lookup and lock: retry on the
                // new channel rather than acknowledge into the void.
                Appended::Evicted => continue,
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
        loop {
            self.inner.backend.ready()?;
            let ch = self.channel(name).await?;
            let log = ch.read();
            if log.is_evicted() {
                drop(log);
                continue;
            }
            let start = log.start(pos);
            let epoch = log.epoch().clone();
            let head = log.head();
            let rx = ch.head_tx.subscribe();
            let guard = ReaderGuard::new(ch.clone());
            drop(log);
            return Ok(Subscription::new(
                guard,
                name.clone(),
                epoch,
                head,
                start,
                rx,
            ));
        }
    }

    /// Reads up to `limit` messages after `pos` without waiting.
    pub async fn read(
        &self,
        name: &ChannelName,
        pos: &Position,
        limit: usize,
    ) -> Result<Page, HubError> {
        loop {
            self.inner.backend.ready()?;
            let ch = self.channel(name).await?;
            let log = ch.read();
            if log.is_evicted() {
                drop(log);
                continue;
            }
            return Ok(read_page(&log, pos, limit));
        }
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
        before - map.len()
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
