//! Ladder on a real Redis Cluster: three `redis-server` masters started
//! with `--cluster-enabled yes` and joined by `redis-cli --cluster create`.
//! Two Ladder nodes share channels spread over every shard; the sharded
//! fan-out reaches only the nodes holding a channel (`PUBSUB
//! SHARDNUMSUB`), and `redis-cli --cluster reshard` moving the slots of
//! some channels while they are published to leaves every subscriber with
//! every message exactly once, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tokio::process::Command;

use super::Redis;
use crate::helpers::*;
use ladder_testkit::within_for;

/// The Cluster's slot count.
const SLOTS: u16 = 16384;

/// Three masters, slots split evenly by `redis-cli --cluster create`.
struct Cluster {
    masters: Vec<Redis>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `redis-cli` with `args`, bounded; fails with its output.
async fn redis_cli(args: &[String]) -> Result<String> {
    let out = match Command::new("redis-cli")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("redis-cli is not installed; run scripts/setup (it installs redis-tools)")
        }
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "redis-cli {args:?}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

async fn conn(port: u16) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    Ok(within(
        "redis connection",
        client.get_multiplexed_async_connection(),
    )
    .await??)
}

async fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> Result<T> {
    let mut c = conn(port).await?;
    Ok(within("a redis command", cmd.query_async(&mut c)).await??)
}

