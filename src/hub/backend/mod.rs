//! Log backends: where a channel's offsets come from, how long its history
//! survives, and how publishes reach other nodes.
//!
//! The hub keeps every channel's in-memory [`ChannelLog`](super::ChannelLog)
//! ring whatever the backend: subscribers always read shared
//! `Arc<Message>`s out of it, so fan-out stays allocation-free per
//! subscriber. A backend decides only what the ring does not:
//!
//! - [`memory`]: offsets numbered in the ring itself; nothing survives a
//!   restart (a new epoch tells resuming clients so).
//! - [`durable`]: an embedded redb file holds every channel's retained
//!   history, head offset and epoch. A publish is acknowledged only after
//!   its commit is on disk ([`Fsync`]); after a restart — graceful or not —
//!   numbering continues in the same epoch.
//! - [`redis`]: several nodes share channels. Redis assigns offsets
//!   atomically, keeps history in a stream and the epoch in a key, and
//!   fans every publish out to every node, which fills its ring strictly in
//!   offset order.
//!
//! Entry point: [`BackendConfig`], turned into a running backend by
//! [`Hub::open`](super::Hub::open). The boundary itself is the crate-private
//! `LogBackend` trait; `Backend` dispatches to it statically so the
//! memory path pays for no boxing.

pub mod durable;
pub mod memory;
pub mod redis;

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use durable::Fsync;

use super::{Channel, ChannelName, Epoch, IdempotencyKey, Inner, Published};
use crate::protocol::{Data, Message};

/// Which backend a hub runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackendConfig {
    /// History in memory only (the default).
    #[default]
    Memory,
    /// History in an embedded redb file under `dir`.
    Durable {
        /// The data directory (created if missing).
        dir: PathBuf,
        /// When a publish counts as durable.
        fsync: Fsync,
        /// Longest a group commit waits for more publishes to join it.
        group_commit: Duration,
    },
    /// Offsets, history and fan-out in Redis, shared by every node.
    Redis {
        /// `redis://HOST:PORT[/DB]` (one server), or a Cluster's seeds:
        /// comma-separated URLs or `redis+cluster://HOST:PORT[,HOST:PORT…]`.
        url: String,
        /// How long a channel's keys outlive its last publish (zero:
        /// forever).
        key_ttl: Duration,
    },
}

/// Why a backend could not do what the hub asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend is unreachable or has stopped; the request may be
    /// retried later. Clients see `503 unavailable`.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The data directory holds damaged or inconsistent data; the server
    /// refuses to start rather than serve it.
    #[error("data file {path} is damaged: {detail}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What was found wrong.
        detail: String,
    },
    /// The backend could not be opened or reached at start.
    #[error("cannot open the log backend: {0}")]
    Open(String),
}

/// A channel as a backend holds it: what the hub's ring starts from.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// The channel's epoch (kept if it existed, else the fresh one).
    pub(super) epoch: Epoch,
    /// The newest offset.
    pub(super) head: u64,
    /// The retained tail of the history, oldest first, ending at `head`.
    pub(super) messages: Vec<Arc<Message>>,
    /// Whatever the backend needs kept alive until the channel is in the
    /// hub's map (Redis: the subscription of a channel being loaded).
    pub(super) hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// What a publish through a backend came to.
#[derive(Debug)]
pub(super) enum Appended {
    /// Acknowledged: durable per the backend's promise.
    Done(Published),
    /// The channel was evicted while the publish was being prepared; the hub
    /// looks it up again and retries (nothing was written).
    Evicted,
}

/// The boundary between the hub and where its logs live.
///
/// Every method may be called concurrently from many tasks.
pub(super) trait LogBackend: Send + Sync {
    /// Loads a channel's state, creating it with epoch `fresh` if it has
    /// never been seen.
    fn open(
        &self,
        name: &ChannelName,
        fresh: &Epoch,
    ) -> impl Future<Output = Result<Snapshot, BackendError>> + Send;

