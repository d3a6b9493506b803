//! The Redis backend: several Ladder nodes share channels through one Redis.
//!
//! # Layout in Redis
//!
//! Per channel `C` (the braces keep a channel's keys in one cluster slot):
//!
//! - `ladder:{C}:head` — the last offset, advanced with `INCR`;
//! - `ladder:{C}:epoch` — the epoch, set once with `SET NX`;
//! - `ladder:{C}:log` — a stream holding the history; entry ID `0-<offset>`,
//!   fields `t` (server ms) and `d` (the data), trimmed with `MAXLEN ~
//!   --history` (at least that many kept);
//! - `ladder:{C}:seen`, `ladder:{C}:seenq` — recent idempotency keys and
//!   their first-use times;
//! - pub/sub channel `ladder:{C}:fan` — the channel's fan-out (same hash
//!   tag, so under Cluster it lives on the channel's shard).
//!
//! Under Redis Cluster (`conn::Target`) nothing else changes: every key of
//! a channel and its fan-out share one slot, scripts go to that slot's
//! master through redis-rs's cluster client, and the fan-out is sharded
//! pub/sub (`SPUBLISH` in the script, `SSUBSCRIBE` by `shards`), so a
//! master sends a channel's messages only to the nodes holding it.
//!
//! A publish is one Lua script (`APPEND`): number, append, trim and
//! `PUBLISH` to the channel's fan-out run atomically, so offsets are global
//! and gap-free across nodes and the fan-out order equals offset order. A
//! publish is acknowledged once the script has run (it is then in Redis;
//! how long it survives a Redis restart is Redis's persistence setting) and
//! this node's ring holds it, so a client reading the node it published to
//! sees it.
//!
//! # Fan-out
//!
//! Each node keeps one pub/sub connection (`listener`), subscribed to the
//! fan-out of exactly the channels it holds or is loading: a load waits for
//! Redis to confirm the SUBSCRIBE before it reads the history, and a sweep
//! that evicts channels has the listener unsubscribe them. Messages are
//! committed into their rings in offset order; a gap (a connection that
//! dropped, a channel loaded just as a message flew by) is filled from the
//! stream with `XRANGE` before anything after it.
//!
//! # When Redis is unreachable
//!
//! The node notices when its pub/sub connection drops, or when a PING on it
//! goes unanswered (every 5 s, 2 s to answer; TCP keepalive besides). Until
//! it has reconnected (with backoff), resubscribed (in batches) and caught
//! every held channel up from the streams (several at once), publishes,
//! new subscriptions and polls are refused with `503 unavailable`, and live
//! subscriptions are ended with `lagged` carrying the last offset they got
//! — the contract's way to say "resume with `since`". A publish whose
//! script may or may not have run (timeout) is reported as failed and never
//! retried by the node; a client retrying with an idempotency key gets the
//! first one's ack if it did run.

mod conn;
mod connect;
mod listener;
mod scripts;
mod shards;

pub(crate) use self::conn::{Commands, Target};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::connect::check_eviction_policy;
use self::listener::Loading;
use self::scripts::{RawEntry, Scripts, Seen, fanout_channel, messages};
use super::{Appended, BackendError, LogBackend, Snapshot};
use crate::hub::{
    Channel, ChannelName, Epoch, IdempotencyKey, Inner, Published, ReaderGuard, idempotency,
};
use crate::protocol::{Data, Message};

/// How long one Redis call may take before the request fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

fn unreachable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("redis unreachable: {e}"))
}

/// What the node and its listener task share.
struct Shared {
    target: Target,
    conn: Commands,
    scripts: Scripts,
    history: usize,
    /// `--redis-key-ttl` in ms (0 = keys never expire).
    ttl_ms: u64,
    /// True while the fan-out connection is up and caught up.
    up: AtomicBool,
    hub: OnceLock<Weak<Inner>>,
    stop: CancellationToken,
    /// Subscription requests to the listener. Bounded: each loading channel
    /// waits for its answer, so the queue holds at most one per load.
    cmds: mpsc::Sender<listener::Cmd>,
    /// Rung by the sweep: the listener drops channels no longer held.
    swept: Notify,
    /// Channels being loaded (subscribed, not yet in the hub's map), with
    /// how many loads of each are under way; the listener keeps them.
    loading: Mutex<HashMap<ChannelName, usize>>,
    /// Fan-out messages received, and of those the ones for channels this
    /// node did not hold (for the bench: per-channel routing keeps it ~0).
    received: [AtomicU64; 2],
}

