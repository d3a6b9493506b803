//! The fan-out listener: one pub/sub connection per node that commits every
//! announced message into the local ring of its channel, in offset order,
//! and reconnects with backoff when Redis goes away.
//!
//! Entry point: [`run`], spawned once by `RedisBackend::connect`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::{CALL_TIMEOUT, FANOUT, Shared, unreachable};
use crate::hub::{ChannelName, Commit, Epoch, Inner};
use crate::protocol::{Data, Message};

/// First and longest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Runs until the backend stops. `first` is told once the first
/// subscription is live, so the node does not serve before it can fan out.
pub(super) async fn run(shared: Arc<Shared>, first: oneshot::Sender<()>) {
    let mut first = Some(first);
    let mut backoff = BACKOFF_MIN;
    loop {
        let session = session(&shared, &mut first, &mut backoff);
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

/// One connection's life: subscribe, catch every cached channel up, then
/// deliver until the connection drops.
async fn session(
    shared: &Shared,
    first: &mut Option<oneshot::Sender<()>>,
    backoff: &mut Duration,
) -> Result<(), crate::hub::BackendError> {
    let mut pubsub = tokio::time::timeout(CALL_TIMEOUT, shared.client.get_async_pubsub())
        .await
        .map_err(unreachable)?
        .map_err(unreachable)?;
    tokio::time::timeout(CALL_TIMEOUT, pubsub.subscribe(FANOUT))
        .await
        .map_err(unreachable)?
        .map_err(unreachable)?;
    let mut stream = pubsub.into_on_message();
    // Subscribed first, caught up second: whatever was published in between
    // is both in the stream and queued here, and duplicates are ignored.
    if let Some(hub) = shared.hub() {
        for ch in hub.cached() {
            shared.catch_up(&hub, &ch).await?;
        }
    }
    shared.up.store(true, Ordering::Release);
    *backoff = BACKOFF_MIN;
    if let Some(tx) = first.take() {
        let _ = tx.send(());
    } else {
        tracing::info!("redis is back; serving again");
    }
    while let Some(msg) = stream.next().await {
        if let Err(e) = deliver(shared, msg.get_payload_bytes()).await {
            tracing::warn!(error = %e, "fan-out message not delivered");
        }
    }
    Ok(())
}

/// Parses `channel\nepoch\noffset\nts\ndata` and commits it, filling any
/// gap before it from the stream.
async fn deliver(shared: &Shared, payload: &[u8]) -> Result<(), crate::hub::BackendError> {
    let bad = || crate::hub::BackendError::Unavailable("malformed fan-out message".into());
    let text = std::str::from_utf8(payload).map_err(|_| bad())?;
    let mut parts = text.splitn(5, '\n');
    let mut next = || parts.next().ok_or_else(bad);
    let (name, epoch, offset, ts, data) = (next()?, next()?, next()?, next()?, next()?);
    let name = ChannelName::parse(name).map_err(|_| bad())?;
    let Some(hub) = shared.hub() else {
        return Ok(());
    };
    // Channels this node does not cache are loaded from the stream on use.
    let Some(ch) = hub.lookup(&name) else {
        return Ok(());
    };
    let epoch = Epoch::new(epoch);
    if ch.read().epoch() != &epoch {
        hub.discard(&name, &ch);
        return Ok(());
    }
    let (offset, ts) = (
        offset.parse().map_err(|_| bad())?,
        ts.parse().map_err(|_| bad())?,
    );
    let data = Data::parse(data.as_bytes(), usize::MAX).map_err(|_| bad())?;
    let msg = Arc::new(Message::new(name, epoch, offset, ts, &data));
    if let Commit::Gap { .. } = ch.commit(msg) {
        fill(shared, &hub, &ch).await?;
    }
    Ok(())
}

/// Fetches the missing range before a stashed message from the stream.
async fn fill(
    shared: &Shared,
    hub: &Inner,
    ch: &Arc<crate::hub::Channel>,
) -> Result<(), crate::hub::BackendError> {
    shared.catch_up(hub, ch).await
}
