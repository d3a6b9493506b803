//! The fault-injecting soak: [`run`] starts the real binary, publishers
//! (HTTP, WebSocket, WebTransport) and subscribers on all five rungs, kills
//! and resumes subscribers and restarts the server (SIGTERM and SIGKILL in
//! turn) on the same ports, then checks every subscriber's record
//! ([`Report::check`]). Used by `examples/soak.rs` (full size) and
//! `tests/it/soak.rs` (CI size). The clients are this crate's.

mod check;
mod publishers;
mod server;
mod subscribers;

pub use check::{Report, Verdict};

use check::verify;
use publishers::{Acks, PubKind, ack_of, publisher};
use server::ServerProc;
use subscribers::{Endpoints, SubState, subscriber};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::net::free_port;
use anyhow::{Context, Result, ensure};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

/// Longest single network step before it counts as a failure.
pub(crate) const STEP: Duration = Duration::from_secs(5);
/// Longest wait for subscribers to catch up at the end.
pub(crate) const DRAIN: Duration = Duration::from_secs(30);

/// The five rungs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Rung {
    /// Short polling.
    Poll,
    /// Long polling.
    LongPoll,
    /// Server-Sent Events.
    Sse,
    /// WebSocket.
    WebSocket,
    /// A WebTransport bidirectional stream.
    WebTransport,
}

impl Rung {
    /// All of them.
    pub(crate) const ALL: [Self; 5] = [
        Self::Poll,
        Self::LongPoll,
        Self::Sse,
        Self::WebSocket,
        Self::WebTransport,
    ];
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Seconds of faults (publishing, kills, restarts).
    pub secs: u64,
    /// The `ladder` binary.
    pub server_bin: PathBuf,
    /// Extra server arguments (e.g. `--data-dir DIR`).
    pub server_args: Vec<String>,
    /// Channels; each has one publisher per kind and one subscriber per rung
    /// and `subs_per_rung`.
    pub channels: usize,
    /// Subscribers per rung per channel.
    pub subs_per_rung: usize,
    /// Pause between one publisher's publishes.
    pub publish_every: Duration,
    /// Range of seconds between server restarts.
    pub restart_every: (f64, f64),
    /// Range of seconds a subscriber connection lives before it is killed.
    pub kill_every: (f64, f64),
    /// Seed of the random choices (printed, so a run can be repeated).
    pub seed: u64,
    /// Fail if any truncation is announced (durable history).
    pub expect_no_truncation: bool,
    /// Where the server's certificates and log go.
    pub work_dir: PathBuf,
}

/// A small xorshift generator: reproducible from the seed, no dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded; a zero seed is replaced.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Seconds uniform in the range.
    pub(crate) fn secs(&mut self, (lo, hi): (f64, f64)) -> Duration {
        Duration::from_secs_f64(lo + (hi - lo) * self.unit())
    }
}

/// Capped exponential backoff with jitter.
pub(crate) struct Backoff {
    pub(crate) attempt: u32,
    pub(crate) rng: Rng,
}