/// The Redis backend of one node.
pub(crate) struct RedisBackend {
    shared: Arc<Shared>,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("up", &self.shared.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn hub(&self) -> Option<Arc<Inner>> {
        self.hub.get().and_then(Weak::upgrade)
    }

    fn loads(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, usize>> {
        self.loading.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The channels whose fan-out this node must receive: those it holds
    /// and those it is loading.
    fn wanted(&self) -> HashSet<ChannelName> {
        let mut names: HashSet<ChannelName> = self.loads().keys().cloned().collect();
        if let Some(hub) = self.hub() {
            names.extend(hub.cached().iter().map(|ch| log_name(ch)));
        }
        names
    }

    /// Subscribes to a channel's fan-out, waiting for Redis's confirmation.
    async fn subscribe(&self, name: &ChannelName) -> Result<(), BackendError> {
        let (tx, rx) = oneshot::channel();
        let asked = async {
            self.cmds
                .send(listener::Cmd::Subscribe(name.clone(), tx))
                .await
                .map_err(|_| BackendError::Unavailable("the redis listener has stopped".into()))?;
            rx.await.map_err(|_| {
                BackendError::Unavailable("redis connection lost while subscribing".into())
            })?
        };
        tokio::time::timeout(CALL_TIMEOUT * 2, asked)
            .await
            .map_err(|_| {
                BackendError::Unavailable("redis did not confirm a subscription in time".into())
            })?
    }

    /// Loads a channel: its epoch, head and up to `count` entries — the
    /// newest ones, or those from offset `from` on. `held` is the epoch and
    /// head this node holds, if any: a Redis whose head went back below it
    /// rotates the epoch (see `scripts`).
    async fn load(
        &self,
        name: &ChannelName,
        fresh: &Epoch,
        held: Option<(&Epoch, u64)>,
        count: usize,
        from: Option<u64>,
    ) -> Result<(Epoch, u64, Vec<Arc<Message>>), BackendError> {
        let seen = Seen {
            fresh,
            held,
            ttl_ms: self.ttl_ms,
        };
        let call = self.scripts.load(name, &seen, count, from);
        let mut conn = self.conn.clone();
        let (epoch, head, mut raw): (String, u64, Vec<RawEntry>) =
            tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn))
                .await
                .map_err(unreachable)?
                .map_err(unreachable)?;
        if from.is_none() {
            raw.reverse();
        }
        let epoch = Epoch::new(&epoch);
        let msgs = messages(name, &epoch, raw)?;
        Ok((epoch, head, msgs))
    }

    /// Brings a cached channel up to Redis's head. If Redis's numbering
    /// restarted (its data was lost) or the missing part was trimmed away,
    /// the channel is dropped from the cache instead, its subscribers told;
    /// the next use loads it afresh and resuming clients get `truncated`.
    async fn catch_up(&self, hub: &Inner, ch: &Arc<Channel>) -> Result<(), BackendError> {
        let (name, epoch, head) = {
            let log = ch.read();
            (log_name(ch), log.epoch().clone(), log.head())
        };
        // A fresh epoch, never ours: if Redis lost the channel, numbering
        // restarts under a new epoch, not silently under the old one.
        let fresh = hub.new_epoch();
        let (now_epoch, now_head, msgs) = self
            .load(
                &name,
                &fresh,
                Some((&epoch, head)),
                i64::MAX as usize,
                Some(head + 1),
            )
            .await?;
        let first = msgs.first().map(|m| m.offset());
        if now_epoch != epoch || now_head < head || (now_head > head && first != Some(head + 1)) {
            tracing::warn!(channel = %name, "redis history does not continue this node's; reloading the channel");
            hub.discard(&name, ch);
            return Ok(());
        }
        for m in msgs {
            ch.commit(m);
        }
        Ok(())
    }
}

/// The channel's name, read from its log.
fn log_name(ch: &Channel) -> ChannelName {
    ch.read().name().clone()
}

impl RedisBackend {
    /// Connects (to one server or a Cluster, see [`Target`]), checks that
    /// Redis will not evict keys, and starts the listener. `key_ttl` is how
    /// long a channel's keys outlive its last publish (zero: forever).
    pub(crate) async fn connect(
        url: &str,
        history: usize,
        key_ttl: Duration,
    ) -> Result<Self, BackendError> {
        let fail = |e: &dyn std::fmt::Display| BackendError::Open(format!("redis at {url}: {e}"));
        let target = Target::parse(url).map_err(|e| fail(&e))?;
        let conn = target.commands().await.map_err(|e| fail(&e))?;
        match &target {
            Target::Single(_) => check_eviction_policy(&mut conn.clone())
                .await
                .map_err(|e| fail(&e))?,
            Target::Cluster(seeds) => {
                // Every master, not one picked at random: any of them may
                // hold a channel.
                let map = shards::slot_map(&conn).await.map_err(|e| fail(&e))?;
                let masters: HashSet<&str> = map.iter().map(|(_, _, a)| a.as_str()).collect();
                for addr in masters {
                    let info = shards::master_info(&seeds[0], addr).map_err(|e| fail(&e))?;
                    let mut one = Target::Single(info)
                        .commands()
                        .await
                        .map_err(|e| fail(&format!("{addr}: {e}")))?;
                    check_eviction_policy(&mut one)
                        .await
                        .map_err(|e| fail(&format!("{addr}: {e}")))?;
                }
            }
        }
        let (cmds_tx, cmds_rx) = mpsc::channel(1024);
        let scripts = Scripts::new(target.is_cluster());
        let shared = Arc::new(Shared {
            target,
            conn,
            scripts,
            history: history.max(1),
            ttl_ms: key_ttl.as_millis() as u64,
            up: AtomicBool::new(false),
            hub: OnceLock::new(),
            stop: CancellationToken::new(),
            cmds: cmds_tx,
            swept: Notify::new(),
            loading: Mutex::default(),
            received: Default::default(),
        });
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(listener::run(shared.clone(), cmds_rx, first_tx));
        let first = tokio::time::timeout(CALL_TIMEOUT * 2, first_rx).await;
        if !matches!(first, Ok(Ok(()))) {
            shared.stop.cancel();
            return Err(fail(&"could not subscribe to the fan-out channel"));
        }
        Ok(Self {
            shared,
            listener: Mutex::new(Some(task)),
        })
    }

