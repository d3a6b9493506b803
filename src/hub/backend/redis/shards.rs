//! The fan-out under Redis Cluster: sharded pub/sub (`SSUBSCRIBE`, Redis
//! 7+), one subscriber connection per master, each channel subscribed on
//! the master that owns its slot (read from `CLUSTER SLOTS`).
//!
//! Why not redis-rs's cluster client for this too: it multiplexes
//! subscriptions with commands on one connection per node, and takes the
//! `sunsubscribe` Redis sends on its own when a slot moves away for the
//! reply to whatever command is in flight there. A publish's script could
//! then be answered with another's offsets. So commands go through the
//! cluster client ([`super::conn`]), which never subscribes, and the
//! fan-out through these connections, which only subscribe and PING. A
//! subscription counts as made when its `ssubscribe` confirmation comes
//! through the push stream — in order with the messages — never from a
//! command's reply.
//!
//! A slot that moves (resharding, failover) unsubscribes its channels on
//! the old master; each still held is subscribed on the new owner and then
//! caught up from its stream, which moved with the slot, so nothing is
//! lost and duplicates are dropped by offset. Redirects and missing
//! confirmations are retried a bounded number of times; past that the
//! session ends and the listener reconnects (subscribers told `lagged`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, PushInfo, PushKind};
use redis::{ProtocolVersion, Value};
use tokio::sync::{mpsc, oneshot};

use super::conn::Commands;
use super::listener::{self, Cmd, PING_EVERY};
use super::{CALL_TIMEOUT, Shared, unreachable};
use crate::hub::{BackendError, ChannelName};

/// Pushes (messages, confirmations) queued from all shard connections.
/// When full the session ends and restarts caught up, as a Redis output
/// buffer limit would end it.
const PUSH_QUEUE: usize = 65_536;

/// Attempts to subscribe one channel before the session gives up.
const ATTEMPTS: u32 = 8;

/// Slot map reads at most this often while slots move.
const REFRESH_EVERY: Duration = Duration::from_millis(50);

/// A reply to a subscription request.
type Reply = oneshot::Sender<Result<(), BackendError>>;

/// The bounded queue the shard connections push into (redis-rs wants a
/// sender that never blocks).
#[derive(Clone)]
struct Queue {
    tx: mpsc::Sender<PushInfo>,
    full: Arc<AtomicBool>,
}

impl AsyncPushSender for Queue {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match self.tx.try_send(info) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.full.store(true, Ordering::Release);
                Err(SendError)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError),
        }
    }
}

/// A channel whose subscription is not yet confirmed.
struct Pending {
    waiters: Vec<Reply>,
    attempts: u32,
    deadline: Instant,
    /// The master it was sent to (none yet: waiting for an unsubscribe).
    at: Option<String>,
    /// Catch the channel up once confirmed (its slot moved).
    catch_up: bool,
}

/// One session's subscriptions across the Cluster's masters.
struct Shards<'a> {
    shared: &'a Shared,
    /// The first seed, whose credentials every shard connection uses.
    seed: ConnectionInfo,
    queue: Queue,
    conns: HashMap<String, MultiplexedConnection>,
    /// `(first slot, last slot, master "host:port")`.
    slots: Vec<(u16, u16, String)>,
    refreshed: Option<Instant>,
    /// Confirmed subscriptions and the master holding each.
    subscribed: HashMap<ChannelName, String>,
    /// Unsubscribes sent, not yet confirmed.
    leaving: HashSet<ChannelName>,
    pending: HashMap<ChannelName, Pending>,
    /// Subscribe commands answered with an error (`MOVED`, …).
    failed: mpsc::Sender<ChannelName>,
}

