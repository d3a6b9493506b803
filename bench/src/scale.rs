//! Redis scaled out: 1, 2 and 4 Ladder nodes on one Redis, and on a
//! 3-master Redis Cluster, side by side in one run (part of `backends`).
//!
//! Each node gets its own share of the 32 WebSocket publishers, publishing
//! to eight channels of its own (`s<node>.<k>`), so no node holds another's
//! channels. Printed per row: acknowledged publishes/s over all nodes,
//! publish→deliver latency (publisher on the first node, subscriber on the
//! last), and from each node's hub the fan-out messages it received from
//! Redis during the throughput phase, per publish it handled, and how many
//! were for channels it did not hold. With per-channel (sharded) routing
//! the first ratio stays 1 and the second 0 however many nodes there are;
//! with one fan-out channel for everything a node would receive every
//! node's publishes (ratio = node count).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ladder_testkit::TestServer;

use crate::backends::{PUBLISHERS, THROUGHPUT_FOR, latency, publish, redis_server, start, ws};

/// Publishes/s over all nodes, each node's publishers on its own channels;
/// also the publishes each node acknowledged.
async fn throughput(urls: &[String]) -> Result<(f64, Vec<u64>)> {
    let deadline = Instant::now() + THROUGHPUT_FOR;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let node = p % urls.len();
        let mut ws = ws(&urls[node]).await?;
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                publish(&mut ws, &format!("s{node}.{}", p % 8), n).await?;
                n += 1;
            }
            anyhow::Ok((node, n as u64))
        }));
    }
    let started = Instant::now();
    let mut per_node = vec![0; urls.len()];
    for t in tasks {
        let (node, n) = t.await??;
        per_node[node] += n;
    }
    let total: u64 = per_node.iter().sum();
    Ok((total as f64 / started.elapsed().as_secs_f64(), per_node))
}

/// Three cluster-enabled masters joined by `redis-cli --cluster create`;
/// the processes (killed on drop) and the `redis+cluster://` URL.
async fn cluster() -> Result<(Vec<tokio::process::Child>, String)> {
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let bus = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
            .to_string();
        let (child, port) =
            redis_server(&["--cluster-enabled", "yes", "--cluster-port", &bus]).await?;
        procs.push(child);
        addrs.push(format!("127.0.0.1:{port}"));
    }
    let create = tokio::process::Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(30), create)
        .await
        .context("redis-cli --cluster create took too long")?
        .context("redis-cli (install redis-tools with scripts/setup)")?;
    if !status.success() {
        bail!("redis-cli --cluster create failed");
    }
    // Every master agrees the cluster is up before nodes connect.
    for a in &addrs {
        let (host, port) = a.rsplit_once(':').context("address")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = tokio::process::Command::new("redis-cli")
                .args(["-h", host, "-p", port, "cluster", "info"])
                .kill_on_drop(true)
                .output();
            let info = tokio::time::timeout(Duration::from_secs(5), info).await??;
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            if Instant::now() > deadline {
                bail!("cluster at {a} not ok");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok((procs, format!("redis+cluster://{}", addrs.join(","))))
}

/// One row: `n` nodes on `url`.
async fn row(topology: &str, url: &str, n: usize) -> Result<()> {
    let mut nodes: Vec<TestServer> = Vec::new();
    for _ in 0..n {
        let u = url.to_owned();
        nodes.push(start(|c| c.redis = Some(u)).await?);
    }
    let urls: Vec<String> = nodes.iter().map(TestServer::ws_url).collect();
    let before: Vec<(u64, u64)> = nodes.iter().map(|s| s.ctx.hub.fanout_received()).collect();
    let (tp, published) = throughput(&urls).await?;
    let (mut per_publish, mut unheld) = (Vec::new(), Vec::new());
    for ((s, b), p) in nodes.iter().zip(&before).zip(&published) {
        let (all, not_held) = s.ctx.hub.fanout_received();
        per_publish.push(format!("{:.2}", (all - b.0) as f64 / (*p).max(1) as f64));
        unheld.push((not_held - b.1).to_string());
    }
    let (ack, p50, p99) = latency(&urls[0], &urls[n - 1]).await?;
    println!(
        "| {topology} | {n} | {tp:.0} | {ack:.3} | {p50:.3} | {p99:.3} | {} | {} |",
        per_publish.join(" / "),
        unheld.join(" / ")
    );
    for s in nodes {
        s.shutdown().await?;
    }
    Ok(())
}

/// Prints the scale-out table.
pub async fn run() -> Result<()> {
    println!();
    println!(
        "| Redis | nodes | publishes/s (all nodes) | ack p50 ms | deliver p50 ms (first → last node) | deliver p99 ms | fan-out received per publish, per node | received for channels not held, per node |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    let (single, port) = redis_server(&[]).await?;
    for n in [1, 2, 4] {
        row("one server", &format!("redis://127.0.0.1:{port}"), n).await?;
    }
    drop(single);
    match cluster().await {
        Ok((procs, url)) => {
            for n in [1, 2, 4] {
                row("Cluster, 3 masters", &url, n).await?;
            }
            drop(procs);
        }
        Err(e) => eprintln!("skipping Redis Cluster rows: {e:#}"),
    }
    Ok(())
}
