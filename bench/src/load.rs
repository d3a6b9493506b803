//! The fan-out workload: N subscribers of one transport on a fresh channel,
//! one WebSocket publisher offering `count` messages at `rate` per second
//! (or as fast as acknowledgements allow, with a bounded window), then a
//! bounded drain. Server CPU and RSS are sampled around the publishing
//! phase; `/api/stats` deltas give bytes and requests per delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{self, Kind, SubCtx};
use crate::probe::{Peer, Target};
use crate::report::LoadResult;
use crate::sys::{now_us, src_ip};
use crate::track::{Latencies, Tracker, payload};

/// What one run does.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Subscriber transport.
    pub kind: Kind,
    /// Subscribers.
    pub subs: usize,
    /// Messages offered per second; `None` = as fast as acks allow.
    pub rate: Option<f64>,
    /// Messages published.
    pub count: u64,
    /// Serialised size of each message's `data`, bytes.
    pub size: usize,
    /// Short-poll period.
    pub poll_interval: Duration,
    /// Source addresses to spread over.
    pub src_ips: usize,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// Longest wait for stragglers after the last publish.
    pub drain: Duration,
    /// Unacknowledged publishes allowed when `rate` is `None`.
    pub window: usize,
    /// WebTransport client endpoints.
    pub wt_endpoints: usize,
    /// A label for the report (e.g. "saturation").
    pub label: String,
    /// WebSocket subscribers that stop reading once subscribed.
    pub slow: usize,
}

impl LoadSpec {
    /// A small run: `subs` subscribers, `count` messages of 64 B at 1000/s.
    pub fn tiny(kind: Kind, subs: usize, count: u64) -> Self {
        Self {
            kind,
            subs,
            rate: Some(1000.0),
            count,
            size: 64,
            poll_interval: Duration::from_millis(50),
            src_ips: 2,
            connect_concurrency: 64,
            drain: Duration::from_secs(10),
            window: 64,
            wt_endpoints: 1,
            label: "smoke".into(),
            slow: 0,
        }
    }
}

/// A fresh channel name for one run.
pub fn fresh_channel(tag: &str) -> String {
    format!("bench.{tag}.{}.{}", std::process::id(), now_us())
}

/// Subscribers connected and ready, with the handles to stop and collect them.
pub struct Subscribers {
    /// Their shared context.
    pub ctx: Arc<SubCtx>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Tracker>>,
    /// Time to connect and subscribe all of them.
    pub connect_time: Duration,
    /// Subscribers that failed to connect (with the first reason).
    pub failed: (usize, Option<String>),
}

impl Subscribers {
    /// Connects `n` subscribers (at most `concurrency` connecting at once)
    /// and waits until every one is subscribed or failed.
    pub async fn connect(
        target: &Target,
        kind: Kind,
        channel: String,
        count: u64,
        n: usize,
        spec: &LoadSpec,
    ) -> Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let wt_endpoints = match (&target.wt, kind) {
            (Some((_, hash)), Kind::Wt | Kind::WtDatagram) => {
                clients::wt::endpoints(spec.wt_endpoints.max(1), spec.src_ips, hash)?
            }
            (None, Kind::Wt | Kind::WtDatagram) => bail!("the server offers no WebTransport"),
            _ => Vec::new(),
        };
        let ctx = Arc::new(SubCtx {
            target: target.clone(),
            kind,
            channel,
            count,
            lat: Arc::new(Latencies::new()),
            src_ips: spec.src_ips,
            poll_interval: spec.poll_interval,
            stop: stop_rx,
            slow: spec.slow,
            wt_endpoints,
            tls: match (kind.needs_tls(), &target.tls) {
                (true, Some(t)) => Some(clients::tls::Pinned::new(t.clone())?),
                (true, None) => bail!("the server runs no TLS listeners (--https)"),
                (false, _) => None,
            },
        });
        let gate = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        let mut readies = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = oneshot::channel();
            let (ctx, gate) = (ctx.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.ok();
                let (ptx, prx) = oneshot::channel();
                let run = tokio::spawn(clients::subscriber(ctx, i, ptx));
                let r = prx.await.unwrap_or_else(|_| Err("ended early".into()));
                drop(permit);
                let _ = tx.send(r);
                run.await.unwrap_or_default()
            }));
            readies.push(rx);
        }
        let mut failed = (0, None);
        for rx in readies {
            if let Err(e) = rx.await.unwrap_or_else(|_| Err("task ended".into())) {
                failed.0 += 1;
                failed.1.get_or_insert(e);
            }
        }
        Ok(Self {
            ctx,
            stop,
            tasks,
            connect_time: t0.elapsed(),
            failed,
        })
    }

    /// Waits until all subscribers finish or `deadline`, then stops the rest
    /// and returns every tracker.
    pub async fn finish(self, deadline: Instant) -> Vec<Tracker> {
        let mut out = Vec::with_capacity(self.tasks.len());
        let mut pending = Vec::new();
        for t in self.tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut t = t;
            match tokio::time::timeout(left, &mut t).await {
                Ok(r) => out.push(r.unwrap_or_default()),
                Err(_) => pending.push(t),
            }
        }
        let _ = self.stop.send(true);
        for t in pending {
            let r = tokio::time::timeout(Duration::from_secs(10), t).await;
            out.push(r.ok().and_then(Result::ok).unwrap_or_default());
        }
        out
    }
}

