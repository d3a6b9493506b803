//! The fan-out listener: one pub/sub connection per node (per master under
//! Cluster, see `shards`), subscribed to the fan-out channel of exactly the
//! channels this node holds. It commits
//! every announced message into its channel's ring in offset order, PINGs
//! Redis so that a host that vanished without closing the socket is
//! noticed, and reconnects with backoff.
//!
//! Entry point: [`run`], spawned once by `RedisBackend::connect`; the rest
//! of the backend talks to it through [`Cmd`]s and the sweep's `Notify`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot};

use redis::ConnectionInfo;

use super::conn::Target;
use super::{CALL_TIMEOUT, Shared, fanout_channel, shards, unreachable};
use crate::hub::{BackendError, ChannelName, Commit, Epoch};
use crate::protocol::{Data, Message};

/// First and longest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How often the pub/sub connection is sent a `PING`; with [`CALL_TIMEOUT`] for
/// the answer, a silent Redis is noticed within 7 s.
pub(super) const PING_EVERY: Duration = Duration::from_secs(5);

/// Channels per SUBSCRIBE / UNSUBSCRIBE command when many change at once
/// (after a reconnect, or a sweep), so no command is huge.
const BATCH: usize = 500;

/// Channels caught up at once after a reconnect.
const CATCH_UP_CONCURRENCY: usize = 16;

/// Keeps a channel subscribed while it loads; dropped once it is in the
/// hub's map (which keeps it from then on) or the load failed.
pub(super) struct Loading {
    shared: Arc<Shared>,
    name: ChannelName,
}

impl Loading {
    pub(super) fn new(shared: &Arc<Shared>, name: &ChannelName) -> Self {
        *shared.loads().entry(name.clone()).or_default() += 1;
        Self {
            shared: shared.clone(),
            name: name.clone(),
        }
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        let mut loads = self.shared.loads();
        if let Some(n) = loads.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                loads.remove(&self.name);
            }
        }
    }
}

/// A request to the listener.
pub(super) enum Cmd {
    /// Subscribe to a channel's fan-out; answered once Redis confirmed.
    Subscribe(ChannelName, oneshot::Sender<Result<(), BackendError>>),
}

/// Runs until the backend stops. `first` is told once the first
/// connection is live, so the node does not serve before it can fan out.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut cmds: mpsc::Receiver<Cmd>,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut backoff = BACKOFF_MIN;
    loop {
        let session = session(&shared, &mut cmds, &mut first, &mut backoff);
        let ended = tokio::select! {
            () = shared.stop.cancelled() => return,
            r = session => r,
        };
        if shared.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %ended.err().map_or_else(|| "connection closed".to_owned(), |e| e.to_string()),
                "lost redis; refusing publishes and ending subscriptions until it is back");
            if let Some(hub) = shared.hub() {
                for ch in hub.cached() {
                    ch.interrupt();
                }
            }
        }
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: to one server ([`single`]) or to a Cluster's
/// masters (`shards`).
async fn session(
    shared: &Shared,
    cmds: &mut mpsc::Receiver<Cmd>,
    first: &mut Option<oneshot::Sender<()>>,
    backoff: &mut Duration,
) -> Result<(), BackendError> {
    match &shared.target {
        Target::Single(info) => single(shared, info, cmds, first, backoff).await,
        Target::Cluster(seeds) => {
            let seed = seeds
                .first()
                .ok_or_else(|| unreachable("no cluster seed"))?;
            shards::session(shared, seed, cmds, first, backoff).await
        }
    }
}

/// Catches every held channel up from the streams, then serves: the node
/// is up again. Called once a session has subscribed to every held
/// channel, so whatever was published meanwhile is both in the stream and
/// on its way here (duplicates are ignored).
pub(super) async fn serve(
    shared: &Shared,
    first: &mut Option<oneshot::Sender<()>>,
    backoff: &mut Duration,
) -> Result<(), BackendError> {
    if let Some(hub) = shared.hub() {
        let started = Instant::now();
        let cached = hub.cached();
        let n = cached.len();
        let caught: Vec<_> = stream::iter(cached)
            .map(|ch| {
                let hub = &hub;
                async move { shared.catch_up(hub, &ch).await }
            })
            .buffer_unordered(CATCH_UP_CONCURRENCY)
            .collect()
            .await;
        caught.into_iter().collect::<Result<(), _>>()?;
        if first.is_none() {
            tracing::info!(
                channels = n,
                ms = started.elapsed().as_millis() as u64,
                "redis channels resubscribed and caught up"
            );
        }
    }
    shared.up.store(true, Ordering::Release);
    *backoff = BACKOFF_MIN;
    if let Some(tx) = first.take() {
        let _ = tx.send(());
    } else {
        tracing::info!("redis is back; serving again");
    }
    Ok(())
}

