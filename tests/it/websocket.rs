//! WebSocket ops.

use anyhow::Result;
use ladder::config::WsFanout;
use ladder::stats::Transport;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn one_socket_subscribes_to_many_channels_publishes_and_echoes() -> Result<()> {
    let s = TestServer::spawn().await?;
    s.publish("a", json!("old")).await?;
    let mut ws = Ws::connect(&s).await?;
    let sub_a = ws.subscribe("a", Some(0)).await?;
    assert_eq!(sub_a["channel"], "a");
    assert_eq!(sub_a["offset"], 1, "the current head");
    assert!(sub_a["epoch"].is_string());
    let first = ws.recv().await?;
    assert_eq!(
        (first["op"].as_str(), first["offset"].as_u64()),
        (Some("message"), Some(1))
    );
    let sub_b = ws.subscribe("b", None).await?;
    assert_eq!(sub_b["offset"], 0);

    ws.send(json!({"op":"publish","channel":"b","data":{"x":1},"id":"req-1"}))
        .await?;
    // The ack and the delivery both come; order between them is not fixed.
    let mut got = [ws.recv().await?, ws.recv().await?];
    got.sort_by_key(|f| f["op"].as_str().unwrap_or_default().to_owned());
    assert_eq!(got[0]["op"], "message");
    assert_eq!(got[0]["data"], json!({"x": 1}));
    assert_eq!(got[0]["channel"], "b");
    assert_eq!(
        got[1],
        json!({"op":"published","id":"req-1","channel":"b","epoch":sub_b["epoch"],"offset":1})
    );

    ws.send(json!({"op":"echo","data":[1,"two"]})).await?;
    assert_eq!(ws.recv().await?, json!({"op":"echo","data":[1,"two"]}));

    ws.send(json!({"op":"unsubscribe","channel":"a"})).await?;
    assert_eq!(ws.recv().await?, json!({"op":"unsubscribed","channel":"a"}));
    s.publish("a", json!("after")).await?;
    s.publish("b", json!("b2")).await?;
    // Only b's message arrives: a was unsubscribed.
    let next = ws.recv().await?;
    assert_eq!(
        (next["channel"].as_str(), next["offset"].as_u64()),
        (Some("b"), Some(2))
    );
    s.shutdown().await
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_socket_stays_open() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.max_message_bytes = 1024).await?;
    let mut ws = Ws::connect(&s).await?;
    let cases = [
        (Message::text("not json"), "bad_json", None),
        (
            Message::text(r#"{"op":"dance","id":7}"#),
            "bad_request",
            Some(json!(7)),
        ),
        (
            Message::text(r#"{"op":"subscribe","channel":"no spaces"}"#),
            "bad_channel",
            None,
        ),
        (
            Message::text(r#"{"op":"subscribe","channel":"a","since":-4}"#),
            "bad_request",
            None,
        ),
        (
            Message::text(r#"{"op":"subscribe","channel":"a","delivery":"datagram"}"#),
            "bad_request",
            None,
        ),
        (
            Message::text(r#"{"op":"publish","channel":"a"}"#),
            "bad_request",
            None,
        ),
        (
            Message::text(
                json!({"op":"publish","channel":"a","data":"x".repeat(2000)}).to_string(),
            ),
            "too_large",
            None,
        ),
        (Message::binary(vec![1u8, 2, 3]), "bad_request", None),
    ];
    for (frame, code, id) in cases {
        ws.send_raw(frame.clone()).await?;
        let reply = ws.recv().await?;
        assert_eq!(reply["op"], "error", "for {frame:?}");
        assert_eq!(reply["code"], code, "for {frame:?}: {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
        if let Some(id) = id {
            assert_eq!(reply["id"], id);
        }
    }
    // Still usable.
    ws.send(json!({"op":"echo","data":"alive"})).await?;
    assert_eq!(ws.recv().await?["data"], "alive");
    s.shutdown().await
}

#[tokio::test]
async fn subscriptions_per_socket_are_limited() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.max_subscriptions = 2).await?;
    let mut ws = Ws::connect(&s).await?;
    ws.subscribe("a", None).await?;
    ws.subscribe("b", None).await?;
    ws.subscribe("b", None).await?; // re-subscribing is not a new one
    ws.send(json!({"op":"subscribe","channel":"c"})).await?;
    assert_eq!(ws.recv().await?["code"], "rate_limited");
    s.shutdown().await
}

#[tokio::test]
async fn resume_with_since_after_a_drop_loses_nothing() -> Result<()> {
    let s = TestServer::spawn().await?;
    let mut ws = Ws::connect(&s).await?;
    let sub = ws.subscribe("r", Some(0)).await?;
    for i in 1..=3 {
        s.publish("r", json!(i)).await?;
    }
    let seen = ws.messages_until(3).await?;
    drop(ws);
    for i in 4..=6 {
        s.publish("r", json!(i)).await?;
    }
    let mut ws = Ws::connect(&s).await?;
    ws.send(json!({"op":"subscribe","channel":"r","since":3,"epoch":sub["epoch"]}))
        .await?;
    assert_eq!(ws.recv().await?["op"], "subscribed");
    let rest = ws.messages_until(6).await?;
    let all: Vec<u64> = offsets(&seen).into_iter().chain(offsets(&rest)).collect();
    assert_eq!(all, vec![1, 2, 3, 4, 5, 6]);

    // With a stale epoch the client is told before anything else arrives.
    let mut ws = Ws::connect(&s).await?;
    ws.send(json!({"op":"subscribe","channel":"r","since":6,"epoch":"gone"}))
        .await?;
    assert_eq!(ws.recv().await?["op"], "subscribed");
    let t = ws.recv().await?;
    assert_eq!(
        t,
        json!({"op":"truncated","channel":"r","oldest":1,"epoch":sub["epoch"]})
    );
    s.shutdown().await
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_told_lagged_and_can_resume() -> Result<()> {
    // Big messages fill the socket buffers quickly, so the server's writer
    // blocks while the history (10 messages) moves on without it. The
    // reader is silent while all 400 are published, however long that
    // takes: the server's cut-offs for a silent client (send timeout, no
    // pong) are pushed past the test's length, so the lag, not the clock,
    // ends the socket (see the stall test below).
    let s = TestServer::spawn_with(|c| {
        c.history = 10;
        c.send_timeout = 3600;
        c.heartbeat = 0;
    })
    .await?;
    let mut ws = Ws::connect(&s).await?;
    ws.subscribe("flood", None).await?;
    let blob = "x".repeat(60_000);
    let n = 400u64;
    for i in 0..n {
        s.publish("flood", json!({"i": i, "pad": blob})).await?;
    }
    let mut seen = Vec::new();
    let lagged = loop {
        let f = ws.recv().await?;
        match f["op"].as_str() {
            Some("message") => seen.push(f["offset"].as_u64().unwrap()),
            Some("lagged") => break f,
            _ => panic!("unexpected {f}"),
        }
    };
    assert_eq!(ws.closed().await?, 4000);
    let last = lagged["offset"].as_u64().unwrap();
    assert_eq!(
        seen,
        (1..=last).collect::<Vec<_>>(),
        "in order, no gap before the lag"
    );
    assert!(last < n);
    s.wait_stats("websocket", |r| r["lagged"].as_u64() >= Some(1))
        .await?;

    // Resuming from the last offset: told of the gap, then the rest.
    let mut ws = Ws::connect(&s).await?;
    ws.send(json!({"op":"subscribe","channel":"flood","since":last}))
        .await?;
    assert_eq!(ws.recv().await?["op"], "subscribed");
    let t = ws.recv().await?;
    assert_eq!(t["op"], "truncated");
    let oldest = t["oldest"].as_u64().unwrap();
    assert_eq!(oldest, n - 9);
    assert_eq!(
        offsets(&ws.messages_until(n).await?),
        (oldest..=n).collect::<Vec<_>>()
    );
    s.shutdown().await
}

#[tokio::test]
async fn foreign_origins_are_refused() -> Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = TestServer::spawn().await?;
    let mut req = s.ws_url().into_client_request()?;
    req.headers_mut()
        .insert("origin", "http://evil.example".parse()?);
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let mut req = s.ws_url().into_client_request()?;
    let own = s.base.clone();
    req.headers_mut().insert("origin", own.parse()?);
    tokio_tungstenite::connect_async(req).await?;
    s.shutdown().await
}

#[tokio::test]
async fn the_server_pings_and_closes_on_frames_beyond_the_hard_cap() -> Result<()> {
    use futures_util::StreamExt;
    let s = TestServer::spawn_with(|c| {
        c.heartbeat = 1;
        c.max_message_bytes = 1024;
    })
    .await?;
    let mut ws = Ws::connect(&s).await?;
    // Keep-alive: a ping arrives without anything being sent (the client
    // library answers it with a pong on its next write or flush).
    let first = within("a ping", ws.inner.next()).await?;
    assert!(
        matches!(first, Some(Ok(Message::Ping(_)))),
        "expected a ping, got {first:?}"
    );
    // A frame over the hard cap (max(4 × limit, 1 MiB)) is not buffered: the
    // server sends close 1009 (message too big) and drops the socket. The
    // client may see the close frame, or — as it is still writing the rest
    // of the frame — a reset that overtakes it; either way the socket ends.
    let _ = ws.send_raw(Message::text("x".repeat(2 << 20))).await;
    let end = loop {
        match within("the socket to end", ws.inner.next()).await? {
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    assert!(matches!(end, Some(1009) | None), "{end:?}");
    // Everyone else is unaffected.
    let mut other = Ws::connect(&s).await?;
    other.send(json!({"op":"echo","data":1})).await?;
    assert_eq!(other.recv().await?["data"], 1);
    s.shutdown().await
}

/// Publishes one message at a time to `channel` and reads it on `ws`, until
/// a channel fan-out has written one straight to a lent socket (at most
/// `rounds` messages); returns the last offset.
async fn until_lent(s: &TestServer, ws: &mut Ws, channel: &str, rounds: u64) -> Result<u64> {
    let sends = &s.ctx.stats.of(Transport::WebSocket).direct_writes;
    let before = sends.get();
    for _ in 0..rounds {
        let p = s.publish(channel, json!("warm-up")).await?;
        let offset = p["offset"].as_u64().unwrap();
        assert_eq!(offsets(&ws.messages_until(offset).await?), [offset]);
        if sends.get() > before {
            return Ok(offset);
        }
    }
    anyhow::bail!("no direct write in {rounds} messages")
}

#[tokio::test]
async fn lent_sockets_get_every_message_in_order_while_ops_come_and_go() -> Result<()> {
    for fanout in [WsFanout::Uring, WsFanout::Send, WsFanout::Task] {
        let direct = fanout != WsFanout::Task;
        let s = TestServer::spawn_with(|c| c.ws_fanout = fanout).await?;
        let mut ws = Ws::connect(&s).await?;
        ws.subscribe("d", None).await?;
        ws.subscribe("e", None).await?;
        let mut last = if direct {
            until_lent(&s, &mut ws, "d", 100).await?
        } else {
            0
        };
        for round in 0..20u64 {
            // Published over HTTP while the socket is (or may be) lent, then
            // an op that needs the socket back, then more.
            for _ in 0..5 {
                s.publish("d", json!({"round": round})).await?;
            }
            ws.send(json!({"op":"echo","data":round})).await?;
            ws.send(json!({"op":"publish","channel":"e","data":round,"id":round}))
                .await?;
            for _ in 0..5 {
                s.publish("d", json!({"round": round})).await?;
            }
            let (mut d, mut acked, mut echoed, mut e) = (Vec::new(), false, false, false);
            while d.len() < 10 || !(acked && echoed && e) {
                let f = ws.recv().await?;
                match (f["op"].as_str(), f["channel"].as_str()) {
                    (Some("message"), Some("d")) => {
                        assert_eq!(f["data"], json!({"round": round}));
                        d.push(f["offset"].as_u64().unwrap());
                    }
                    (Some("message"), Some("e")) => {
                        assert_eq!(
                            (f["data"].as_u64(), f["offset"].as_u64()),
                            (Some(round), Some(round + 1))
                        );
                        e = true;
                    }
                    (Some("published"), _) => acked = true,
                    (Some("echo"), _) => {
                        assert_eq!(f["data"], round);
                        echoed = true;
                    }
                    _ => panic!("unexpected {f}"),
                }
            }
            assert_eq!(
                d,
                (last + 1..=last + 10).collect::<Vec<_>>(),
                "round {round}"
            );
            last += 10;
        }
        if !direct {
            assert_eq!(s.ctx.stats.of(Transport::WebSocket).direct_writes.get(), 0);
        }
        // Unsubscribing takes the channel out of the socket's lease.
        ws.send(json!({"op":"unsubscribe","channel":"d"})).await?;
        assert_eq!(ws.recv().await?, json!({"op":"unsubscribed","channel":"d"}));
        s.publish("d", json!("gone")).await?;
        ws.send(json!({"op":"echo","data":"after"})).await?;
        assert_eq!(ws.recv().await?, json!({"op":"echo","data":"after"}));
        // The socket left d's fan-out; e's stays while it is subscribed.
        assert_eq!(s.fanouts.len(), usize::from(direct));
        drop(ws);
        s.fanouts_stopped().await?;
        s.shutdown().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_lent_socket_whose_reader_stalls_is_handed_back_and_loses_nothing() -> Result<()> {
    // The reader stays silent for as long as the 400 publishes below take,
    // which on a loaded machine can be longer than the server gives a
    // silent client by default (a 30 s send timeout; no pong for two
    // heartbeats): either cut-off would drop the socket and fail the test
    // on the clock alone. Both are pushed past any time the test can take,
    // so the test decides when the reader resumes.
    let s = TestServer::spawn_with(|c| {
        c.send_timeout = 3600;
        c.heartbeat = 0;
    })
    .await?;
    let mut ws = Ws::connect(&s).await?;
    ws.subscribe("stall", None).await?;
    let warm = until_lent(&s, &mut ws, "stall", 100).await?;
    // The client reads nothing while far more than the socket buffers hold
    // is published (history keeps all of it), so a direct write runs into a
    // full socket: it is partial or refused and the lease ends.
    let blob = "y".repeat(60_000);
    let n = 400u64;
    for i in 0..n {
        s.publish("stall", json!({"i": i, "pad": blob})).await?;
    }
    let got = ws.messages_until(warm + n).await?;
    assert_eq!(offsets(&got), (warm + 1..=warm + n).collect::<Vec<_>>());
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["data"]["i"], i as u64);
        assert_eq!(m["data"]["pad"].as_str().map(str::len), Some(60_000));
    }
    let counters = s.ctx.stats.of(Transport::WebSocket);
    assert!(counters.direct_handbacks.get() >= 1);
    assert_eq!(s.stats("websocket").await?["lagged"], 0);
    // And the socket is lent again once caught up.
    let sends = counters.direct_writes.get();
    until_lent(&s, &mut ws, "stall", 100).await?;
    assert!(counters.direct_writes.get() > sends);
    s.shutdown().await
}
