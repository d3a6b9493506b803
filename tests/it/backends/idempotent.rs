//! Idempotent publish on every backend: a retry carrying the same key — by
//! HTTP header or WebSocket op field, sequential or concurrent, on the same
//! node or (Redis) another — gets the first ack and appends nothing; bad
//! keys are refused with `400 bad_request`.

use anyhow::{Context, Result, ensure};
use futures_util::future::join_all;
use serde_json::{Value, json};

use super::Redis;
use crate::helpers::*;

/// Publishes over HTTP with an `Idempotency-Key` header; status and body.
async fn keyed(s: &TestServer, ch: &str, key: &str, data: Value) -> Result<(u16, Value)> {
    let resp = within(
        "keyed publish",
        s.http
            .post(s.url(&format!("/api/channels/{ch}/messages")))
            .header("Idempotency-Key", key)
            .json(&data)
            .send(),
    )
    .await??;
    Ok((resp.status().as_u16(), resp.json().await?))
}

/// Everything retained on a channel, via a short poll.
async fn retained(s: &TestServer, ch: &str) -> Result<Vec<Value>> {
    let (status, body) = s
        .get_json(&format!("/api/channels/{ch}/messages?since=0"))
        .await?;
    ensure!(status == 200, "poll answered {status}: {body}");
    Ok(body["messages"].as_array().context("messages")?.clone())
}

/// The checks every backend must pass; `b` may be another node sharing the
/// log with `a` (Redis) or `a` itself.
async fn retries_append_once(a: &TestServer, b: &TestServer) -> Result<()> {
    let ch = "idem";
    let (st, first) = keyed(a, ch, "k-1", json!("one")).await?;
    ensure!(st == 201, "first publish answered {st}: {first}");

    // Sequential retries: over HTTP on either node, and over WebSocket.
    let (st, again) = keyed(b, ch, "k-1", json!("one")).await?;
    ensure!(st == 201, "retry answered {st}: {again}");
    assert_eq!(again, first, "an HTTP retry gets the first ack");
    let mut ws = Ws::connect(b).await?;
    ws.send(json!({"op":"publish","channel":ch,"data":"one","idempotency_key":"k-1","id":7}))
        .await?;
    let ack = ws.recv().await?;
    assert_eq!(ack["op"], "published", "{ack}");
    assert_eq!(ack["id"], 7);
    assert_eq!(
        (&ack["epoch"], &ack["offset"]),
        (&first["epoch"], &first["offset"])
    );

    // A new key appends; so does a publish without one.
    let (_, second) = keyed(a, ch, "k-2", json!("two")).await?;
    assert_eq!(second["offset"], 2);
    let third = a.publish(ch, json!("three")).await?;
    assert_eq!(third["offset"], 3);
    // The same key on another channel is another key.
    let (_, other) = keyed(a, "idem.other", "k-1", json!("x")).await?;
    assert_eq!(other["offset"], 1);

    // Concurrent retries of one key, half per node: one append, one ack.
    let racers = (0..8).map(|i| {
        let node = if i % 2 == 0 { a } else { b };
        keyed(node, ch, "k-race", json!("raced"))
    });
    let acks = join_all(racers).await;
    let mut acked = Vec::new();
    for r in acks {
        let (st, body) = r?;
        ensure!(st == 201, "racer answered {st}: {body}");
        acked.push(body["offset"].as_u64().context("offset")?);
    }
    acked.dedup();
    assert_eq!(acked, [4], "every racer got the one append's ack");

    let got = retained(a, ch).await?;
    assert_eq!(offsets(&got), [1, 2, 3, 4], "nothing appended twice");
    assert_eq!(
        got.iter().map(|m| m["data"].clone()).collect::<Vec<_>>(),
        [json!("one"), json!("two"), json!("three"), json!("raced")]
    );
    Ok(())
}

/// Bad keys: a clear 400 over HTTP, an error frame over WebSocket, and
/// nothing appended.
async fn bad_keys_are_refused(s: &TestServer) -> Result<()> {
    let ch = "idem.bad";
    for (key, says) in [
        ("", "empty"),
        (&*"k".repeat(129), "longer than 128"),
        ("a b", "may only contain"),
    ] {
        let (st, body) = keyed(s, ch, key, json!(1)).await?;
        assert_eq!(st, 400, "key {key:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "key {key:?}: {msg}");
    }
    let mut ws = Ws::connect(s).await?;
    ws.send(json!({"op":"publish","channel":ch,"data":1,"idempotency_key":"no way","id":3}))
        .await?;
    let err = ws.recv().await?;
    assert_eq!(
        (&err["op"], &err["code"], &err["id"]),
        (&json!("error"), &json!("bad_request"), &json!(3)),
        "{err}"
    );
    assert!(retained(s, ch).await?.is_empty(), "nothing was appended");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_retries_with_a_key_append_once() -> Result<()> {
    let s = TestServer::spawn().await?;
    retries_append_once(&s, &s).await?;
    bad_keys_are_refused(&s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_retries_with_a_key_append_once() -> Result<()> {
    let dir = temp_dir("idem-durable");
    let s = TestServer::spawn_with(|c| c.data_dir = Some(dir)).await?;
    retries_append_once(&s, &s).await?;
    bad_keys_are_refused(&s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_retries_with_a_key_append_once_across_nodes() -> Result<()> {
    let redis = Redis::start().await?;
    let url = redis.url();
    let a = TestServer::spawn_with(|c| c.redis = Some(url.clone())).await?;
    let b = TestServer::spawn_with(|c| c.redis = Some(url)).await?;
    retries_append_once(&a, &b).await?;
    bad_keys_are_refused(&a).await
}
