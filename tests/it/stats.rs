//! `/api/stats` counts what really crossed the socket.

use anyhow::Result;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Sends a raw request on a fresh connection and reads until the server
/// closes it; returns (bytes sent, bytes received).
async fn raw_exchange(base: &str, request: &str) -> Result<(usize, Vec<u8>)> {
    let addr = base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request.as_bytes()).await?;
    let mut got = Vec::new();
    within("response", tcp.read_to_end(&mut got)).await??;
    Ok((request.len(), got))
}

#[tokio::test]
async fn poll_bytes_are_the_bytes_on_the_wire() -> Result<()> {
    let s = TestServer::spawn().await?;
    s.publish("b", json!({"hello": "world"})).await?;
    let req =
        "GET /api/channels/b/messages?since=0 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let (sent, got) = raw_exchange(&s.base, req).await?;
    let text = String::from_utf8(got.clone())?;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let row = s
        .wait_stats("poll", |r| r["bytes_in"].as_u64() == Some(sent as u64))
        .await?;
    assert_eq!(
        row["bytes_out"].as_u64(),
        Some(got.len() as u64),
        "headers and body counted"
    );
    assert_eq!(row["requests"], 1);
    assert_eq!(row["messages_out"], 1);
    s.shutdown().await
}

#[tokio::test]
async fn sse_bytes_include_every_field_and_chunk() -> Result<()> {
    let s = TestServer::spawn().await?;
    s.publish("c", json!(1)).await?;
    s.publish("c", json!(2)).await?;
    let req = "GET /api/channels/c/events?since=0 HTTP/1.1\r\nhost: x\r\n\r\n";
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(req.as_bytes()).await?;
    let mut got = Vec::new();
    // Read until both events have arrived.
    within("events", async {
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&got)
            .matches("event: message")
            .count()
            < 2
        {
            let n = tcp.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await??;
    let row = s
        .wait_stats("sse", |r| r["bytes_out"].as_u64() == Some(got.len() as u64))
        .await?;
    assert_eq!(row["bytes_in"].as_u64(), Some(req.len() as u64));
    assert_eq!(row["messages_out"], 2);
    assert_eq!(row["connections_open"], 1);
    drop(tcp);
    s.wait_stats("sse", |r| r["connections_open"] == 0).await?;
    s.shutdown().await
}

#[tokio::test]
async fn websocket_bytes_count_the_upgrade_and_the_frames() -> Result<()> {
    let s = TestServer::spawn().await?;
    let mut ws = Ws::connect(&s).await?;
    ws.send(json!({"op":"echo","data":"ping"})).await?;
    ws.recv().await?;
    let row = s.stats("websocket").await?;
    // The 101 response alone is well over 100 bytes; then a small frame each way.
    assert!(row["bytes_out"].as_u64().unwrap() > 100, "{row}");
    assert!(row["bytes_in"].as_u64().unwrap() > 100, "{row}");
    assert_eq!(row["connections_open"], 1);
    s.shutdown().await
}

#[tokio::test]
async fn metrics_are_prometheus_text() -> Result<()> {
    let s = TestServer::spawn().await?;
    s.publish("m", json!(1)).await?;
    let text = s.http.get(s.url("/metrics")).send().await?.text().await?;
    assert!(text.contains("# TYPE ladder_bytes_out counter"), "{text}");
    assert!(text.contains(r#"ladder_requests_total{transport="api"}"#));
    assert!(text.trim_end().ends_with("# EOF"));
    s.shutdown().await
}
