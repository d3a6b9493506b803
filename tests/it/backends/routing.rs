//! Per-channel routing on a real `redis-server`: a node receives a
//! channel's fan-out only while it holds the channel (`PUBSUB NUMSUB`),
//! a cold subscribe in the middle of a publish storm is gap-free, and a
//! node holding thousands of channels resubscribes all of them after its
//! pub/sub connection is killed, losing nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures_util::{StreamExt, TryStreamExt, stream};
use redis::aio::MultiplexedConnection;
use serde_json::json;

use super::{Redis, post};
use crate::helpers::*;

async fn node(redis: &Redis) -> Result<TestServer> {
    let url = redis.url();
    TestServer::spawn_with(|c| c.redis = Some(url)).await
}

/// A plain Redis connection for looking at what the nodes did.
async fn inspect(redis: &Redis) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(redis.url())?;
    within(
        "redis connection",
        client.get_multiplexed_async_connection(),
    )
    .await?
    .map_err(Into::into)
}

/// How many connections are subscribed to each channel's fan-out.
async fn numsub(conn: &mut MultiplexedConnection, channels: &[String]) -> Result<Vec<u64>> {
    let fans: Vec<String> = channels
        .iter()
        .map(|c| format!("ladder:{{{c}}}:fan"))
        .collect();
    let counts: Vec<(String, u64)> = within(
        "PUBSUB NUMSUB",
        redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&fans)
            .query_async(conn),
    )
    .await??;
    Ok(counts.into_iter().map(|(_, n)| n).collect())
}