/// One connection's life on one server: subscribe to every held channel,
/// catch them up, then deliver, serve subscription changes and PING until
/// it fails.
async fn single(
    shared: &Shared,
    info: &ConnectionInfo,
    cmds: &mut mpsc::Receiver<Cmd>,
    first: &mut Option<oneshot::Sender<()>>,
    backoff: &mut Duration,
) -> Result<(), BackendError> {
    let client = redis::Client::open(info.clone()).map_err(unreachable)?;
    let pubsub = tokio::time::timeout(CALL_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(unreachable)?
        .map_err(unreachable)?;
    let (mut sink, mut messages) = pubsub.split();
    // Subscribed first, caught up second: whatever was published in between
    // is both in the stream and queued here, and duplicates are ignored.
    let mut subscribed: HashSet<ChannelName> = shared.wanted();
    let names: Vec<String> = subscribed.iter().map(fanout_channel).collect();
    for batch in names.chunks(BATCH) {
        call(sink.subscribe(batch)).await?;
    }
    serve(shared, first, backoff).await?;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { return Ok(()) };
                deliver(shared, msg.get_payload_bytes()).await?;
            }
            Some(cmd) = cmds.recv() => match cmd {
                Cmd::Subscribe(name, reply) => {
                    let done = call(sink.subscribe(fanout_channel(&name))).await;
                    subscribed.insert(name);
                    let _ = reply.send(done.clone());
                    done?;
                }
            },
            () = shared.swept.notified() => {
                unsubscribe_released(shared, &mut sink, &mut subscribed).await?;
            }
            _ = ping.tick() => {
                let _: redis::Value = call(sink.ping()).await?;
            }
        }
    }
}

/// Bounds one pub/sub call by [`CALL_TIMEOUT`].
async fn call<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, BackendError> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| BackendError::Unavailable("redis did not answer in time".into()))?
        .map_err(unreachable)
}

/// Unsubscribes from channels the node no longer holds or loads.
async fn unsubscribe_released(
    shared: &Shared,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<ChannelName>,
) -> Result<(), BackendError> {
    let wanted = shared.wanted();
    let gone: Vec<ChannelName> = subscribed.difference(&wanted).cloned().collect();
    for batch in gone.chunks(BATCH) {
        let names: Vec<String> = batch.iter().map(fanout_channel).collect();
        call(sink.unsubscribe(names)).await?;
        for n in batch {
            subscribed.remove(n);
        }
    }
    Ok(())
}

/// Parses `channel\nepoch\noffset\nts\ndata` and commits it, filling any
/// gap before it from the stream. A malformed message is logged and
/// skipped (the gap it leaves is filled from the stream by the next one);
/// a gap that cannot be filled ends the session, whose reconnect catches
/// every channel up.
pub(super) async fn deliver(shared: &Shared, payload: &[u8]) -> Result<(), BackendError> {
    let Some((name, msg)) = parse(payload) else {
        tracing::warn!("malformed fan-out message skipped");
        return Ok(());
    };
    let Some(hub) = shared.hub() else {
        return Ok(());
    };
    shared.received[0].fetch_add(1, Ordering::Relaxed);
    // A message for a channel still loading: `opened` catches it up.
    let Some(ch) = hub.lookup(&name) else {
        shared.received[1].fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    if ch.read().epoch() != msg.epoch() {
        hub.discard(&name, &ch);
        return Ok(());
    }
    if let Commit::Gap { .. } = ch.commit(msg) {
        shared.catch_up(&hub, &ch).await?;
    }
    Ok(())
}

fn parse(payload: &[u8]) -> Option<(ChannelName, Arc<Message>)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(5, '\n');
    let mut next = || parts.next();
    let (name, epoch, offset, ts, data) = (next()?, next()?, next()?, next()?, next()?);
    let name = ChannelName::parse(name).ok()?;
    let data = Data::parse(data.as_bytes(), usize::MAX).ok()?;
    let msg = Message::new(
        name.clone(),
        Epoch::new(epoch),
        offset.parse().ok()?,
        ts.parse().ok()?,
        &data,
    );
    Some((name, Arc::new(msg)))
}
