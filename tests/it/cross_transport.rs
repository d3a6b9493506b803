//! One hub, every HTTP rung: the same messages, the same offsets, in order.

use anyhow::Result;
use serde_json::{Value, json};

use crate::helpers::*;

/// What a subscriber on each rung saw, as (offset, data) pairs.
fn seen(messages: &[Value]) -> Vec<(u64, Value)> {
    messages
        .iter()
        .map(|m| (m["offset"].as_u64().unwrap(), m["data"].clone()))
        .collect()
}

#[tokio::test]
async fn http_and_websocket_publishes_reach_every_rung_identically() -> Result<()> {
    let s = TestServer::spawn().await?;
    let mut ws_sub = Ws::connect(&s).await?;
    ws_sub.subscribe("x", Some(0)).await?;
    let mut sse = Sse::connect(&s, "x", "?since=0", None).await?;
    let long = {
        let s2 = s.url("");
        let http = s.http.clone();
        tokio::spawn(async move {
            let srv = (s2, http);
            long_poll_all(&srv.0, &srv.1, "x", 6).await
        })
    };

    let mut ws_pub = Ws::connect(&s).await?;
    for i in 0..3 {
        s.publish("x", json!({"via": "http", "i": i})).await?;
        ws_pub
            .send(json!({"op":"publish","channel":"x","data":{"via":"ws","i":i}}))
            .await?;
        assert_eq!(ws_pub.recv().await?["op"], "published");
    }
    let via_ws = seen(&ws_sub.messages_until(6).await?);
    let via_sse = seen(&sse.messages_until(6).await?);
    let via_poll = seen(&poll_until(&s, "x", 0, None, 6).await?);
    let via_long = seen(&within("long poll loop", long).await???);
    assert_eq!(
        via_ws.iter().map(|p| p.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(via_ws, via_sse);
    assert_eq!(via_ws, via_poll);
    assert_eq!(via_ws, via_long);
    let sources: Vec<&str> = via_ws
        .iter()
        .map(|p| p.1["via"].as_str().unwrap())
        .collect();
    assert!(sources.contains(&"http") && sources.contains(&"ws"));
    s.shutdown().await
}

async fn long_poll_all(
    base: &str,
    http: &reqwest::Client,
    ch: &str,
    last: u64,
) -> Result<Vec<Value>> {
    let mut since = 0;
    let mut out = Vec::new();
    while since < last {
        let body: Value = http
            .get(format!(
                "{base}/api/channels/{ch}/messages?since={since}&wait=20"
            ))
            .send()
            .await?
            .json()
            .await?;
        out.extend(body["messages"].as_array().cloned().unwrap_or_default());
        since = body["next"].as_u64().unwrap_or(since);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_reach_every_subscriber_exactly_once_in_order() -> Result<()> {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 100;
    const TOTAL: u64 = PUBLISHERS * EACH;
    let s = std::sync::Arc::new(TestServer::spawn().await?);
    let ch = "load";

    // Subscribers on every rung, all replaying from the start, so they may
    // join while publishing is under way.
    let mut subs = Vec::new();
    for _ in 0..10 {
        let mut ws = Ws::connect(&s).await?;
        ws.subscribe(ch, Some(0)).await?;
        subs.push(tokio::spawn(async move { ws.messages_until(TOTAL).await }));
    }
    for _ in 0..10 {
        let mut sse = Sse::connect(&s, ch, "?since=0", None).await?;
        subs.push(tokio::spawn(async move { sse.messages_until(TOTAL).await }));
    }
    for wait in [None, Some(20)] {
        for _ in 0..5 {
            let s = s.clone();
            subs.push(tokio::spawn(async move {
                poll_until(&s, ch, 0, wait, TOTAL).await
            }));
        }
    }

    let mut pubs = Vec::new();
    for p in 0..PUBLISHERS {
        let s = s.clone();
        pubs.push(tokio::spawn(async move {
            if p % 2 == 0 {
                for i in 0..EACH {
                    s.publish(ch, json!({"p": p, "i": i})).await?;
                }
            } else {
                let mut ws = Ws::connect(&s).await?;
                for i in 0..EACH {
                    ws.send(json!({"op":"publish","channel":ch,"data":{"p":p,"i":i}}))
                        .await?;
                    anyhow::ensure!(ws.recv().await?["op"] == "published");
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for p in pubs {
        within("publisher", p).await???;
    }
    let expected: Vec<u64> = (1..=TOTAL).collect();
    let mut reference: Option<Vec<(u64, Value)>> = None;
    for sub in subs {
        let got = seen(&within("subscriber", sub).await???);
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), expected);
        match &reference {
            None => reference = Some(got),
            Some(r) => assert_eq!(&got, r, "every rung sees the same data at each offset"),
        }
    }
    // Each publisher's own messages keep their publish order.
    for p in 0..PUBLISHERS {
        let order: Vec<u64> = reference
            .iter()
            .flatten()
            .filter(|m| m.1["p"] == p)
            .map(|m| m.1["i"].as_u64().unwrap())
            .collect();
        assert_eq!(order, (0..EACH).collect::<Vec<_>>());
    }
    Ok(())
}