/// Waits until NUMSUB of `channel` is `n`.
async fn numsub_becomes(conn: &mut MultiplexedConnection, channel: &str, n: u64) -> Result<()> {
    within(&format!("NUMSUB {channel} to become {n}"), async {
        loop {
            if numsub(conn, &[channel.to_owned()]).await? == [n] {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?
}

/// Sweeps far in the future until the node holds no channel (subscribers
/// that just closed release the channel a moment later).
async fn evict_all(s: &TestServer) -> Result<()> {
    within("every channel evicted", async {
        loop {
            s.ctx.hub.sweep(now_ms() + 3_600_000);
            if s.ctx.hub.channel_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn now_ms() -> u64 {
    ladder::hub::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_holding_a_channel_receive_it_and_eviction_unsubscribes() -> Result<()> {
    let redis = Redis::start().await?;
    let (a, b) = (node(&redis).await?, node(&redis).await?);
    let mut conn = inspect(&redis).await?;
    let (r1, r2) = ("route.1".to_owned(), "route.2".to_owned());
    assert_eq!(numsub(&mut conn, &[r1.clone(), r2.clone()]).await?, [0, 0]);

    let mut on_a = Ws::connect(&a).await?;
    on_a.subscribe(&r1, Some(0)).await?;
    assert_eq!(
        numsub(&mut conn, &[r1.clone(), r2.clone()]).await?,
        [1, 0],
        "only A, and only the channel it holds (subscribed before `subscribed`)"
    );
    let mut on_b = Ws::connect(&b).await?;
    on_b.subscribe(&r1, Some(0)).await?;
    assert_eq!(numsub(&mut conn, &[r1.clone(), r2.clone()]).await?, [2, 0]);

    // Still one sequence across the nodes.
    a.publish(&r1, json!("from a")).await?;
    b.publish(&r1, json!("from b")).await?;
    assert_eq!(offsets(&on_a.messages_until(2).await?), [1, 2]);
    assert_eq!(offsets(&on_b.messages_until(2).await?), [1, 2]);

    drop((on_a, on_b));
    evict_all(&a).await?;
    numsub_becomes(&mut conn, &r1, 1).await?;
    evict_all(&b).await?;
    numsub_becomes(&mut conn, &r1, 0).await?;

    // Held again, received again.
    let mut again = Ws::connect(&a).await?;
    again.subscribe(&r1, Some(2)).await?;
    assert_eq!(numsub(&mut conn, std::slice::from_ref(&r1)).await?, [1]);
    b.publish(&r1, json!("after eviction")).await?;
    assert_eq!(offsets(&again.messages_until(3).await?), [3]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_subscribe_during_a_publish_storm_is_gap_free() -> Result<()> {
    let redis = Redis::start().await?;
    let (a, b) = (node(&redis).await?, Arc::new(node(&redis).await?));
    let ch = "storm";
    let head = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // One publisher on B, bounded in count; A never publishes.
    let storm = tokio::spawn({
        let (b, head, stop) = (b.clone(), head.clone(), stop.clone());
        async move {
            for i in 0..50_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ack = b.publish(ch, json!(i)).await?;
                head.store(ack["offset"].as_u64().context("offset")?, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    });
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        ensure!(
            a.ctx.hub.channel_count() == 0,
            "round {round}: A must start cold"
        );
        let since = head.load(Ordering::Relaxed);
        let mut ws = Ws::connect(&a).await?;
        ws.subscribe(ch, Some(since)).await?;
        let got = offsets(&ws.messages_until(since + 40).await?);
        let want: Vec<u64> = (since + 1..=since + 40).collect();
        assert_eq!(got, want, "round {round}: from {since}");
        drop(ws);
        evict_all(&a).await?;
    }
    stop.store(true, Ordering::Relaxed);
    within("the storm to stop", storm).await???;
    Ok(())
}

/// Runs `f` on every channel, 32 at a time; results in channel order.
async fn for_all<T, Fut>(names: &[String], f: impl Fn(usize, String) -> Fut) -> Result<Vec<T>>
where
    Fut: Future<Output = Result<T>>,
{
    stream::iter(names.iter().cloned().enumerate())
        .map(|(i, c)| f(i, c))
        .buffered(32)
        .try_collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_channels_resubscribe_after_client_kill_and_lose_nothing() -> Result<()> {
    const N: usize = 2000;
    let redis = Redis::start().await?;
    let (a, b) = (node(&redis).await?, node(&redis).await?);
    let mut conn = inspect(&redis).await?;
    let names: Vec<String> = (0..N).map(|i| format!("many.{i}")).collect();

    // A holds every channel (a publish loads it), B none yet.
    for_all(&names, |i, c| {
        let a = &a;
        async move { a.publish(&c, json!(i)).await }
    })
    .await?;
    ensure!(a.ctx.hub.channel_count() == N);
    ensure!(numsub(&mut conn, &names).await?.iter().all(|&n| n == 1));

    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await?;
    ensure!(killed >= 1, "A's pub/sub connection killed ({killed})");
    let started = Instant::now();

    // Published on B right away: some land while A is reconnecting.
    for_all(&names, |i, c| {
        let b = &b;
        async move { accepted(b, &c, i).await }
    })
    .await?;
    for_all(&names, |_, c| {
        let a = &a;
        async move { read_to(a, &c, 2).await }
    })
    .await?;
    println!(
        "{N} channels: resubscribed and caught up within {} ms of CLIENT KILL",
        started.elapsed().as_millis()
    );
    assert!(
        numsub(&mut conn, &names).await?.iter().all(|&n| n == 2),
        "every channel subscribed by both nodes again"
    );
    // Live after the reconnect, not only caught up.
    for_all(&names, |i, c| {
        let b = &b;
        async move { accepted(b, &c, i).await }
    })
    .await?;
    let got = for_all(&names, |_, c| {
        let a = &a;
        async move { read_to(a, &c, 3).await }
    })
    .await?;
    for (c, msgs) in names.iter().zip(&got) {
        assert_eq!(offsets(msgs), [1, 2, 3], "channel {c}");
    }
    Ok(())
}

/// Publishes, retrying while the node reconnects (503: nothing written).
async fn accepted(s: &TestServer, ch: &str, i: usize) -> Result<()> {
    within("a publish accepted", async {
        loop {
            let (status, body) = post(&s.http, &s.base, ch, &json!(i)).await?;
            if status == 201 {
                return Ok(());
            }
            ensure!(status == 503, "{status}: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?
}

/// Every message of a channel up to offset `last`, long-polling from the
/// start (503 while the node reconnects is waited out).
async fn read_to(s: &TestServer, ch: &str, last: u64) -> Result<Vec<serde_json::Value>> {
    within("reading a channel", async {
        let mut got: Vec<serde_json::Value> = Vec::new();
        let mut since = 0;
        while since < last {
            let (status, body) = s
                .get_json(&format!("/api/channels/{ch}/messages?since={since}&wait=5"))
                .await?;
            if status == 503 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            ensure!(status == 200, "{status}: {body}");
            got.extend(body["messages"].as_array().cloned().unwrap_or_default());
            since = body["next"].as_u64().context("next")?;
        }
        Ok(got)
    })
    .await?
}
