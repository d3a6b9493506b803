//! Slots that change master while their channels are published to, on a
//! real Redis Cluster (the fixture is in `cluster.rs`): `redis-cli
//! --cluster reshard` moving some slots, and a replica taking over its
//! master's slots. Two Ladder nodes hold WebSocket subscribers on channels
//! of every shard while a publisher, retrying 503s with the same
//! `Idempotency-Key`, publishes through both.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::cluster::{Cluster, SLOTS, node, query, redis_cli};
use crate::helpers::*;
use ladder_testkit::within_for;

/// Publishes `data` with an idempotency key, retrying (same key) while the
/// node answers 503 or the request fails; returns the acknowledgement's body.
pub(super) async fn publish_acked(s: &TestServer, c: &str, key: &str, data: u64) -> Result<Value> {
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
                    return Ok(body);
                }
                ensure!(status == 503, "{status}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?
}

/// [`publish_acked`], returning the acknowledged offset.
async fn publish_once(s: &TestServer, c: &str, key: &str, data: u64) -> Result<u64> {
    let body = publish_acked(s, c, key, data).await?;
    body["offset"].as_u64().context("offset")
}

/// Publishes rounds to every channel of `names` (round `r` carries `r`,
/// alternating the two nodes), each acknowledged at offset `r + 1`, and
/// counts them in `rounds`; once `stop` is set, ten rounds more.
pub(super) fn publisher(
    nodes: [Arc<TestServer>; 2],
    names: Vec<String>,
    rounds: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut after = 0;
        for r in 0..5_000u64 {
            let acks =
                futures_util::future::try_join_all(names.iter().enumerate().map(|(i, c)| {
                    let s = &nodes[(r as usize + i) % 2];
                    let key = format!("{c}-{r}");
                    async move { publish_once(s, c, &key, r).await }
                }))
                .await?;
            ensure!(acks.iter().all(|&o| o == r + 1), "round {r}: acks {acks:?}");
            rounds.store(r + 1, Ordering::Release);
            if stop.load(Ordering::Acquire) {
                after += 1;
                if after == 10 {
                    break;
                }
            }
        }
        anyhow::Ok(())
    })
}

