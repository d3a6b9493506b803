//! Several Ladder nodes on one real `redis-server`: global gap-free offsets,
//! fan-out to every rung of every node, and a Redis outage.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::{Redis, post};
use crate::helpers::*;
use crate::wt_client::Wt;

async fn node(redis: &Redis) -> Result<TestServer> {
    let url = redis.url();
    TestServer::spawn_with(|c| c.redis = Some(url)).await
}

/// Long-polls from `since` until `last` on a node.
async fn long_poll(s: &TestServer, ch: &str, last: u64) -> Result<Vec<Value>> {
    poll_until(s, ch, 0, Some(10), last).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_one_node_reach_every_rung_of_another_in_order() -> Result<()> {
    let redis = Redis::start().await?;
    let (a, b) = (node(&redis).await?, node(&redis).await?);
    let ch = "shared";

    // Subscribers on node B, every rung, all from the start.
    let mut ws = Ws::connect(&b).await?;
    ws.subscribe(ch, Some(0)).await?;
    let mut sse = Sse::connect(&b, ch, "?since=0", None).await?;
    let wt_b = Wt::connect(&b).await?;
    let mut wt_sub = wt_b.stream().await?;
    wt_sub
        .send(json!({"op":"subscribe","channel":ch,"since":0}))
        .await?;
    ensure!(wt_sub.recv().await?["op"] == "subscribed");

    // Publishers on node A: HTTP, WebSocket and WebTransport.
    let wt_a = Wt::connect(&a).await?;
    let mut wt_pub = wt_a.stream().await?;
    let mut ws_pub = Ws::connect(&a).await?;
    let mut acked = Vec::new();
    for i in 0..5 {
        for via in ["http", "ws", "wt"] {
            let data = json!({"via": via, "i": i});
            let op = json!({"op":"publish","channel":ch,"data":data});
            let ack = match via {
                "http" => a.publish(ch, data.clone()).await?,
                "ws" => {
                    ws_pub.send(op).await?;
                    ws_pub.recv().await?
                }
                _ => {
                    wt_pub.send(op).await?;
                    wt_pub.recv().await?
                }
            };
            acked.push((
                ack["offset"]
                    .as_u64()
                    .with_context(|| format!("ack {ack}"))?,
                data,
            ));
        }
    }
    let n = acked.len() as u64;
    assert_eq!(
        acked.iter().map(|a| a.0).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    let long = {
        let b_long = long_poll(&b, ch, n);
        within("long poll", b_long).await??
    };
    assert_eq!(pairs(&ws.messages_until(n).await?), acked, "websocket on B");
    assert_eq!(pairs(&sse.messages_until(n).await?), acked, "sse on B");
    assert_eq!(
        pairs(&wt_sub.messages_until(n).await?),
        acked,
        "webtransport on B"
    );
    assert_eq!(pairs(&long), acked, "long poll on B");
    assert_eq!(
        pairs(&poll_until(&b, ch, 0, None, n).await?),
        acked,
        "short poll on B"
    );
    a.shutdown().await?;
    b.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_on_two_nodes_make_one_gap_free_sequence() -> Result<()> {
    const EACH: u64 = 50;
    let redis = Redis::start().await?;
    let nodes = std::sync::Arc::new([node(&redis).await?, node(&redis).await?]);
    let ch = "race";
    let mut subs = Vec::new();
    for n in 0..2 {
        let mut ws = Ws::connect(&nodes[n]).await?;
        ws.subscribe(ch, Some(0)).await?;
        subs.push(ws);
    }
    let mut pubs = Vec::new();
    for p in 0..4u64 {
        let nodes = nodes.clone();
        pubs.push(tokio::spawn(async move {
            let s = &nodes[(p % 2) as usize];
            let mut ws = if p >= 2 {
                Some(Ws::connect(s).await?)
            } else {
                None
            };
            let mut acks = Vec::new();
            for i in 0..EACH {
                let data = json!({"p": p, "i": i});
                let ack = match ws.as_mut() {
                    None => s.publish(ch, data.clone()).await?,
                    Some(ws) => {
                        ws.send(json!({"op":"publish","channel":ch,"data":data}))
                            .await?;
                        ws.recv().await?
                    }
                };
                acks.push((ack["offset"].as_u64().context("offset")?, data));
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acked = BTreeMap::new();
    for p in pubs {
        for (offset, data) in within("publisher", p).await??? {
            ensure!(
                acked.insert(offset, data).is_none(),
                "offset {offset} acknowledged twice"
            );
        }
    }
    let total = 4 * EACH;
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "one gap-free sequence"
    );
    let expected: Vec<(u64, Value)> = acked.into_iter().collect();
    for (n, ws) in subs.iter_mut().enumerate() {
        assert_eq!(
            pairs(&ws.messages_until(total).await?),
            expected,
            "node {n}"
        );
    }
    Ok(())
}

/// Publishes until one is acknowledged (Redis coming back), recording acks.
async fn publish_until_accepted(s: &TestServer, ch: &str, data: Value) -> Result<Value> {
    within("a publish to be accepted again", async {
        loop {
            let (status, body) = post(&s.http, &s.base, ch, &data).await?;
            if status == 201 {
                return Ok(body);
            }
            ensure!(
                status == 503 && body["error"]["code"] == "unavailable",
                "{status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_refuses_publishes_tells_subscribers_and_loses_nothing() -> Result<()> {
    let mut redis = Redis::start_persistent().await?;
    let (a, b) = (node(&redis).await?, node(&redis).await?);
    let ch = "outage";
    let mut acked: BTreeMap<u64, Value> = BTreeMap::new();
    let mut ws = Ws::connect(&b).await?;
    ws.subscribe(ch, Some(0)).await?;
    let mut sse = Sse::connect(&b, ch, "?since=0", None).await?;
    for i in 0..5 {
        let ack = a.publish(ch, json!({"before": i})).await?;
        acked.insert(
            ack["offset"].as_u64().context("offset")?,
            json!({"before": i}),
        );
    }
    let mut seen = pairs(&ws.messages_until(5).await?);
    sse.messages_until(5).await?;

    redis.stop().await?;
    // Publishes fail fast with 503 on both nodes: Redis is the only one who
    // may number a message, so nobody acknowledges one now.
    for (s, name) in [(&a, "A"), (&b, "B")] {
        let (status, refused) = post(&s.http, &s.base, ch, &json!({"during": name})).await?;
        assert_eq!(status, 503, "node {name}: {refused}");
        assert_eq!(refused["error"]["code"], "unavailable", "{refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("redis"),
            "{refused}"
        );
    }
    // Live subscribers are told: `lagged` with the last offset they got.
    let told = ws.recv().await?;
    assert_eq!(
        (told["op"].as_str(), told["offset"].as_u64()),
        (Some("lagged"), Some(5)),
        "{told}"
    );
    let ev = sse.next().await?.context("sse ended without a word")?;
    assert_eq!(
        (ev.event.as_str(), ev.json()["offset"].as_u64()),
        ("lagged", Some(5))
    );
    let (status, _) = b
        .get_json(&format!("/api/channels/{ch}/messages?since=0"))
        .await?;
    assert_eq!(status, 503, "polls are refused rather than served stale");

    redis.restart().await?;
    let ack = publish_until_accepted(&a, ch, json!({"after": 0})).await?;
    acked.insert(
        ack["offset"].as_u64().context("offset")?,
        json!({"after": 0}),
    );
    let epoch = ack["epoch"].as_str().context("epoch")?.to_owned();
    // The subscriber resumes where it was told it stopped.
    let mut ws = Ws::connect(&b).await?;
    within("resubscribing on B", async {
        loop {
            ws.send(json!({"op":"subscribe","channel":ch,"since":5,"epoch":epoch}))
                .await?;
            let reply = ws.recv().await?;
            if reply["op"] == "subscribed" {
                return anyhow::Ok(());
            }
            ensure!(reply["code"] == "unavailable", "{reply}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    for i in 1..4 {
        let ack = publish_until_accepted(&b, ch, json!({"after": i})).await?;
        acked.insert(
            ack["offset"].as_u64().context("offset")?,
            json!({"after": i}),
        );
    }
    let last = *acked.keys().last().context("acks")?;
    seen.extend(pairs(&ws.messages_until(last).await?));
    let expected: Vec<(u64, Value)> = acked.into_iter().collect();
    assert_eq!(seen, expected, "nothing acknowledged lost or repeated");
    assert_eq!(
        pairs(&poll_until(&a, ch, 0, None, last).await?),
        expected,
        "node A's history"
    );
    a.shutdown().await?;
    b.shutdown().await
}