    /// Called once a freshly opened channel is in the hub's map, so a
    /// backend fed from elsewhere can fetch what arrived in between.
    fn opened(&self, ch: &Arc<Channel>) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Publishes `data` on `ch` at server time `now`. Resolves once the
    /// message is durable per the backend's promise and visible in `ch`'s
    /// ring. `key` is only ever given to a backend that keeps idempotency
    /// keys itself (Redis); the hub answers retries for the others.
    fn append(
        &self,
        ch: &Arc<Channel>,
        data: &Data,
        now: u64,
        key: Option<&IdempotencyKey>,
    ) -> impl Future<Output = Result<Appended, BackendError>> + Send;

    /// Whether reads can be served faithfully right now.
    fn ready(&self) -> Result<(), BackendError>;

    /// Flushes and releases everything (files, connections, tasks).
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// The running backend of a hub; static dispatch over the three kinds.
#[derive(Debug)]
pub(super) enum Backend {
    /// See [`memory`].
    Memory(memory::MemoryBackend),
    /// See [`durable`].
    Durable(durable::DurableBackend),
    /// See [`redis`].
    Redis(redis::RedisBackend),
}

impl Backend {
    /// The in-memory backend.
    pub(super) fn memory() -> Self {
        Self::Memory(memory::MemoryBackend)
    }

    /// Opens the configured backend. `history` is the per-channel retention.
    pub(super) async fn connect(cfg: &BackendConfig, history: usize) -> Result<Self, BackendError> {
        Ok(match cfg {
            BackendConfig::Memory => Self::Memory(memory::MemoryBackend),
            BackendConfig::Durable {
                dir,
                fsync,
                group_commit,
            } => Self::Durable(
                durable::DurableBackend::open(dir, history, *fsync, *group_commit).await?,
            ),
            BackendConfig::Redis { url, key_ttl } => {
                Self::Redis(redis::RedisBackend::connect(url, history, *key_ttl).await?)
            }
        })
    }

    /// Tells the backend that the sweep evicted channels.
    pub(super) fn evicted(&self) {
        if let Self::Redis(r) = self {
            r.evicted();
        }
    }

    /// Redis fan-out messages received, and those for channels not held
    /// (zero for the other backends).
    pub(super) fn fanout_received(&self) -> (u64, u64) {
        match self {
            Self::Redis(r) => r.fanout_received(),
            _ => (0, 0),
        }
    }

    /// Gives a backend that delivers on its own (Redis fan-out) its hub.
    pub(super) fn attach(&self, hub: Weak<Inner>) {
        if let Self::Redis(r) = self {
            r.attach(hub);
        }
    }

    pub(super) async fn open(
        &self,
        name: &ChannelName,
        fresh: &Epoch,
    ) -> Result<Snapshot, BackendError> {
        match self {
            Self::Memory(b) => b.open(name, fresh).await,
            Self::Durable(b) => b.open(name, fresh).await,
            Self::Redis(b) => b.open(name, fresh).await,
        }
    }

    pub(super) async fn opened(&self, ch: &Arc<Channel>) -> Result<(), BackendError> {
        match self {
            Self::Memory(b) => b.opened(ch).await,
            Self::Durable(b) => b.opened(ch).await,
            Self::Redis(b) => b.opened(ch).await,
        }
    }

    pub(super) async fn append(
        &self,
        ch: &Arc<Channel>,
        data: &Data,
        now: u64,
        key: Option<&IdempotencyKey>,
    ) -> Result<Appended, BackendError> {
        match self {
            Self::Memory(b) => b.append(ch, data, now, key).await,
            Self::Durable(b) => b.append(ch, data, now, key).await,
            Self::Redis(b) => b.append(ch, data, now, key).await,
        }
    }

    /// Whether the backend keeps idempotency keys itself (shared by every
    /// node) rather than leaving them to the hub's node-local table.
    pub(super) fn keeps_keys(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    pub(super) fn ready(&self) -> Result<(), BackendError> {
        match self {
            Self::Memory(b) => b.ready(),
            Self::Durable(b) => b.ready(),
            Self::Redis(b) => b.ready(),
        }
    }

    pub(super) async fn close(&self) {
        match self {
            Self::Memory(b) => b.close().await,
            Self::Durable(b) => b.close().await,
            Self::Redis(b) => b.close().await,
        }
    }
}