/// Waits until `rounds` reaches `n`.
pub(super) async fn published(rounds: &AtomicU64, n: u64) -> Result<()> {
    within("publishing to go on", async {
        while rounds.load(Ordering::Acquire) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Every subscriber got rounds `0..total` at offsets `1..=total`: each
/// once, in order, with nothing else between (no `lagged`, no
/// `truncated`).
pub(super) async fn exactly_once(subs: &mut [(String, Ws)], total: u64) -> Result<()> {
    for (c, ws) in subs {
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

/// A WebSocket subscriber from offset 0 for each channel on each node.
pub(super) async fn subscribers(
    nodes: &[Arc<TestServer>; 2],
    names: &[String],
) -> Result<Vec<(String, Ws)>> {
    let mut subs = Vec::new();
    for c in names {
        for s in nodes {
            let mut ws = Ws::connect(s.as_ref()).await?;
            ws.subscribe(c, Some(0)).await?;
            subs.push((c.clone(), ws));
        }
    }
    Ok(subs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_while_publishing_keeps_every_subscriber_exactly_once_in_order() -> Result<()> {
    const MOVED: u16 = 300;
    let cluster = Cluster::start().await?;
    let (from, to) = (cluster.owner(0).await?, cluster.owner(SLOTS - 1).await?);
    let nodes = [
        Arc::new(node(&cluster).await?),
        Arc::new(node(&cluster).await?),
    ];
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
    let mut subs = subscribers(&nodes, &names).await?;
    let rounds = Arc::new(AtomicU64::new(0));
    let resharded = Arc::new(AtomicBool::new(false));
    let publishing = publisher(
        nodes.clone(),
        names.clone(),
        rounds.clone(),
        resharded.clone(),
    );
    published(&rounds, 5).await?;
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
    within("the publisher", publishing).await???;
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
    exactly_once(&mut subs, total).await
}

impl Cluster {
    /// Waits until `n` connections subscribe each of `names`' sharded
    /// fan-out, summed over every node: the new master or (as Redis
    /// allows) a replica of it.
    pub(super) async fn subscribed(&self, names: &[String], n: u64) -> Result<()> {
        within("the fan-out subscribed in its shard", async {
            for c in names {
                loop {
                    let mut got = 0;
                    for p in self.all_ports() {
                        let cmd = redis::cmd("PUBSUB")
                            .arg("SHARDNUMSUB")
                            .arg(format!("ladder:{{{c}}}:fan"))
                            .to_owned();
                        let (_, k): (String, u64) = query(p, &mut cmd.clone()).await?;
                        got += k;
                    }
                    if got == n {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            anyhow::Ok(())
        })
        .await?
    }

    /// The ports of the master serving `slot` and of a replica of it, once
    /// every node knows that replica and it has its master's data and
    /// follows its writes.
    pub(super) async fn replicated(&self, slot: u16) -> Result<(u16, u16)> {
        within_for(Duration::from_secs(30), "a replica in sync", async {
            loop {
                let mut seen = Vec::new();
                for p in self.all_ports() {
                    let (master, replicas) = self.shard(p, slot).await?;
                    seen.push((master, replicas.first().copied()));
                }
                if let Some(&(master, Some(replica))) = seen.first()
                    && seen.iter().all(|&s| s == (master, Some(replica)))
                {
                    let info: String =
                        query(replica, redis::cmd("INFO").arg("replication")).await?;
                    if info.contains("master_link_status:up") {
                        return anyhow::Ok((master, replica));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await?
    }

    /// Waits until every node but `gone` says `slot` is served by the master
    /// at `port`.
    pub(super) async fn served_by(&self, slot: u16, port: u16, gone: Option<u16>) -> Result<()> {
        within_for(Duration::from_secs(30), "the replica promoted", async {
            for p in self.all_ports() {
                if Some(p) == gone {
                    continue;
                }
                while self.shard(p, slot).await?.0 != port {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            anyhow::Ok(())
        })
        .await?
    }
}

/// One channel per master, and a second on the first master's slots (the
/// one failed over).
pub(super) async fn failover_channels(cluster: &Cluster, prefix: &str) -> Result<Vec<String>> {
    let third = SLOTS / 3;
    cluster
        .channels(
            prefix,
            &[
                (0, third - 1),
                (0, third - 1),
                (third + 1, 2 * third - 1),
                (2 * third + 1, SLOTS - 1),
            ],
        )
        .await
}

/// `CLUSTER FAILOVER` on a replica (no `FORCE`): its master stops taking
/// writes until the replica has them all, then hands its slots over. Nothing
/// acknowledged is lost, so every subscriber must get every publish exactly
/// once, in order, with no `lagged` or `truncated` in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_while_publishing_keeps_every_subscriber_exactly_once_in_order()
-> Result<()> {
    let cluster = Cluster::start_with_replicas().await?;
    let nodes = [
        Arc::new(node(&cluster).await?),
        Arc::new(node(&cluster).await?),
    ];
    let names = failover_channels(&cluster, "failover").await?;
    let slot = cluster.slot(&names[0]).await?;
    let (old, new) = cluster.replicated(slot).await?;
    let mut subs = subscribers(&nodes, &names).await?;
    let rounds = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let publishing = publisher(nodes.clone(), names.clone(), rounds.clone(), done.clone());
    published(&rounds, 5).await?;
    let before = rounds.load(Ordering::Acquire);
    let args = ["-p", &new.to_string(), "CLUSTER", "FAILOVER"].map(String::from);
    let ok = within("CLUSTER FAILOVER", redis_cli(&args)).await??;
    ensure!(ok.trim() == "OK", "CLUSTER FAILOVER: {ok}");
    cluster.served_by(slot, new, None).await?;
    let during = rounds.load(Ordering::Acquire) - before;
    done.store(true, Ordering::Release);
    within("the publisher", publishing).await???;
    let total = rounds.load(Ordering::Acquire);
    println!(
        "{total} rounds of {} channels; {during} published during the failover of {old} to {new}",
        names.len()
    );
    exactly_once(&mut subs, total).await?;
    // Each node subscribes each channel once: none left behind.
    cluster.subscribed(&names, 2).await
}