    /// Lets the listener deliver into the hub's channels.
    pub(in crate::hub) fn attach(&self, hub: Weak<Inner>) {
        let _ = self.shared.hub.set(hub);
    }

    /// Fan-out messages this node received from Redis, and how many of
    /// them were for channels it did not hold.
    pub(in crate::hub) fn fanout_received(&self) -> (u64, u64) {
        let [all, unheld] = &self.shared.received;
        (all.load(Ordering::Relaxed), unheld.load(Ordering::Relaxed))
    }

    /// Tells the listener that channels were evicted, so it unsubscribes
    /// from their fan-out.
    pub(in crate::hub) fn evicted(&self) {
        self.shared.swept.notify_one();
    }
}

impl LogBackend for RedisBackend {
    async fn open(&self, name: &ChannelName, fresh: &Epoch) -> Result<Snapshot, BackendError> {
        self.ready()?;
        // Subscribed (confirmed) before the history is read, so nothing
        // published after the read can pass this node by.
        let loading = Loading::new(&self.shared, name);
        self.shared.subscribe(name).await?;
        let (epoch, head, messages) = self
            .shared
            .load(name, fresh, None, self.shared.history, None)
            .await?;
        Ok(Snapshot {
            epoch,
            head,
            messages,
            hold: Some(Box::new(loading)),
        })
    }

    async fn opened(&self, ch: &Arc<Channel>) -> Result<(), BackendError> {
        // The listener dropped anything for this channel until it was in
        // the map; whatever that was is in the stream by now.
        match self.shared.hub() {
            Some(hub) => self.shared.catch_up(&hub, ch).await,
            None => Ok(()),
        }
    }

    async fn append(
        &self,
        ch: &Arc<Channel>,
        data: &Data,
        now: u64,
        key: Option<&IdempotencyKey>,
    ) -> Result<Appended, BackendError> {
        self.ready()?;
        let (name, epoch, head, _reader, mut woken) = {
            let log = ch.read();
            if log.is_evicted() {
                return Ok(Appended::Evicted);
            }
            // Counted as a reader while in flight, so the sweep keeps the
            // ring this publish is about to be delivered into.
            let reader = ReaderGuard::new(ch.clone());
            (
                log.name().clone(),
                log.epoch().clone(),
                log.head(),
                reader,
                ch.head_tx.subscribe(),
            )
        };
        let Some(hub) = self.shared.hub() else {
            return Err(BackendError::Unavailable("the hub is shutting down".into()));
        };
        // The fresh epoch is used only if Redis no longer has the channel
        // or its head went back (see `scripts`).
        let fresh = hub.new_epoch();
        let seen = Seen {
            fresh: &fresh,
            held: Some((&epoch, head)),
            ttl_ms: self.shared.ttl_ms,
        };
        let call = self.shared.scripts.append(
            &name,
            &seen,
            self.shared.history,
            now,
            data.as_str(),
            key.map_or("", IdempotencyKey::as_str),
            idempotency::WINDOW.as_millis() as u64,
        );
        let mut conn = self.shared.conn.clone();
        let (now_epoch, offset): (String, u64) =
            tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn))
                .await
                .map_err(unreachable)?
                .map_err(unreachable)?;
        let now_epoch = Epoch::new(&now_epoch);
        if now_epoch != epoch {
            // Redis lost the channel and numbering restarted: this cache is
            // stale. The message itself is safely in the new epoch.
            hub.discard(&name, ch);
        } else {
            // Wait for the fan-out to bring it here (read-your-writes on
            // this node); bounded, since it is acknowledged by Redis anyway.
            let arrived = tokio::time::timeout(CALL_TIMEOUT, async {
                loop {
                    let done = {
                        let log = ch.read();
                        log.head() >= offset || log.is_evicted()
                    };
                    if done || woken.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            if arrived.is_err() {
                tracing::warn!(channel = %name, offset, "published message not yet fanned out to this node");
            }
        }
        Ok(Appended::Done(Published {
            epoch: now_epoch,
            offset,
        }))
    }

    fn ready(&self) -> Result<(), BackendError> {
        if self.shared.up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(BackendError::Unavailable(
                "redis unreachable; reconnecting (publishes and reads resume when it is back)"
                    .into(),
            ))
        }
    }

    async fn close(&self) {
        self.shared.stop.cancel();
        self.shared.up.store(false, Ordering::Release);
        let task = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}
