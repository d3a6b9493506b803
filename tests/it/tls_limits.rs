//! The limits of the TLS listeners (`--https`), as the plain listener has
//! them: `--max-connections` on the TCP listener and on the HTTP/3
//! endpoint, `--header-timeout` for a TLS handshake, for HTTP/1.1 request
//! headers over TLS and for an HTTP/3 request's headers, and the request
//! body limit over HTTP/2. Each case checks the answer the client gets and
//! that the listener serves the next client.

use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::tls_clients::*;

/// Retries `connect` until it succeeds: a slot freed by a closed connection
/// comes back once the server has seen the close.
async fn until_connected<T, F: Future<Output = Result<T>>>(
    what: &str,
    mut connect: impl FnMut() -> F,
) -> Result<T> {
    within(what, async {
        loop {
            if let Ok(c) = connect().await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn the_tls_listener_and_http3_hold_max_connections() -> Result<()> {
    let s = spawn_https_with(|c| c.max_connections = 2).await?;

    // TCP: the third connection is closed before its handshake.
    let mut a = H2::connect(&s).await?;
    let mut b = H2::connect(&s).await?;
    assert_eq!(a.get_json("/api/info").await?.0, 200);
    assert_eq!(b.get_json("/api/info").await?.0, 200);
    let third = tls_connect(https_addr(&s), pinned_roots(&s)?, &[b"h2"]).await;
    assert!(third.is_err(), "a third TLS connection was accepted");
    drop(a);
    let mut c = until_connected("a freed TLS slot", || H2::connect(&s)).await?;
    assert_eq!(c.get_json("/api/info").await?.0, 200);

    // HTTP/3: the third QUIC connection is refused; the two are served.
    let mut x = H3::connect(&s).await?;
    let y = H3::connect(&s).await?;
    let refused = H3::connect(&s).await;
    assert!(refused.is_err(), "a third QUIC connection was accepted");
    assert_eq!(x.json("GET", "/api/info", None).await?.0, 200);
    y.conn.close(0u32.into(), b"done");
    let mut z = until_connected("a freed QUIC slot", || H3::connect(&s)).await?;
    assert_eq!(z.json("GET", "/api/info", None).await?.0, 200);
    s.shutdown().await
}

/// Reads until the server closes: what it sent before closing.
async fn until_closed(stream: &mut (impl AsyncReadExt + Unpin), what: &str) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    within(what, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await?;
    Ok(got)
}

#[tokio::test]
async fn stalled_tls_handshakes_and_headers_are_cut_off_by_the_header_timeout() -> Result<()> {
    let s = spawn_https_with(|c| c.header_timeout = 1).await?;

    // A TCP connection that never starts its TLS handshake is closed.
    let mut silent = TcpStream::connect(https_addr(&s)).await?;
    let got = until_closed(&mut silent, "a silent handshake to be cut off").await?;
    assert!(got.is_empty(), "{got:?}");

    // HTTP/1.1 over TLS: headers that never end are cut off (an empty
    // close, or a 408 first).
    let mut tls = tls_connect(https_addr(&s), pinned_roots(&s)?, &[b"http/1.1"]).await?;
    tls.write_all(b"GET /api/info HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await?;
    let got = until_closed(&mut tls, "unfinished headers to be cut off").await?;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // HTTP/3: a request stream whose HEADERS frame never completes gets no
    // response and is ended; the connection serves the next request.
    let mut h3 = H3::connect(&s).await?;
    let (mut send, mut recv) = within("open a stream", h3.conn.open_bi()).await??;
    // RFC 9114 section 7.2.2: HEADERS (type 0x01) announcing 32 bytes, of
    // which 2 are sent.
    send.write_all(&[0x01, 0x20, 0x00, 0x00]).await?;
    let answer = within("a stalled request to end", recv.read_to_end(4096)).await?;
    match answer {
        Ok(bytes) => assert!(bytes.is_empty(), "a response came: {bytes:?}"),
        Err(error) => println!("stalled h3 request ended with {error}"),
    }
    assert_eq!(h3.json("GET", "/api/info", None).await?.0, 200);

    let mut h2 = H2::connect(&s).await?;
    assert_eq!(h2.get_json("/api/info").await?.0, 200);
    s.shutdown().await
}

#[tokio::test]
async fn an_http2_body_over_the_limit_is_413_and_the_connection_lives() -> Result<()> {
    let s = spawn_https_with(|c| c.max_message_bytes = 1024).await?;
    let mut h2 = H2::connect(&s).await?;
    let big = Bytes::from(format!("\"{}\"", "x".repeat(64 * 1024)));
    let resp = h2
        .request("POST", "/api/channels/big/messages", Body::from(big))
        .await?;
    assert_eq!(resp.status(), 413);
    let err: Value = serde_json::from_slice(&read_all(resp.into_body()).await?)?;
    assert_eq!(err["error"]["code"], "too_large");
    assert_eq!(h2.get_json("/api/info").await?.0, 200);
    let (_, msgs) = h2.get_json("/api/channels/big/messages?since=0").await?;
    assert_eq!(msgs["messages"], serde_json::json!([]));
    s.shutdown().await
}
