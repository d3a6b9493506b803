//! Ladder on a real Redis Cluster: three `redis-server` masters started
//! with `--cluster-enabled yes` and joined by `redis-cli --cluster create`.
//! Two Ladder nodes share channels spread over every shard; the sharded
//! fan-out reaches only the nodes holding a channel (`PUBSUB
//! SHARDNUMSUB`). The fixture here ([`Cluster`]) also serves
//! `cluster_moves.rs`: slots that change master while published to.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use tokio::process::Command;

use super::{FREE_PORT, Redis};
use crate::helpers::*;
use ladder_testkit::within_for;

/// The Cluster's slot count.
pub(super) const SLOTS: u16 = 16384;

/// Three masters, slots split evenly by `redis-cli --cluster create`, and
/// (with [`Cluster::start_with_replicas`]) one replica each.
pub(super) struct Cluster {
    masters: Vec<Redis>,
    /// Started after the masters; which master each follows is redis-cli's
    /// choice (see [`Cluster::shard`]).
    replicas: Vec<Redis>,
}

/// Runs `redis-cli` with `args`, bounded; fails with its output.
pub(super) async fn redis_cli(args: &[String]) -> Result<String> {
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

pub(super) async fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> Result<T> {
    let mut c = conn(port).await?;
    Ok(within("a redis command", cmd.query_async(&mut c)).await??)
}

impl Cluster {
    pub(super) async fn start() -> Result<Self> {
        Self::start_full(0).await
    }

    /// Three masters with a replica each. A node is failed after 2 s
    /// unanswered (`cluster-node-timeout`), so a killed master's replica
    /// takes over within seconds.
    pub(super) async fn start_with_replicas() -> Result<Self> {
        Self::start_full(1).await
    }

    async fn start_full(replicas: usize) -> Result<Self> {
        let mut nodes = Vec::new();
        // Without replicas a failed node cannot be replaced: keep the
        // default timeout there, so a loaded machine never fails one.
        let timeout: &[&str] = if replicas > 0 {
            &["--cluster-node-timeout", "2000"]
        } else {
            &[]
        };
        for _ in 0..3 * (1 + replicas) {
            // The bus port on a free port of its own (the default, port +
            // 10000, may be taken or out of range).
            let mut args = vec!["--cluster-enabled", "yes", "--cluster-port", FREE_PORT];
            args.extend(timeout);
            nodes.push(Redis::start_args(&args).await?);
        }
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(nodes.iter().map(|r| format!("127.0.0.1:{}", r.port)));
        args.extend([
            "--cluster-replicas".to_owned(),
            replicas.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        within_for(
            Duration::from_secs(30),
            "redis-cli --cluster create",
            redis_cli(&args),
        )
        .await??;
        let replicas = nodes.split_off(3);
        let c = Self {
            masters: nodes,
            replicas,
        };
        within("every node to see the cluster ok", async {
            for m in c.masters.iter().chain(&c.replicas) {
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

    /// Kills (SIGKILL) the node at `port`, as a crash would.
    pub(super) async fn kill(&mut self, port: u16) -> Result<()> {
        for r in self.masters.iter_mut().chain(&mut self.replicas) {
            if r.port == port {
                r.stop().await?;
            }
        }
        Ok(())
    }

    /// Every node's port, replicas included.
    pub(super) fn all_ports(&self) -> Vec<u16> {
        self.masters
            .iter()
            .chain(&self.replicas)
            .map(|m| m.port)
            .collect()
    }

    /// The port of the master serving `slot` now.
    pub(super) async fn owner(&self, slot: u16) -> Result<u16> {
        Ok(self.shard(self.masters[0].port, slot).await?.0)
    }

    /// The ports of the master serving `slot` and of its replicas, as the
    /// node at `port` sees them.
    pub(super) async fn shard(&self, port: u16, slot: u16) -> Result<(u16, Vec<u16>)> {
        let ranges: Vec<Vec<redis::Value>> =
            query(port, redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let port_of = |v: &redis::Value| -> Result<u16> {
            let node: Vec<redis::Value> = redis::from_redis_value(v.clone())?;
            Ok(redis::from_redis_value(node[1].clone())?)
        };
        for r in ranges {
            let (lo, hi): (u16, u16) = (
                redis::from_redis_value(r[0].clone())?,
                redis::from_redis_value(r[1].clone())?,
            );
            if (lo..=hi).contains(&slot) {
                let replicas = r[3..].iter().map(port_of).collect::<Result<_>>()?;
                return Ok((port_of(&r[2])?, replicas));
            }
        }
        bail!("slot {slot} not served")
    }

    pub(super) async fn id(port: u16) -> Result<String> {
        query(port, redis::cmd("CLUSTER").arg("MYID")).await
    }

    /// The slot of channel `c`'s keys and fan-out, asked of Redis.
    pub(super) async fn slot(&self, c: &str) -> Result<u16> {
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
    pub(super) async fn channels(
        &self,
        prefix: &str,
        ranges: &[(u16, u16)],
    ) -> Result<Vec<String>> {
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

pub(super) async fn node(cluster: &Cluster) -> Result<TestServer> {
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
