//! Publish throughput and publish→deliver latency of every log backend, side
//! by side, in one bounded run (well under a minute).
//!
//! Run with `cargo run --release -p ladder-bench -- backends`. It starts
//! in-process servers on loopback port 0 (the test kit's [`TestServer`]; and
//! a `redis-server` of its own, when installed) and prints a Markdown table:
//!
//! - throughput: acknowledged publishes per second from 32 WebSocket
//!   publishers (split over both nodes for "redis, 2 nodes"), each waiting
//!   for its ack before the next, over eight channels;
//! - latency: one publisher, one WebSocket subscriber (on the other node for
//!   "redis, 2 nodes"): time from sending a publish to the subscriber
//!   receiving it, and to the publisher receiving its ack.
//!
//! Then Redis scaled out ([`crate::scale`]): 1, 2 and 4 nodes on one Redis and on
//! a 3-master Redis Cluster (when `redis-cli` is installed to join it).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ladder::config::Config;
use ladder::hub::Fsync;
use ladder::stats::Transport;
use ladder_testkit::ws::{Ws, WsOptions};
use ladder_testkit::{TestServer, temp_dir};
use serde_json::json;

pub(crate) const PUBLISHERS: usize = 32;
pub(crate) const THROUGHPUT_FOR: Duration = Duration::from_secs(3);
const LATENCY_SAMPLES: usize = 300;

/// Starts a server with `f` applied; returns it (its WebSocket URL is
/// `ws_url()`).
pub(crate) async fn start(f: impl FnOnce(&mut Config)) -> Result<TestServer> {
    TestServer::spawn_with(|cfg| {
        cfg.disable = vec![Transport::WebTransport];
        // Measure the backends, not the per-connection publish limit.
        cfg.publish_rate = 0;
        f(cfg);
    })
    .await
}

pub(crate) async fn ws(url: &str) -> Result<Ws> {
    let opts = WsOptions {
        wait: Duration::from_secs(10),
        ..WsOptions::default()
    };
    Ws::connect_with(url, opts).await
}

pub(crate) async fn publish(ws: &mut Ws, channel: &str, i: usize) -> Result<()> {
    let op = json!({"op":"publish","channel":channel,"data":{"i":i,"pad":"0123456789abcdef0123456789abcdef"}});
    ws.send(op).await?;
    let ack = ws.recv().await?;
    if ack["op"] != "published" {
        bail!("publish refused: {ack}");
    }
    Ok(())
}

/// Acknowledged publishes per second, `PUBLISHERS` connections spread over
/// `urls`.
async fn throughput(urls: &[String]) -> Result<f64> {
    let deadline = Instant::now() + THROUGHPUT_FOR;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let mut ws = ws(&urls[p % urls.len()]).await?;
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                // Eight channels, so per-channel order and cross-channel
                // batching are both exercised.
                publish(&mut ws, &format!("tp{}", p % 8), n).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// (ack p50, deliver p50, deliver p99) in ms.
pub(crate) async fn latency(pub_url: &str, sub_url: &str) -> Result<(f64, f64, f64)> {
    let mut publisher = ws(pub_url).await?;
    let mut sub = ws(sub_url).await?;
    sub.subscribe("lat", None).await?;
    let (mut acks, mut delivers) = (Vec::new(), Vec::new());
    for i in 0..LATENCY_SAMPLES {
        let t0 = Instant::now();
        let op = json!({"op":"publish","channel":"lat","data":{"i":i}});
        publisher.send(op).await?;
        // Whichever comes first; both are awaited before the next publish.
        let (ack, msg) = tokio::join!(
            async {
                let v = publisher.recv().await;
                (v, t0.elapsed())
            },
            async {
                let v = sub.recv().await;
                (v, t0.elapsed())
            }
        );
        if ack.0?["op"] != "published" || msg.0?["op"] != "message" {
            bail!("unexpected frame");
        }
        acks.push(ack.1);
        delivers.push(msg.1);
    }
    acks.sort();
    delivers.sort();
    Ok((pct(&acks, 0.5), pct(&delivers, 0.5), pct(&delivers, 0.99)))
}

/// A throwaway `redis-server` on a free port, killed on drop.
async fn redis() -> Result<(tokio::process::Child, String)> {
    let (child, port) = redis_server(&[]).await?;
    Ok((child, format!("redis://127.0.0.1:{port}")))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `redis-server` with `extra` arguments on a free port; its port.
pub(crate) async fn redis_server(extra: &[&str]) -> Result<(tokio::process::Child, u16)> {
    let port = free_port()?;
    let dir = temp_dir("redis");
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(extra)
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("redis-server (install it with scripts/setup)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((child, port))
}

/// Runs every backend and prints the table.
pub async fn run() -> Result<()> {
    let mut servers = Vec::new();
    let mut rows = Vec::new();
    let durable = |fsync: Fsync, window_ms: u64| {
        let dir = temp_dir(&format!("{fsync:?}-{window_ms}"));
        move |c: &mut Config| {
            c.data_dir = Some(dir);
            c.fsync = fsync;
            c.group_commit_ms = window_ms;
        }
    };
    let mut add = |name: &'static str, s: TestServer| {
        let url = s.ws_url();
        rows.push((name, vec![url.clone()], url.clone(), url));
        servers.push(s);
    };
    add("memory", start(|_| {}).await?);
    add(
        "durable, fsync group, 1 ms window",
        start(durable(Fsync::Group, 1)).await?,
    );
    add(
        "durable, fsync group, 0 ms window",
        start(durable(Fsync::Group, 0)).await?,
    );
    add(
        "durable, fsync per-publish",
        start(durable(Fsync::PerPublish, 0)).await?,
    );
    let redis = match redis().await {
        Ok((child, url)) => {
            let u = url.clone();
            let a = start(|c| c.redis = Some(u)).await?;
            let b = start(|c| c.redis = Some(url)).await?;
            let (ua, ub) = (a.ws_url(), b.ws_url());
            add("redis, 1 node", a);
            rows.push((
                "redis, 2 nodes (latency: publish A, deliver B)",
                vec![ua.clone(), ub.clone()],
                ua,
                ub,
            ));
            servers.push(b);
            Some(child)
        }
        Err(e) => {
            eprintln!("skipping Redis rows: {e:#}");
            None
        }
    };
    println!(
        "| backend | publishes/s ({PUBLISHERS} WS publishers) | ack p50 ms | deliver p50 ms | deliver p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, pub_urls, pub_url, sub_url) in rows {
        let tp = throughput(&pub_urls).await?;
        let (ack, p50, p99) = latency(&pub_url, &sub_url).await?;
        println!("| {name} | {tp:.0} | {ack:.3} | {p50:.3} | {p99:.3} |");
    }
    // Let the servers close their files and connections before Redis goes.
    for s in servers {
        s.shutdown().await?;
    }
    drop(redis);
    crate::scale::run().await
}
