//! Presence across nodes on a real `redis-server`: every node sees every
//! node's members, and every node's watchers hear every node's joins and
//! leaves — once per member however many nodes hold it or notice it go,
//! including the leaves of a node that was killed.

use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::presence::{ids, members, members_become, next_presence};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_redis_share_members_and_a_killed_nodes_expire() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let redis = crate::backends::Redis::start().await?;
    let url = redis.url();
    // Node A is a process of its own, so it can be killed outright.
    let a = Child::start(&["--redis", &url, "--presence-lapse", "2"]).await?;
    let b = TestServer::spawn_with(|c| {
        c.redis = Some(url.clone());
        c.presence_lapse = 2;
    })
    .await?;
    let ch = "shared-room";
    let ws_url = format!("{}/api/ws", a.base.replacen("http", "ws", 1));
    let (mut on_a, _) = within("ws to node A", tokio_tungstenite::connect_async(ws_url)).await??;
    let op = json!({"op":"subscribe","channel":ch,"client":"on-a","info":{"node":"a"}});
    on_a.send(Message::text(op.to_string())).await?;
    let reply = within("subscribed on A", on_a.next()).await?;
    ensure!(
        matches!(&reply, Some(Ok(Message::Text(t))) if t.contains("subscribed")),
        "{reply:?}"
    );
    let mut on_b = Ws::connect(&b).await?;
    on_b.send(json!({"op":"subscribe","channel":ch,"client":"on-b","presence":true}))
        .await?;
    assert_eq!(on_b.recv().await?["op"], "subscribed");
    // The watcher on B is told A's member from the start.
    let list = on_b.recv().await?;
    assert_eq!(ids(&list["members"]), ["on-a", "on-b"]);
    // Both nodes answer with both members, for longer than the lapse
    // (their nodes keep them alive in Redis).
    let http = reqwest::Client::new();
    members_become(&a.base, &http, ch, &["on-a", "on-b"]).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(members(&b.base, &b.http, ch).await?, ["on-a", "on-b"]);
    let (_, body) = b.get_json(&format!("/api/channels/{ch}/presence")).await?;
    assert_eq!(body["members"][0], json!({"id":"on-a","info":{"node":"a"}}));
    // A dies without a word: its member expires from B's view.
    a.signal("-KILL").await?;
    members_become(&b.base, &b.http, ch, &["on-b"]).await?;
    // A leave on a live node is immediate there and everywhere.
    drop(on_b);
    members_become(&b.base, &b.http, ch, &[]).await?;
    b.shutdown().await
}

/// Subscribes a member `id` to `ch` on `node`; returns the socket holding it.
async fn member_on<B: Base + ?Sized>(node: &B, ch: &str, id: &str) -> Result<Ws> {
    let mut ws = Ws::connect(node).await?;
    ws.send(json!({"op":"subscribe","channel":ch,"client":id}))
        .await?;
    let r = ws.recv().await?;
    ensure!(
        r["op"] == "subscribed" && r.get("presence_error").is_none(),
        "{r}"
    );
    Ok(ws)
}

/// A watcher of `ch`'s presence on `node`, past its first (empty) list.
async fn watcher_on(node: &TestServer, ch: &str) -> Result<Ws> {
    let mut ws = Ws::connect(node).await?;
    ws.send(json!({"op":"subscribe","channel":ch,"presence":true}))
        .await?;
    assert_eq!(ws.recv().await?["op"], "subscribed");
    let list = ws.recv().await?;
    ensure!(
        list["op"] == "presence" && ids(&list["members"]).is_empty(),
        "{list}"
    );
    Ok(ws)
}

/// `(type, id)` of a watcher's next presence change.
async fn next_change(ws: &mut Ws) -> Result<(String, String)> {
    let f: Value = next_presence(ws).await?;
    let kind = f["op"].as_str().unwrap_or_default().to_owned();
    ensure!(kind == "join" || kind == "leave", "{f}");
    Ok((
        kind,
        f["member"]["id"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn ev(kind: &str, id: &str) -> (String, String) {
    (kind.to_owned(), id.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nodes_watchers_hear_every_nodes_joins_and_leaves_once() -> Result<()> {
    let redis = crate::backends::Redis::start().await?;
    let url = redis.url();
    // A is a process of its own, so it can be killed outright; B and C
    // both watch, and both reap A's members when they expire.
    let a = Child::start(&["--redis", &url, "--presence-lapse", "2"]).await?;
    let spawn = || {
        TestServer::spawn_with(|c| {
            c.redis = Some(url.clone());
            c.presence_lapse = 2;
        })
    };
    let (b, c) = (spawn().await?, spawn().await?);
    let ch = "many-nodes";
    let mut on_b = watcher_on(&b, ch).await?;
    let mut on_c = watcher_on(&c, ch).await?;
    let mut seen = Vec::new();
    let mut expect = |want: (String, String), got_b, got_c| {
        seen.push(want.clone());
        ensure!(
            got_b == want && got_c == want,
            "after {seen:?}: B got {got_b:?}, C got {got_c:?}"
        );
        anyhow::Ok(())
    };

    // A join on A is heard on B and C.
    let mut ann_a = member_on(&a, ch, "ann").await?;
    expect(
        ev("join", "ann"),
        next_change(&mut on_b).await?,
        next_change(&mut on_c).await?,
    )?;
    // The same id on B as well is no new member: the next event heard is
    // cy's join, not a second one of ann's.
    let ann_b = member_on(&b, ch, "ann").await?;
    let _cy = member_on(&a, ch, "cy").await?;
    expect(
        ev("join", "cy"),
        next_change(&mut on_b).await?,
        next_change(&mut on_c).await?,
    )?;
    // ann leaves once, when both nodes have let go.
    ann_a.send(json!({"op":"unsubscribe","channel":ch})).await?;
    assert_eq!(ann_a.recv().await?["op"], "unsubscribed");
    drop(ann_b);
    expect(
        ev("leave", "ann"),
        next_change(&mut on_b).await?,
        next_change(&mut on_c).await?,
    )?;

    // A dies: its member cy lapses, and whichever of B and C notices
    // first tells the leave — once: the next event is zed's join.
    a.signal("-KILL").await?;
    expect(
        ev("leave", "cy"),
        next_change(&mut on_b).await?,
        next_change(&mut on_c).await?,
    )?;
    let _zed = member_on(&c, ch, "zed").await?;
    expect(
        ev("join", "zed"),
        next_change(&mut on_b).await?,
        next_change(&mut on_c).await?,
    )?;
    assert_eq!(members(&b.base, &b.http, ch).await?, ["zed"]);
    b.shutdown().await?;
    c.shutdown().await
}
