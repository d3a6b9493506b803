//! The TLS listener (`--https`) with real clients: HTTP/2 and HTTP/1.1 by
//! ALPN over rustls pinning the development certificate, WebSocket over
//! HTTP/2 (extended CONNECT), per-stream metering, Alt-Svc, GOAWAY on
//! shutdown, and bad input.

use anyhow::{Result, ensure};
use axum::body::Body;
use futures_util::{SinkExt, StreamExt};
use hyper::Method;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::helpers::*;
use crate::tls_clients::*;

#[tokio::test]
async fn one_h2_connection_carries_sse_a_long_poll_and_publishes_at_once() -> Result<()> {
    let s = spawn_https().await?;
    let mut h2 = H2::connect(&s).await?;

    let info = h2.request("GET", "/api/info", Body::empty()).await?;
    assert_eq!(info.version(), hyper::Version::HTTP_2);
    let alt_svc = info.headers()["alt-svc"].to_str()?.to_owned();
    assert_eq!(
        alt_svc,
        format!("h3=\":{}\"; ma=86400", h3_addr(&s).port()),
        "Alt-Svc names the HTTP/3 port"
    );
    let info: Value = serde_json::from_slice(&read_all(info.into_body()).await?)?;
    assert_eq!(
        info["listeners"]["https"],
        format!("https://{}", https_addr(&s))
    );
    assert_eq!(info["listeners"]["h3"], format!("https://{}", h3_addr(&s)));
    assert_eq!(info["listeners"]["http"], s.base);

    // Three streams open together on the one connection: an event stream,
    // a waiting long poll, then the publishes that answer both.
    let sse = h2
        .request("GET", "/api/channels/h2/events", Body::empty())
        .await?;
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut sse = sse.into_body();
    let mut poller = H2 {
        send: h2.send.clone(),
        origin: h2.origin.clone(),
        driver: tokio::spawn(async { Ok(()) }),
    };
    let long_poll = tokio::spawn(async move {
        poller
            .get_json("/api/channels/h2/messages?since=0&wait=20")
            .await
    });
    // The SSE stream is live (its `retry:` has arrived) before publishing.
    let mut buf = String::new();
    while !buf.contains("retry:") {
        let chunk = next_chunk(&mut sse).await?.expect("sse open");
        buf.push_str(std::str::from_utf8(&chunk)?);
    }
    let sse_before = s.stats("sse").await?["bytes_out"].as_u64().unwrap_or(0);
    for i in 1..=3 {
        let (status, ack) = h2.publish("h2", &json!({ "n": i })).await?;
        assert_eq!((status, ack["offset"].as_u64()), (201, Some(i)));
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let chunk = next_chunk(&mut sse).await?.expect("sse open");
        buf.push_str(std::str::from_utf8(&chunk)?);
        got.extend(take_sse_messages(&mut buf)?);
    }
    assert_eq!(offsets(&got), [1, 2, 3]);
    assert_eq!(got[2]["data"], json!({"n": 3}));
    let (status, polled) = within("long poll", long_poll).await???;
    assert_eq!(status, 200);
    assert_eq!(polled["messages"][0]["offset"], 1);

    // Metered per stream: the SSE stream's events went to `sse`, the long
    // poll to `longpoll`, the publishes to `api`, all on one connection.
    let sse_row = s
        .wait_stats("sse", |r| {
            r["bytes_out"].as_u64().unwrap_or(0) >= sse_before + 3 * 60
        })
        .await?;
    assert!(sse_row["requests"].as_u64() >= Some(1));
    let lp = s.stats("longpoll").await?;
    assert!(lp["requests"].as_u64() >= Some(1) && lp["bytes_out"].as_u64() > Some(0));
    let api = s.stats("api").await?;
    assert!(
        api["bytes_in"].as_u64() > Some(3 * 8),
        "publish bodies counted: {api}"
    );
    s.shutdown().await
}