impl Backoff {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            attempt: 0,
            rng: Rng::new(seed),
        }
    }

    pub(crate) async fn wait(&mut self) {
        let cap = 1000.0;
        let ms = (25.0 * 2f64.powi(self.attempt.min(10) as i32)).min(cap);
        self.attempt += 1;
        // "Equal jitter": half fixed, half random.
        let ms = ms / 2.0 + ms / 2.0 * self.rng.unit();
        sleep(Duration::from_secs_f64(ms / 1000.0)).await;
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Runs the soak and returns its figures (call [`Report::check`]).
pub async fn run(opts: Opts) -> Result<Report> {
    std::fs::create_dir_all(&opts.work_dir)?;
    let (http_port, h3_port) = (free_port(false)?, free_port(true)?);
    let localhost = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut server = ServerProc::new(&opts, localhost(http_port), localhost(h3_port));
    server.start().await?;
    let ep = Arc::new(Endpoints {
        http: format!("http://127.0.0.1:{http_port}"),
    });
    let channels: Vec<String> = (0..opts.channels).map(|i| format!("soak.{i}")).collect();
    let stop_subs = CancellationToken::new();
    let stop_pubs = CancellationToken::new();
    let acks = Arc::new(Acks::default());
    let mut rng = Rng::new(opts.seed);

    // Subscribers first, at `since=0`, so they should see everything.
    let mut subs = JoinSet::new();
    let mut progress = Vec::new();
    for channel in &channels {
        for rung in Rung::ALL {
            for _ in 0..opts.subs_per_rung {
                let p = Arc::new(Mutex::new((None, 0)));
                progress.push((channel.clone(), p.clone()));
                let st = SubState {
                    rung,
                    channel: channel.clone(),
                    recs: Vec::new(),
                    epoch: None,
                    last: 0,
                    progress: p,
                    resumes: 0,
                    reconnects: 0,
                };
                subs.spawn(subscriber(
                    st,
                    ep.clone(),
                    stop_subs.clone(),
                    opts.kill_every,
                    rng.next_u64(),
                ));
            }
        }
    }
    // Let every subscriber reach the server before the first publish.
    sleep(Duration::from_millis(500)).await;
    let mut pubs = JoinSet::new();
    for channel in &channels {
        for kind in [PubKind::Http, PubKind::WebSocket, PubKind::WebTransport] {
            pubs.spawn(publisher(
                kind,
                channel.clone(),
                ep.clone(),
                acks.clone(),
                stop_pubs.clone(),
                opts.publish_every,
                rng.next_u64(),
            ));
        }
    }

    // Faults: restart the server now and then, SIGTERM and SIGKILL in turn.
    let end = Instant::now() + Duration::from_secs(opts.secs);
    let mut graceful = rng.unit() < 0.5;
    loop {
        let next = Instant::now() + rng.secs(opts.restart_every);
        if next >= end {
            sleep(end.saturating_duration_since(Instant::now())).await;
            break;
        }
        tokio::time::sleep_until(next).await;
        server.stop(graceful).await?;
        graceful = !graceful;
        sleep(rng.secs((0.1, 1.5))).await;
        server.start().await?;
    }

    // Stop publishing, then publish one marker per channel and wait until
    // every subscriber has it.
    stop_pubs.cancel();
    let mut publish_failures = 0;
    while let Some(f) = pubs.join_next().await {
        publish_failures += f?;
    }
    let http = reqwest::Client::new();
    let mut markers = HashMap::new();
    for channel in &channels {
        let ack = crate::server::publish(&http, &ep.http, channel, &json!("end")).await?;
        ack_of(&acks, channel, &ack)?;
        markers.insert(
            channel.clone(),
            (
                ack["epoch"].as_str().context("epoch")?.to_owned(),
                ack["offset"].as_u64().context("offset")?,
            ),
        );
    }
    let caught_up = timeout(DRAIN, async {
        loop {
            let all = progress.iter().all(|(c, p)| {
                let (e, o) = &*p.lock().expect("progress lock");
                let (me, mo) = &markers[c];
                e.as_deref() == Some(me.as_str()) && o >= mo
            });
            if all {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok();
    stop_subs.cancel();
    let mut states = Vec::new();
    while let Some(st) = subs.join_next().await {
        states.push(st?);
    }
    server.stop(true).await?;
    // The final stop is not a restart.
    server.graceful -= 1;

    let acked = acks.by.lock().expect("acks lock");
    let mut report = Report {
        secs: opts.secs,
        server_args: opts.server_args.clone(),
        seed: opts.seed,
        published: acks.count.load(Ordering::Relaxed),
        publish_failures,
        restarts_graceful: server.graceful,
        restarts_killed: server.killed,
        caught_up,
        expect_no_truncation: opts.expect_no_truncation,
        ..Report::default()
    };
    for st in &states {
        let v = verify(&st.recs, acked.get(&st.channel));
        let row = report
            .rungs
            .entry(format!("{:?}", st.rung))
            .or_insert_with(|| (Verdict::default(), 0, 0));
        row.0.delivered += v.delivered;
        row.0.truncations += v.truncations;
        row.0.lagged += v.lagged;
        row.0.unannounced += v.unannounced;
        row.0.duplicates += v.duplicates;
        row.0.acked_missing += v.acked_missing;
        row.0.acked_missing_unexplained += v.acked_missing_unexplained;
        row.1 += st.resumes;
        row.2 += st.reconnects;
    }
    // A server that acks the same position twice has lost track of offsets.
    for (channel, epochs) in acked.iter() {
        for (epoch, offsets) in epochs {
            let unique: HashSet<_> = offsets.iter().collect();
            ensure!(
                unique.len() == offsets.len(),
                "{channel} epoch {epoch}: an offset was acked twice"
            );
        }
    }
    Ok(report)
}