impl Cluster {
    async fn start() -> Result<Self> {
        let mut masters = Vec::new();
        for _ in 0..3 {
            // The bus port on a free port of its own (the default, port +
            // 10000, may be taken or out of range).
            let bus = free_port()?.to_string();
            masters.push(
                Redis::start_args(&["--cluster-enabled", "yes", "--cluster-port", &bus]).await?,
            );
        }
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(masters.iter().map(|r| format!("127.0.0.1:{}", r.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        within("redis-cli --cluster create", redis_cli(&args)).await??;
        let c = Self { masters };
        within("every master to see the cluster ok", async {
            for m in &c.masters {
                loop {
                    let info: String = query(m.port, redis::cmd("CLUSTER").arg("INFO")).await?;
                    if info.contains("cluster_state:ok") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            anyhow::Ok(())
        })
        .await??;
        Ok(c)
    }

    fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.masters[0].port)
    }

    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.masters.iter().map(|m| m.port)
    }

    /// The port of the master serving `slot` now.
    async fn owner(&self, slot: u16) -> Result<u16> {
        let ranges: Vec<Vec<redis::Value>> =
            query(self.masters[0].port, redis::cmd("CLUSTER").arg("SLOTS")).await?;
        for r in ranges {
            let (lo, hi): (u16, u16) = (
                redis::from_redis_value(r[0].clone())?,
                redis::from_redis_value(r[1].clone())?,
            );
            if (lo..=hi).contains(&slot) {
                let master: Vec<redis::Value> = redis::from_redis_value(r[2].clone())?;
                return Ok(redis::from_redis_value(master[1].clone())?);
            }
        }
        bail!("slot {slot} not served")
    }

    async fn id(port: u16) -> Result<String> {
        query(port, redis::cmd("CLUSTER").arg("MYID")).await
    }

    /// The slot of channel `c`'s keys and fan-out, asked of Redis.
    async fn slot(&self, c: &str) -> Result<u16> {
        let mut conn = conn(self.masters[0].port).await?;
        Self::slot_on(&mut conn, c).await
    }

    async fn slot_on(conn: &mut MultiplexedConnection, c: &str) -> Result<u16> {
        let cmd = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("ladder:{{{c}}}:fan"))
            .to_owned();
        Ok(within("CLUSTER KEYSLOT", cmd.query_async(conn)).await??)
    }

    /// Connections subscribed to `c`'s sharded fan-out, summed over the
    /// masters (only the owner has any).
    async fn shardnumsub(&self, c: &str) -> Result<u64> {
        let mut total = 0;
        for port in self.ports() {
            let (_, n): (String, u64) = query(
                port,
                redis::cmd("PUBSUB")
                    .arg("SHARDNUMSUB")
                    .arg(format!("ladder:{{{c}}}:fan")),
            )
            .await?;
            total += n;
        }
        Ok(total)
    }

    /// Channel names `prefix.N`, the first found in each slot range.
    async fn channels(&self, prefix: &str, ranges: &[(u16, u16)]) -> Result<Vec<String>> {
        let mut found: Vec<Option<String>> = vec![None; ranges.len()];
        let mut conn = conn(self.masters[0].port).await?;
        for i in 0..20_000 {
            let c = format!("{prefix}.{i}");
            let slot = Self::slot_on(&mut conn, &c).await?;
            if let Some(k) = ranges
                .iter()
                .enumerate()
                .position(|(k, (lo, hi))| found[k].is_none() && (*lo..=*hi).contains(&slot))
            {
                found[k] = Some(c);
                if found.iter().all(Option::is_some) {
                    return Ok(found.into_iter().flatten().collect());
                }
            }
        }
        bail!("no channel names for every range")
    }
}

async fn node(cluster: &Cluster) -> Result<TestServer> {
    let url = cluster.url();
    TestServer::spawn_with(|c| c.redis = Some(url)).await
}

async fn becomes(cluster: &Cluster, c: &str, n: u64) -> Result<()> {
    within(&format!("SHARDNUMSUB {c} to become {n}"), async {
        while cluster.shardnumsub(c).await? != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    })
    .await?
}

async fn evict_all(s: &TestServer) -> Result<()> {
    within("every channel evicted", async {
        while s.ctx.hub.channel_count() != 0 {
            s.ctx.hub.sweep(ladder::hub::now_ms() + 3_600_000);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_fan_out_reaches_only_the_nodes_holding_a_channel() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (a, b) = (node(&cluster).await?, node(&cluster).await?);
    // One channel on each master.
    let third = SLOTS / 3;
    let names = cluster
        .channels(
            "route",
            &[
                (0, third - 1),
                (third + 1, 2 * third - 1),
                (2 * third + 1, SLOTS - 1),
            ],
        )
        .await?;
    let mut owners = std::collections::HashSet::new();
    for c in &names {
        owners.insert(cluster.owner(cluster.slot(c).await?).await?);
        assert_eq!(cluster.shardnumsub(c).await?, 0);
    }
    assert_eq!(owners.len(), 3, "the channels span every shard");

    let mut subs = Vec::new();
    for c in &names {
        let mut on_a = Ws::connect(&a).await?;
        on_a.subscribe(c, Some(0)).await?;
        assert_eq!(
            cluster.shardnumsub(c).await?,
            1,
            "{c}: A only, before `subscribed`"
        );
        let mut on_b = Ws::connect(&b).await?;
        on_b.subscribe(c, Some(0)).await?;
        assert_eq!(cluster.shardnumsub(c).await?, 2, "{c}: A and B");
        a.publish(c, json!("from a")).await?;
        b.publish(c, json!("from b")).await?;
        subs.push((on_a, on_b));
    }
    for (c, (on_a, on_b)) in names.iter().zip(&mut subs) {
        assert_eq!(offsets(&on_a.messages_until(2).await?), [1, 2], "{c} on A");
        assert_eq!(offsets(&on_b.messages_until(2).await?), [1, 2], "{c} on B");
    }
    drop(subs);
    evict_all(&a).await?;
    for c in &names {
        becomes(&cluster, c, 1).await?;
    }
    evict_all(&b).await?;
    for c in &names {
        becomes(&cluster, c, 0).await?;
    }
    Ok(())
}

/// Publishes `data` with an idempotency key, retrying (same key) while the
/// node answers 503 or the request fails; returns the acknowledged offset.
async fn publish_once(s: &TestServer, c: &str, key: &str, data: u64) -> Result<u64> {
    within("a publish acknowledged", async {
        loop {
            let sent = s
                .http
                .post(format!("{}/api/channels/{c}/messages", s.base))
                .header("Idempotency-Key", key)
                .json(&json!(data))
                .send()
                .await;
            if let Ok(resp) = sent {
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or_default();
                if status == 201 {
                    return body["offset"].as_u64().context("offset");
                }
                ensure!(status == 503, "{status}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_while_publishing_keeps_every_subscriber_exactly_once_in_order() -> Result<()> {
    const MOVED: u16 = 300;
    let cluster = Cluster::start().await?;
    let (from, to) = (cluster.owner(0).await?, cluster.owner(SLOTS - 1).await?);
    let (a, b) = (
        Arc::new(node(&cluster).await?),
        Arc::new(node(&cluster).await?),
    );
    // Two channels whose slots the reshard moves, and one on every master
    // besides.
    let third = SLOTS / 3;
    let names = cluster
        .channels(
            "reshard",
            &[
                (0, MOVED - 1),
                (0, MOVED - 1),
                (MOVED, third - 1),
                (third + 1, 2 * third - 1),
                (2 * third + 1, SLOTS - 1),
            ],
        )
        .await?;
    let mut subs = Vec::new();
    for c in &names {
        for s in [&a, &b] {
            let mut ws = Ws::connect(s.as_ref()).await?;
            ws.subscribe(c, Some(0)).await?;
            subs.push((c.clone(), ws));
        }
    }

    let rounds = Arc::new(AtomicU64::new(0));
    let resharded = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (a, b, names) = (a.clone(), b.clone(), names.clone());
        let (rounds, resharded) = (rounds.clone(), resharded.clone());
        async move {
            let mut after = 0;
            for r in 0..5_000u64 {
                let acks =
                    futures_util::future::try_join_all(names.iter().enumerate().map(|(i, c)| {
                        let s = if (r + i as u64).is_multiple_of(2) {
                            &a
                        } else {
                            &b
                        };
                        let key = format!("{c}-{r}");
                        async move { publish_once(s, c, &key, r).await }
                    }))
                    .await?;
                ensure!(acks.iter().all(|&o| o == r + 1), "round {r}: acks {acks:?}");
                rounds.store(r + 1, Ordering::Release);
                if resharded.load(Ordering::Acquire) {
                    after += 1;
                    if after == 10 {
                        break;
                    }
                }
            }
            anyhow::Ok(())
        }
    });
    within("publishing to start", async {
        while rounds.load(Ordering::Acquire) < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    let before = rounds.load(Ordering::Acquire);
    let args: Vec<String> = [
        "--cluster".to_owned(),
        "reshard".to_owned(),
        format!("127.0.0.1:{from}"),
        "--cluster-from".to_owned(),
        Cluster::id(from).await?,
        "--cluster-to".to_owned(),
        Cluster::id(to).await?,
        "--cluster-slots".to_owned(),
        MOVED.to_string(),
        "--cluster-yes".to_owned(),
    ]
    .into();
    within_for(
        Duration::from_secs(60),
        "redis-cli --cluster reshard",
        redis_cli(&args),
    )
    .await??;
    let during = rounds.load(Ordering::Acquire) - before;
    resharded.store(true, Ordering::Release);
    within("the publisher", publisher).await???;
    let total = rounds.load(Ordering::Acquire);
    println!(
        "{total} rounds of {} channels; {during} published during the reshard",
        names.len()
    );
    ensure!(during > 0, "publishes ran while the slots moved");
    for c in &names[..2] {
        ensure!(
            cluster.owner(cluster.slot(c).await?).await? == to,
            "{c}'s slot moved"
        );
    }
    for (c, ws) in &mut subs {
        let got = ws.messages_until(total).await?;
        assert_eq!(
            offsets(&got),
            (1..=total).collect::<Vec<_>>(),
            "{c}: every offset once"
        );
        let data: Vec<u64> = got.iter().filter_map(|m| m["data"].as_u64()).collect();
        assert_eq!(
            data,
            (0..total).collect::<Vec<_>>(),
            "{c}: every publish once, in order"
        );
    }
    Ok(())
}
