//! Keys that must not live, or not come back, wrongly: every key of a
//! channel carries `--redis-key-ttl` and expiry shows up as a new epoch
//! (`truncated` for resuming clients); a `head` lowered by hand rotates the
//! epoch; an eviction policy that could drop keys stops the server at start.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use super::Redis;
use crate::helpers::*;

async fn inspect(redis: &Redis) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(redis.url())?;
    Ok(within(
        "redis connection",
        client.get_multiplexed_async_connection(),
    )
    .await??)
}

fn key(ch: &str, what: &str) -> String {
    format!("ladder:{{{ch}}}:{what}")
}

/// Subscribes over WebSocket with `(epoch, since)`; returns the
/// `subscribed` reply and the frame after it.
async fn resume(s: &TestServer, ch: &str, epoch: &str, since: u64) -> Result<(Ws, Value, Value)> {
    let mut ws = Ws::connect(s).await?;
    ws.send(json!({"op":"subscribe","channel":ch,"since":since,"epoch":epoch}))
        .await?;
    let subscribed = ws.recv().await?;
    ensure!(subscribed["op"] == "subscribed", "{subscribed}");
    let next = ws.recv().await?;
    Ok((ws, subscribed, next))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_and_a_resume_with_the_old_epoch_is_truncated() -> Result<()> {
    let redis = Redis::start().await?;
    let mut conn = inspect(&redis).await?;
    let url = redis.url();
    let day = TestServer::spawn_with(|c| c.redis = Some(url.clone())).await?;
    let short = TestServer::spawn_with(|c| {
        c.redis = Some(url);
        c.redis_key_ttl = 1;
    })
    .await?;

    // The default: a day after the last publish, on every key.
    day.publish("kept", json!(1)).await?;
    let resp = day
        .http
        .post(day.url("/api/channels/kept/messages"))
        .header("Idempotency-Key", "k")
        .json(&json!(2))
        .send()
        .await?;
    ensure!(resp.status() == 201);
    for what in ["head", "epoch", "log", "seen", "seenq"] {
        let ttl: i64 = conn.pttl(key("kept", what)).await?;
        assert!(
            (1..=86_400_000).contains(&ttl),
            "{what}: PTTL {ttl} ms, want at most a day"
        );
    }
    // Polling a name nobody publishes to leaves nothing that lasts.
    let (status, _) = day
        .get_json("/api/channels/nobody/messages?since=0")
        .await?;
    assert_eq!(status, 200);
    let ttl: i64 = conn.pttl(key("nobody", "epoch")).await?;
    assert!(
        (1..=86_400_000).contains(&ttl),
        "epoch of an unused name: PTTL {ttl}"
    );

    // With a 1 s TTL, the channel is gone from Redis soon after.
    let ch = "short";
    let epoch = short.publish_count(ch, 3).await?;
    within("the channel's keys to expire", async {
        loop {
            let n: u64 = conn
                .exists(&[key(ch, "head"), key(ch, "epoch"), key(ch, "log")])
                .await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    // The node's copy goes with the sweep; used again, the channel is new.
    short.ctx.hub.sweep(ladder::hub::now_ms() + 3_600_000);
    let (_ws, subscribed, next) = resume(&short, ch, &epoch, 3).await?;
    let fresh = subscribed["epoch"].as_str().context("epoch")?;
    assert_ne!(fresh, epoch, "expiry is a new epoch");
    assert_eq!(
        (next["op"].as_str(), next["epoch"].as_str()),
        (Some("truncated"), Some(fresh)),
        "{next}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_head_by_hand_rotates_the_epoch() -> Result<()> {
    let redis = Redis::start().await?;
    let mut conn = inspect(&redis).await?;
    let s = TestServer::spawn_with(|c| c.redis = Some(redis.url())).await?;
    let ch = "rolled";
    let mut ws = Ws::connect(&s).await?;
    ws.subscribe(ch, Some(0)).await?;
    let old = s.publish_count(ch, 5).await?;
    ws.messages_until(5).await?;

    // What a restore from an older snapshot does to a channel.
    let () = conn.set(key(ch, "head"), 2).await?;
    let ack = s.publish(ch, json!("after the rollback")).await?;
    let new = ack["epoch"].as_str().context("epoch")?;
    assert_ne!(new, old, "the epoch rotated");
    let stored: String = conn.get(key(ch, "epoch")).await?;
    assert_eq!(stored, new, "in Redis, for every node");
    // The live subscriber is told, and resuming gets `truncated`.
    let told = ws.recv().await?;
    assert_eq!(
        (told["op"].as_str(), told["offset"].as_u64()),
        (Some("lagged"), Some(5))
    );
    let (mut ws, _, next) = resume(&s, ch, &old, 5).await?;
    assert_eq!(
        (next["op"].as_str(), next["epoch"].as_str()),
        (Some("truncated"), Some(new)),
        "{next}"
    );
    let last = ack["offset"].as_u64().context("offset")?;
    let got = ws.messages_until(last).await?;
    assert_eq!(
        got.last().map(|m| m["data"].clone()),
        Some(json!("after the rollback"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_policy_that_can_drop_keys_is_refused_at_start() -> Result<()> {
    let redis =
        Redis::start_args(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]).await?;
    let url = redis.url();
    let (status, stderr) = start_fails(&["--redis", &url]).await?;
    assert!(!status.success());
    assert!(
        stderr.contains("maxmemory-policy")
            && stderr.contains("allkeys-lru")
            && stderr.contains("noeviction"),
        "says what is wrong and what to set: {stderr}"
    );
    // Set as told, it starts.
    let mut conn = inspect(&redis).await?;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut conn)
        .await?;
    let node = Child::start(&["--redis", &url]).await?;
    node.signal("-TERM").await?;
    Ok(())
}