/// One connection's life under Cluster: subscribe every held channel on
/// its master, catch them up, then deliver and follow moving slots.
pub(super) async fn session(
    shared: &Shared,
    seed: &ConnectionInfo,
    cmds: &mut mpsc::Receiver<Cmd>,
    first: &mut Option<oneshot::Sender<()>>,
    backoff: &mut Duration,
) -> Result<(), BackendError> {
    let (tx, mut pushes) = mpsc::channel(PUSH_QUEUE);
    let full = Arc::new(AtomicBool::new(false));
    let (failed, mut failures) = mpsc::channel(1024);
    let mut s = Shards {
        shared,
        seed: seed.clone(),
        queue: Queue {
            tx,
            full: full.clone(),
        },
        conns: HashMap::new(),
        slots: Vec::new(),
        refreshed: None,
        subscribed: HashMap::new(),
        leaving: HashSet::new(),
        pending: HashMap::new(),
        failed,
    };
    s.refresh().await?;
    for name in shared.wanted() {
        s.begin(name, None, false).await?;
    }
    let mut ready = false;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(CALL_TIMEOUT / 4);
    loop {
        if !ready && s.pending.is_empty() {
            listener::serve(shared, first, backoff).await?;
            ready = true;
        }
        tokio::select! {
            push = pushes.recv() => {
                if full.load(Ordering::Acquire) {
                    return Err(BackendError::Unavailable("the fan-out queue overflowed".into()));
                }
                let Some(push) = push else { return Ok(()) };
                s.on_push(push).await?;
            }
            Some(Cmd::Subscribe(name, reply)) = cmds.recv() => s.begin(name, Some(reply), false).await?,
            Some(name) = failures.recv() => s.retry(name, "refused").await?,
            () = shared.swept.notified() => s.release().await,
            _ = ping.tick() => s.ping().await?,
            _ = check.tick() => s.expire().await?,
        }
    }
}

/// The fan-out channel's channel name (`ladder:{C}:fan` → `C`).
fn channel_of(v: Option<&Value>) -> Option<ChannelName> {
    let Some(Value::BulkString(b)) = v else {
        return None;
    };
    let s = std::str::from_utf8(b).ok()?;
    let inner = s.strip_prefix("ladder:{")?.strip_suffix("}:fan")?;
    ChannelName::parse(inner).ok()
}

/// The cluster slot of a key: CRC16 of its hash tag (the part between the
/// first `{` and the next `}`, if not empty) or of the whole key, mod 16384.
pub(super) fn slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let tagged = b.iter().position(|&c| c == b'{').and_then(|open| {
        let rest = &b[open + 1..];
        let close = rest.iter().position(|&c| c == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(b)) % 16384
}

/// The masters' slot ranges, from `CLUSTER SLOTS`.
pub(super) async fn slot_map(conn: &Commands) -> Result<Vec<(u16, u16, String)>, BackendError> {
    let mut conn = conn.clone();
    let reply: Value = tokio::time::timeout(
        CALL_TIMEOUT,
        redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn),
    )
    .await
    .map_err(unreachable)?
    .map_err(unreachable)?;
    let bad = || BackendError::Unavailable("redis: malformed CLUSTER SLOTS reply".into());
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut map = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Value::Array(r) = r else {
            return Err(bad());
        };
        let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(master))) =
            (r.first(), r.get(1), r.get(2))
        else {
            return Err(bad());
        };
        let (Some(Value::BulkString(host)), Some(Value::Int(port))) =
            (master.first(), master.get(1))
        else {
            return Err(bad());
        };
        let host = String::from_utf8_lossy(host);
        map.push((*lo as u16, *hi as u16, format!("{host}:{port}")));
    }
    Ok(map)
}

