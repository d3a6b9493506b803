//! Graceful shutdown with clients connected on every rung.

use anyhow::{Context, Result};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn open_clients_see_a_clean_end() -> Result<()> {
    let s = TestServer::spawn().await?;
    let mut ws = Ws::connect(&s).await?;
    ws.subscribe("s", None).await?;
    let mut sse = Sse::connect(&s, "s", "", None).await?;
    let url = s.url("/api/channels/s/messages?wait=60");
    let http = s.http.clone();
    let long = tokio::spawn(async move {
        let resp = http.get(url).send().await?;
        anyhow::Ok((
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await?,
        ))
    });
    s.wait_stats("longpoll", |r| r["connections_open"] == 1)
        .await?;

    s.begin_shutdown();
    assert_eq!(ws.closed().await?, 1001, "WebSocket closes with 1001");
    assert_eq!(sse.next().await?, None, "the SSE stream ends");
    let (status, body) = within("long poll answer", long).await???;
    assert_eq!(status, 200);
    assert_eq!(body["messages"], json!([]));
    s.finished().await
}

#[tokio::test]
async fn the_binary_prints_its_addresses_and_exits_zero_on_sigterm() -> Result<()> {
    let child = Child::start(&[]).await?;
    let line = child.banner.clone();
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_owned))
    };
    let http = field("http").context("http=")?;
    let hash = field("cert_sha256").context("cert_sha256=")?;
    assert!(
        http.starts_with("http://127.0.0.1:") && !http.ends_with(":0"),
        "{line}"
    );
    assert_eq!(hash.len(), 64);
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(field("webtransport").is_some(), "{line}");

    let resp = reqwest::get(format!("{http}/api/info")).await?;
    assert_eq!(resp.status(), 200);

    // `signal` fails unless `kill -TERM` succeeds, then waits for the exit.
    let status = child.signal("-TERM").await?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}
