//! Server-Sent Events.

use anyhow::Result;
use serde_json::json;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

#[tokio::test]
async fn sse_replays_then_streams_live_with_ids() -> Result<()> {
    let s = TestServer::spawn().await?;
    let ack = s.publish("s", json!("one")).await?;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    let mut sse = Sse::connect(&s, "s", "?since=0", None).await?;
    let first = sse.next().await?.unwrap();
    assert_eq!(sse.retry, Some(2000), "retry: comes first");
    assert_eq!(first.id.as_deref(), Some(format!("{epoch}:1").as_str()));
    assert_eq!(first.event, "message");
    assert_eq!(
        first.json(),
        json!({"channel":"s","offset":1,"data":"one","ts":first.json()["ts"]})
    );
    s.publish("s", json!({"two": 2})).await?;
    let second = sse.next().await?.unwrap();
    assert_eq!(second.id.as_deref(), Some(format!("{epoch}:2").as_str()));
    assert_eq!(second.json()["data"], json!({"two": 2}));
    s.shutdown().await
}

#[tokio::test]
async fn last_event_id_resumes_exactly_after_that_message() -> Result<()> {
    let s = TestServer::spawn().await?;
    let epoch = s.publish_count("r", 5).await?;
    // Last-Event-ID wins over the query's `since`.
    let mut sse = Sse::connect(&s, "r", "?since=0", Some(&format!("{epoch}:3"))).await?;
    let got = sse.messages_until(5).await?;
    assert_eq!(offsets(&got), vec![4, 5]);
    s.shutdown().await
}

#[tokio::test]
async fn sse_announces_truncation_for_overrun_and_stale_epoch() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.history = 2).await?;
    let epoch = s.publish_count("x", 4).await?;
    for last_id in ["1", "stale:3"] {
        let mut sse = Sse::connect(&s, "x", "", Some(last_id)).await?;
        let ev = sse.next().await?.unwrap();
        assert_eq!(ev.event, "truncated", "after Last-Event-ID {last_id}");
        assert_eq!(ev.json(), json!({"oldest": 3, "epoch": epoch}));
        assert_eq!(offsets(&sse.messages_until(4).await?), vec![3, 4]);
    }
    s.shutdown().await
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.heartbeat = 1).await?;
    let mut sse = Sse::connect(&s, "quiet", "", None).await?;
    // Nothing is published, so the only blocks that can come are the
    // retry line and pings.
    while sse.comments.is_empty() {
        assert_eq!(
            sse.next_block().await?,
            Block::Other,
            "no event was published"
        );
    }
    assert_eq!(sse.comments[0], "ping");
    s.shutdown().await
}

/// Reads from `tcp` until `done` holds for everything read so far.
async fn read_until(tcp: &mut TcpStream, done: impl Fn(&str) -> bool) -> Result<String> {
    let mut got = Vec::new();
    within("response", async {
        let mut buf = [0u8; 4096];
        while !done(&String::from_utf8_lossy(&got)) {
            let n = tcp.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&got).into_owned())
    })
    .await?
}

/// An event stream asked for first on a fresh connection is served without
/// hyper (close-delimited, no chunking); one asked for on a kept-alive
/// connection, or with a head too big to peek at, through hyper (chunked).
/// Both carry the same events.
#[tokio::test]
async fn event_streams_are_the_same_on_fresh_and_kept_alive_connections() -> Result<()> {
    let s = TestServer::spawn().await?;
    s.publish("k", json!("one")).await?;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let sse = "GET /api/channels/k/events?since=0 HTTP/1.1\r\nhost: x\r\n";
    let has_event = |t: &str| t.contains("data: {\"channel\":\"k\",\"offset\":1,");

    let mut fresh = TcpStream::connect(&addr).await?;
    fresh.write_all(format!("{sse}\r\n").as_bytes()).await?;
    let got = read_until(&mut fresh, has_event).await?;
    let head = got.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");

    let pad = "x".repeat(5000);
    let mut big = TcpStream::connect(&addr).await?;
    big.write_all(format!("{sse}x-pad: {pad}\r\n\r\n").as_bytes())
        .await?;
    let mut kept = TcpStream::connect(&addr).await?;
    kept.write_all(b"GET /api/info HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    read_until(&mut kept, |t| t.ends_with('}')).await?;
    kept.write_all(format!("{sse}\r\n").as_bytes()).await?;
    for tcp in [&mut big, &mut kept] {
        let got = read_until(tcp, has_event).await?;
        let head = got.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
    }
    s.publish("k", json!("two")).await?;
    for tcp in [&mut fresh, &mut big, &mut kept] {
        read_until(tcp, |t| t.contains("\"offset\":2,")).await?;
    }
    s.wait_stats("sse", |r| r["connections_open"] == 3).await?;

    // Refusals on the lean path are whole responses: status, JSON body with
    // its length, then the connection closes.
    let mut bad = TcpStream::connect(&addr).await?;
    bad.write_all(b"GET /api/channels/k/events?since=x HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let got = within("refusal", async {
        let mut got = Vec::new();
        bad.read_to_end(&mut got).await?;
        anyhow::Ok(String::from_utf8(got)?)
    })
    .await??;
    let (head, body) = got.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 400 bad request\r\n"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_str(body)?;
    assert_eq!(body["error"]["code"], "bad_request");

    // A byte sent after the request ends the stream (nothing is buffered).
    fresh.write_all(b"G").await?;
    within("close", async {
        let mut buf = [0u8; 1024];
        while fresh.read(&mut buf).await? > 0 {}
        anyhow::Ok(())
    })
    .await??;
    s.wait_stats("sse", |r| r["connections_open"] == 2).await?;
    s.shutdown().await
}