/// Runs one fan-out load and measures it.
pub async fn run(target: &Target, spec: &LoadSpec) -> Result<LoadResult> {
    let channel = fresh_channel(spec.kind.name());
    let subs = Subscribers::connect(
        target,
        spec.kind,
        channel.clone(),
        spec.count,
        spec.subs,
        spec,
    )
    .await?;
    if subs.failed.0 > 0 {
        let (n, why) = subs.failed.clone();
        let _ = subs.finish(Instant::now()).await;
        bail!(
            "{n} of {} {} subscribers failed to connect; first: {}",
            spec.subs,
            spec.kind.name(),
            why.unwrap_or_default()
        );
    }
    let connect_time = subs.connect_time;
    let lat = subs.ctx.lat.clone();
    let stats0 = target.stats().await;
    let proc0 = target.sample();
    let t0 = Instant::now();
    let published = publish(target, spec, &channel).await?;
    let publish_time = t0.elapsed();
    let trackers = subs.finish(Instant::now() + spec.drain).await;
    let elapsed = t0.elapsed();
    let proc1 = target.sample();
    let stats1 = target.stats().await;
    Ok(LoadResult::build(
        target,
        spec,
        &trackers,
        &lat,
        connect_time,
        publish_time,
        elapsed,
        published,
        (proc0, proc1),
        delta(&stats0, &stats1, spec.kind.stats_key()),
    ))
}

/// The change in one transport's `/api/stats` row (and the `api` row).
fn delta(a: &Value, b: &Value, key: &str) -> Option<(f64, f64, f64, f64, f64)> {
    let d = |f: &str| -> Option<f64> {
        Some(b["transports"][key][f].as_f64()? - a["transports"][key][f].as_f64()?)
    };
    Some((
        d("bytes_out")?,
        d("requests")?,
        d("messages_out")?,
        d("lagged")?,
        d("bytes_in")?,
    ))
}

/// Publishes `spec.count` messages over one WebSocket (Ladder ops, or
/// Socket.IO events with acks); returns how many were acknowledged.
pub async fn publish(target: &Target, spec: &LoadSpec, channel: &str) -> Result<u64> {
    let kind = match target.peer {
        Peer::Socketio => Kind::SocketIo,
        _ => Kind::Ws,
    };
    let ws = clients::ws::connect(target.http, kind, src_ip(0, 1)).await?;
    let (mut tx, mut rx) = ws.split();
    let window = Arc::new(Semaphore::new(spec.window.max(1)));
    let (acks_tx, acks_rx) = oneshot::channel::<u64>();
    let win = window.clone();
    let count = spec.count;
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let reader = tokio::spawn(async move {
        let mut acks = 0u64;
        while acks < count {
            match tokio::time::timeout(Duration::from_secs(60), rx.next()).await {
                Ok(Some(Ok(Message::Text(f)))) => {
                    if f.as_str() == "2" {
                        let _ = pong_tx.send(());
                    } else if clients::ws::is_ack(kind, f.as_str()) {
                        acks += 1;
                        win.add_permits(1);
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        let _ = acks_tx.send(acks);
    });
    let start = tokio::time::Instant::now();
    for k in 0..spec.count {
        if let Some(r) = spec.rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / r)).await;
        } else {
            window.acquire().await?.forget();
        }
        while pong_rx.try_recv().is_ok() {
            tx.send(Message::text("3")).await?;
        }
        let data = payload(now_us(), spec.size);
        tx.send(Message::text(clients::ws::publish_frame(
            kind,
            channel,
            &data,
            k + 1,
        )))
        .await
        .context("publish")?;
    }
    // Acks still missing after the drain period are not waited for (a
    // saturated peer may be seconds behind); the subscribers' drain starts
    // after this, so the run stays bounded by about 2 × drain.
    let acks = tokio::time::timeout(spec.drain, acks_rx)
        .await
        .map(Result::unwrap_or_default)
        .unwrap_or(0);
    reader.abort();
    let _ = tx.close().await;
    Ok(acks)
}