/// A connection to the master at `addr` ("host:port") with the seed's
/// credentials.
pub(super) fn master_info(
    seed: &ConnectionInfo,
    addr: &str,
) -> Result<ConnectionInfo, BackendError> {
    let bad = || BackendError::Unavailable(format!("redis: bad node address {addr}"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    Ok(seed
        .clone()
        .set_addr(ConnectionAddr::Tcp(host.to_owned(), port)))
}

impl Shards<'_> {
    /// Reads the slot map again (at most every [`REFRESH_EVERY`]).
    async fn refresh(&mut self) -> Result<(), BackendError> {
        if self.refreshed.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return Ok(());
        }
        self.slots = slot_map(&self.shared.conn).await?;
        self.refreshed = Some(Instant::now());
        Ok(())
    }

    fn owner(&self, name: &ChannelName) -> Option<String> {
        let slot = slot(&super::fanout_channel(name));
        self.slots
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            .map(|(_, _, addr)| addr.clone())
    }

    async fn conn(&mut self, addr: &str) -> Result<MultiplexedConnection, BackendError> {
        if let Some(c) = self.conns.get(addr) {
            return Ok(c.clone());
        }
        let info = master_info(&self.seed, addr)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings)).map_err(unreachable)?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_push_sender(self.queue.clone());
        let conn = tokio::time::timeout(
            CALL_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&cfg),
        )
        .await
        .map_err(unreachable)?
        .map_err(unreachable)?;
        self.conns.insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Starts subscribing `name` (or adds a waiter to the attempt under
    /// way). `catch_up`: its slot moved, so catch it up once confirmed.
    async fn begin(
        &mut self,
        name: ChannelName,
        reply: Option<Reply>,
        catch_up: bool,
    ) -> Result<(), BackendError> {
        if !catch_up && self.subscribed.contains_key(&name) && !self.leaving.contains(&name) {
            if let Some(r) = reply {
                let _ = r.send(Ok(()));
            }
            return Ok(());
        }
        let fresh = !self.pending.contains_key(&name);
        let p = self.pending.entry(name.clone()).or_insert_with(|| Pending {
            waiters: Vec::new(),
            attempts: 0,
            deadline: Instant::now() + CALL_TIMEOUT,
            at: None,
            catch_up: false,
        });
        p.waiters.extend(reply);
        p.catch_up |= catch_up;
        // An unsubscribe in flight would undo this subscribe: send it once
        // the unsubscribe is confirmed.
        if fresh && !self.leaving.contains(&name) {
            self.send(&name).await?;
        }
        Ok(())
    }

    /// Sends `SSUBSCRIBE` to the owner of `name`'s slot; the confirmation
    /// arrives as a push, an error reply through `failed`.
    async fn send(&mut self, name: &ChannelName) -> Result<(), BackendError> {
        let Some(addr) = self.owner(name) else {
            return Err(BackendError::Unavailable(format!(
                "redis cluster: no master serves the slot of channel {name}"
            )));
        };
        let mut conn = self.conn(&addr).await?;
        if let Some(p) = self.pending.get_mut(name) {
            p.attempts += 1;
            p.deadline = Instant::now() + CALL_TIMEOUT;
            p.at = Some(addr);
        }
        let (fan, name, failed) = (
            super::fanout_channel(name),
            name.clone(),
            self.failed.clone(),
        );
        tokio::spawn(async move {
            let sent = tokio::time::timeout(
                CALL_TIMEOUT,
                redis::cmd("SSUBSCRIBE")
                    .arg(fan)
                    .query_async::<Value>(&mut conn),
            )
            .await;
            if matches!(sent, Ok(Err(_) | Ok(Value::ServerError(_)))) {
                // Full: the deadline retries it instead.
                let _ = failed.try_send(name);
            }
        });
        Ok(())
    }

    /// Tries `name` again on a fresh slot map, or gives up the session.
    async fn retry(&mut self, name: ChannelName, why: &str) -> Result<(), BackendError> {
        let Some(p) = self.pending.get(&name) else {
            return Ok(());
        };
        if p.attempts >= ATTEMPTS {
            return Err(BackendError::Unavailable(format!(
                "redis cluster: subscribing channel {name} {why} {ATTEMPTS} times"
            )));
        }
        self.refresh().await?;
        self.send(&name).await
    }

    /// Retries subscriptions not confirmed by their deadline.
    async fn expire(&mut self) -> Result<(), BackendError> {
        let now = Instant::now();
        let late: Vec<ChannelName> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in late {
            self.leaving.remove(&name);
            self.retry(name, "was not confirmed").await?;
        }
        Ok(())
    }

    async fn on_push(&mut self, push: PushInfo) -> Result<(), BackendError> {
        match push.kind {
            PushKind::SMessage => {
                if let Some(Value::BulkString(payload)) = push.data.get(1) {
                    listener::deliver(self.shared, payload).await?;
                }
            }
            PushKind::SSubscribe => {
                let Some(name) = channel_of(push.data.first()) else {
                    return Ok(());
                };
                let Some(p) = self.pending.remove(&name) else {
                    return Ok(());
                };
                self.subscribed
                    .insert(name.clone(), p.at.unwrap_or_default());
                for w in p.waiters {
                    let _ = w.send(Ok(()));
                }
                if p.catch_up
                    && let Some(hub) = self.shared.hub()
                    && let Some(ch) = hub.lookup(&name)
                {
                    self.shared.catch_up(&hub, &ch).await?;
                }
            }
            PushKind::SUnsubscribe => {
                let Some(name) = channel_of(push.data.first()) else {
                    return Ok(());
                };
                if self.leaving.remove(&name) {
                    self.subscribed.remove(&name);
                    if self.pending.contains_key(&name) {
                        self.send(&name).await?;
                    }
                } else if self.subscribed.remove(&name).is_some() && self.wants(&name) {
                    // Redis dropped it: the slot moved to another master.
                    tracing::debug!(channel = %name, "slot moved; subscribing on its new master");
                    self.refresh().await?;
                    self.begin(name, None, true).await?;
                }
            }
            PushKind::Disconnection => {
                return Err(BackendError::Unavailable(
                    "a redis cluster connection closed".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn wants(&self, name: &ChannelName) -> bool {
        self.shared.loads().contains_key(name)
            || self.shared.hub().is_some_and(|h| h.lookup(name).is_some())
    }

    /// Unsubscribes channels the node no longer holds or loads.
    async fn release(&mut self) {
        let wanted = self.shared.wanted();
        let gone: Vec<(ChannelName, String)> = self
            .subscribed
            .iter()
            .filter(|(n, _)| {
                !wanted.contains(*n) && !self.leaving.contains(*n) && !self.pending.contains_key(*n)
            })
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        for (name, addr) in gone {
            let Some(mut conn) = self.conns.get(&addr).cloned() else {
                continue;
            };
            self.leaving.insert(name.clone());
            let fan = super::fanout_channel(&name);
            // Confirmed through the push stream; a failure leaves it
            // subscribed until the next sweep or session.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    CALL_TIMEOUT,
                    redis::cmd("SUNSUBSCRIBE")
                        .arg(fan)
                        .query_async::<Value>(&mut conn),
                )
                .await;
            });
        }
    }

    /// PINGs every shard connection; any reply will do (a reply may be
    /// one the connection took for another command's, see the module doc).
    async fn ping(&mut self) -> Result<(), BackendError> {
        let pings = self.conns.values().cloned().map(|mut c| async move {
            tokio::time::timeout(
                CALL_TIMEOUT,
                redis::cmd("PING").query_async::<Value>(&mut c),
            )
            .await
            .map_err(|_| BackendError::Unavailable("redis did not answer PING in time".into()))?
            .map_err(unreachable)
        });
        futures_util::future::try_join_all(pings).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::slot;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values from CLUSTER KEYSLOT on redis-server 7.0.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("ladder:{foo}:fan"), 12182);
        assert_eq!(slot("ladder:{foo}:head"), slot("ladder:{foo}:log"));
        assert_eq!(slot("{}x"), slot("{}x"));
    }
}