#[tokio::test]
async fn http11_is_served_over_tls_when_alpn_asks_for_it() -> Result<()> {
    let s = spawn_https().await?;
    let tls = tls_connect(https_addr(&s), pinned_roots(&s)?, &[b"http/1.1"]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = within(
        "h1 handshake",
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tls)),
    )
    .await??;
    tokio::spawn(conn);
    let req = hyper::Request::get("/api/info")
        .header("host", "localhost")
        .body(Body::empty())?;
    let resp = within("h1 response", send.send_request(req)).await??;
    assert_eq!(resp.version(), hyper::Version::HTTP_11);
    assert!(resp.headers()["alt-svc"].to_str()?.starts_with("h3=\":"));
    let info: Value = serde_json::from_slice(&read_all(resp.into_body()).await?)?;
    assert!(info["transports"].as_array().is_some_and(|t| !t.is_empty()));
    s.shutdown().await
}

#[tokio::test]
async fn a_client_pinning_another_certificate_is_refused() -> Result<()> {
    let s = spawn_https().await?;
    // A certificate for the same names that the server does not have: the
    // handshake must fail, which shows the pinned clients really verify.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let mut roots = wtransport::tls::rustls::RootCertStore::empty();
    roots.add(other.cert.der().clone())?;
    let Err(err) = tls_connect(https_addr(&s), roots, &[b"h2"]).await else {
        anyhow::bail!("a handshake with the wrong pin must fail");
    };
    assert!(format!("{err:#}").contains("certificate"), "{err:#}");
    s.shutdown().await
}

#[tokio::test]
async fn websocket_runs_over_h2_extended_connect() -> Result<()> {
    let s = spawn_https().await?;
    let mut h2 = H2::connect(&s).await?;
    // A first request so the server's SETTINGS (ENABLE_CONNECT_PROTOCOL)
    // have arrived before the extended CONNECT.
    h2.get_json("/api/info").await?;
    let req = hyper::Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{}/api/ws", h2.origin))
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Body::empty())?;
    let mut resp = within("connect", h2.send.send_request(req)).await??;
    assert_eq!(resp.status(), 200, "RFC 8441: 200, not 101");
    let upgraded = within("upgrade", hyper::upgrade::on(&mut resp)).await??;
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(json!({"op":"subscribe","channel":"wsh2"})))
        .await?;
    let mut recv = async || -> Result<Value> {
        loop {
            match within("ws frame", ws.next()).await? {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
                Some(Ok(_)) => continue,
                other => anyhow::bail!("websocket ended: {other:?}"),
            }
        }
    };
    assert_eq!(recv().await?["op"], "subscribed");
    // Another stream of the same connection publishes while the socket is
    // open: both share the one TCP connection.
    let (status, _) = h2.publish("wsh2", &json!("over h2")).await?;
    assert_eq!(status, 201);
    let msg = recv().await?;
    assert_eq!(
        (msg["op"].as_str(), msg["data"].as_str()),
        (Some("message"), Some("over h2"))
    );
    let ws_stats = s.stats("websocket").await?;
    assert!(ws_stats["requests"].as_u64() >= Some(1));

    // The socket's frames are counted under the websocket rung, both ways,
    // although the connection's socket counts nothing per transport: a
    // 20 000-byte publish op in, the same data back out as a message.
    let before = |k: &str| ws_stats[k].as_u64().unwrap_or(0);
    let (in0, out0) = (before("bytes_in"), before("bytes_out"));
    let big = "y".repeat(20_000);
    let op = json!({"op":"publish","channel":"wsh2","data":big}).to_string();
    ws.send(Message::Text(op.clone().into())).await?;
    loop {
        match within("the big message back", ws.next()).await? {
            Some(Ok(Message::Text(t))) if t.contains(&big) => break,
            Some(Ok(_)) => continue,
            other => anyhow::bail!("websocket ended: {other:?}"),
        }
    }
    let row = s
        .wait_stats("websocket", |r| {
            r["bytes_in"].as_u64().unwrap_or(0) >= in0 + op.len() as u64
                && r["bytes_out"].as_u64().unwrap_or(0) >= out0 + big.len() as u64
        })
        .await?;
    // Framing, not a second copy: under 1 KiB more than the payloads.
    let grew_in = row["bytes_in"].as_u64().unwrap_or(0) - in0;
    assert!(
        grew_in < op.len() as u64 + 1024,
        "bytes_in grew by {grew_in}"
    );
    s.shutdown().await
}

