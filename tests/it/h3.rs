//! HTTP/3 for the router, with a real `h3` + `h3-quinn` client pinning the
//! development certificate: the API, publishes, long polls and SSE frame
//! by frame, the body limit, and GOAWAY on shutdown.

use anyhow::Result;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::tls_clients::*;

#[tokio::test]
async fn api_publish_long_poll_and_sse_over_http3() -> Result<()> {
    let s = spawn_https().await?;
    assert_eq!(
        h3_addr(&s).port(),
        https_addr(&s).port(),
        "same port number"
    );
    let mut h3 = H3::connect(&s).await?;
    let (status, info) = h3.json("GET", "/api/info", None).await?;
    assert_eq!(status, 200);
    assert_eq!(info["listeners"]["h3"], format!("https://{}", h3_addr(&s)));

    // An event stream and a waiting long poll, both on the one connection.
    let (status, mut sse) = h3.request("GET", "/api/channels/q/events", None).await?;
    assert_eq!(status, 200);
    let mut poller = H3 {
        send: h3.send.clone(),
        origin: h3.origin.clone(),
        driver: tokio::spawn(std::future::pending()),
        endpoint: h3.endpoint.clone(),
        conn: h3.conn.clone(),
    };
    let long_poll = tokio::spawn(async move {
        poller
            .json("GET", "/api/channels/q/messages?since=0&wait=20", None)
            .await
    });
    let mut buf = String::new();
    while !buf.contains("retry:") {
        let chunk = h3_chunk(&mut sse).await?.expect("sse open");
        buf.push_str(std::str::from_utf8(&chunk)?);
    }
    // Frame by frame: each event arrives before the next is published.
    for i in 1..=3u64 {
        let body = Bytes::from(json!({ "n": i }).to_string());
        let (status, ack) = h3
            .json("POST", "/api/channels/q/messages", Some(body))
            .await?;
        assert_eq!((status, ack["offset"].as_u64()), (201, Some(i)));
        let mut got = Vec::new();
        while got.is_empty() {
            let chunk = h3_chunk(&mut sse).await?.expect("sse open");
            buf.push_str(std::str::from_utf8(&chunk)?);
            got = take_sse_messages(&mut buf)?;
        }
        assert_eq!(offsets(&got), [i]);
        assert_eq!(got[0]["data"], json!({ "n": i }));
    }
    let (status, polled) = within("long poll", long_poll).await???;
    assert_eq!(status, 200);
    assert_eq!(polled["messages"][0]["offset"], 1);

    // Counted per stream, into each rung's row.
    let sse_row = s
        .wait_stats("sse", |r| r["bytes_out"].as_u64() > Some(3 * 60))
        .await?;
    assert!(sse_row["requests"].as_u64() >= Some(1));
    assert!(s.stats("longpoll").await?["requests"].as_u64() >= Some(1));
    s.shutdown().await
}

#[tokio::test]
async fn an_http3_body_over_the_limit_is_413_and_the_connection_lives() -> Result<()> {
    let s = spawn_https_with(|c| c.max_message_bytes = 1024).await?;
    let mut h3 = H3::connect(&s).await?;
    // The handlers read at most 2 × the message limit + 1 KiB.
    let big = Bytes::from(format!("\"{}\"", "x".repeat(64 * 1024)));
    let (status, err): (u16, Value) = h3
        .json("POST", "/api/channels/big/messages", Some(big))
        .await?;
    assert_eq!(status, 413);
    assert_eq!(err["error"]["code"], "too_large");
    let (status, _) = h3.json("GET", "/api/info", None).await?;
    assert_eq!(status, 200);
    assert_eq!(
        s.get_json("/api/channels/big/messages?since=0").await?.1["messages"],
        json!([])
    );
    s.shutdown().await
}

#[tokio::test]
async fn shutdown_sends_http3_goaway_and_ends_event_streams() -> Result<()> {
    let s = spawn_https().await?;
    let mut h3 = H3::connect(&s).await?;
    let (_, mut sse) = h3.request("GET", "/api/channels/bye/events", None).await?;
    h3_chunk(&mut sse).await?.expect("retry line");
    s.begin_shutdown();
    // The stream ends cleanly (FIN), then the connection closes with
    // H3_NO_ERROR.
    while h3_chunk(&mut sse).await?.is_some() {}
    let closed = within("h3 connection to close", h3.driver).await?;
    let why = format!("{closed:?}");
    assert!(why.contains("ApplicationClose(H3_NO_ERROR)"), "{why}");
    s.finished().await
}