#[tokio::test]
async fn shutdown_sends_goaway_and_ends_open_streams() -> Result<()> {
    let s = spawn_https().await?;
    let mut h2 = H2::connect(&s).await?;
    let mut sse = h2
        .request("GET", "/api/channels/bye/events", Body::empty())
        .await?
        .into_body();
    next_chunk(&mut sse).await?.expect("retry line");
    s.begin_shutdown();
    // The event stream ends cleanly, and the connection closes without an
    // error (GOAWAY, then the last stream done).
    while next_chunk(&mut sse).await?.is_some() {}
    let closed = within("h2 connection to close", h2.driver).await??;
    ensure!(closed.is_ok(), "connection ended with {closed:?}");
    s.finished().await
}

#[tokio::test]
async fn tls_garbage_and_oversized_headers_get_errors_and_the_listener_lives() -> Result<()> {
    let s = spawn_https().await?;
    // Not a TLS ClientHello: the server ends the connection (with a TLS
    // alert or a plain close), nothing more.
    let mut raw = tokio::net::TcpStream::connect(https_addr(&s)).await?;
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    loop {
        let n = within("garbage answer", raw.read(&mut buf)).await??;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.is_empty() || got[0] == 0x15,
        "only a TLS alert may come back: {got:?}"
    );

    // A 32 KiB header over HTTP/2 (the limit is 16 KiB): 431 for that
    // stream only; the connection serves the next request.
    let mut h2 = H2::connect(&s).await?;
    let req = hyper::Request::get(format!("{}/api/info", h2.origin))
        .header("x-big", "a".repeat(32 * 1024))
        .body(Body::empty())?;
    within("h2 ready", h2.send.ready()).await??;
    let resp = within("big header answer", h2.send.send_request(req)).await??;
    assert_eq!(resp.status(), 431);
    let (status, _) = h2.get_json("/api/info").await?;
    assert_eq!(status, 200, "the connection survives a refused stream");
    s.shutdown().await
}

#[tokio::test]
async fn an_h2_rapid_reset_flood_gets_goaway_and_others_are_served() -> Result<()> {
    let s = spawn_https().await?;
    let mut tls = tls_connect(https_addr(&s), pinned_roots(&s)?, &[b"h2"]).await?;
    // RFC 9113 section 3.4 preface, an empty SETTINGS, then 1000 streams
    // each opened (HEADERS) and at once cancelled (RST_STREAM), in one
    // write: the pattern of CVE-2023-44487.
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend_from_slice(&frame(0x4, 0, 0, &[]));
    // HPACK: :method GET, :scheme https, :path / (static table indices 2,
    // 7, 4), :authority localhost (literal, indexed name 1).
    let mut block = vec![0x82, 0x87, 0x84, 0x01, 9];
    block.extend_from_slice(b"localhost");
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        flood.extend_from_slice(&frame(0x1, 0x4 | 0x1, id, &block));
        flood.extend_from_slice(&frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    within("flood write", tls.write_all(&flood)).await??;
    // Read frames until GOAWAY or the end of the connection.
    let mut goaway = None;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    'read: loop {
        let n = match within("flood answer", tls.read(&mut chunk)).await? {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 0x7 && len >= 8 {
                goaway = Some(u32::from_be_bytes(buf[13..17].try_into()?));
                break 'read;
            }
            buf.drain(..9 + len);
        }
    }
    // ENHANCE_YOUR_CALM (RFC 9113 section 7): too many resets.
    assert_eq!(goaway, Some(0xb), "the flooding connection gets GOAWAY");
    // Everyone else is served as before.
    let mut h2 = H2::connect(&s).await?;
    assert_eq!(h2.get_json("/api/info").await?.0, 200);
    s.shutdown().await
}

/// An HTTP/2 frame (RFC 9113 section 4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}
