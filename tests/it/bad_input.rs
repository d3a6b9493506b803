//! The bad-input matrix: for every entry point, a table of bad inputs and
//! the exact response each gets, and after each table a check that the
//! server still serves another client normally ([`still_serves`]).
//!
//! Covered elsewhere, and not repeated here:
//! - `errors.rs`: every error code from an ordinary bad HTTP request (bodies
//!   that are not JSON or not UTF-8, bad channel names, bad `since` /
//!   `limit` / `wait` / `epoch`, a non-numeric `Last-Event-ID`, `/api/ws`
//!   without an upgrade, unknown `/api` routes, wrong methods, oversized
//!   bodies) and the capacity limits (429 / 503);
//! - `websocket.rs`: bad text frames (bad JSON, unknown op with its `id`, bad
//!   channel, negative `since`, datagram delivery, missing `data`, too
//!   large), binary frames, foreign origins, frames over the hard cap
//!   (1009), a subscriber that falls out of the history (`lagged`, 4000);
//! - `webtransport.rs`: bad lines, oversized lines (only that stream
//!   closes), datagram echo and errors, wrong path (404), foreign origin,
//!   wrong ALPN, two junk UDP packets, unidirectional streams, and a stalled
//!   stream cut off by `--send-timeout`;
//! - `auth.rs`: missing, invalid and expired tokens, forbidden channels,
//!   per-IP limits.
//!
//! Here: malformed HTTP/1.1 on the wire, edge values of every query
//! parameter and header, path traversal, hostile JSON (deep nesting, several
//! values, numbers beyond f64), malformed WebSocket framing (fragments,
//! invalid UTF-8, unmasked and reserved frames), WebTransport line framing
//! (split, joined, blank, CRLF, unterminated, reset) and odd datagrams, a
//! burst of junk UDP at the QUIC port, and slowloris clients. Timeouts are
//! set to 1 s and every wait is bounded; nothing asserts how long a cut-off
//! took.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::helpers::*;
use crate::wt_client::{End, Wt, datagram_exchange, info, quic_addr};

/// A response read off a raw TCP connection.
#[derive(Debug)]
struct RawResponse {
    /// 0 when the server closed without answering.
    status: u16,
    head: String,
    body: String,
}

impl RawResponse {
    /// The `error.code` of a JSON error body, if it is one.
    fn code(&self) -> Option<String> {
        let v: Value = serde_json::from_str(&self.body).ok()?;
        v["error"]["code"].as_str().map(str::to_owned)
    }
}

fn host(s: &TestServer) -> &str {
    s.base.trim_start_matches("http://")
}

/// Writes `req` on a fresh connection and reads until the server closes it
/// (every request here either says `Connection: close` or is refused), or
/// until the bounded wait ends.
async fn raw(s: &TestServer, req: &[u8]) -> Result<RawResponse> {
    let mut tcp = TcpStream::connect(host(s)).await?;
    // The server may answer and close before it has read everything.
    let _ = tcp.write_all(req).await;
    let mut out = Vec::new();
    let _ = within("raw response", tcp.read_to_end(&mut out)).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(RawResponse {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

fn get(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

/// Another client is served normally: a publish is acked and read back, and
/// a WebSocket echoes.
async fn still_serves(s: &TestServer) -> Result<()> {
    let ack = s.publish("alive", json!({"still": "here"})).await?;
    let since = ack["offset"].as_u64().context("offset")? - 1;
    let (status, page) = s
        .get_json(&format!("/api/channels/alive/messages?since={since}"))
        .await?;
    ensure!(status == 200, "poll answered {status}");
    ensure!(
        page["messages"][0]["data"] == json!({"still": "here"}),
        "{page}"
    );
    let mut ws = Ws::connect(s).await?;
    ws.send(json!({"op": "echo", "data": "alive"})).await?;
    ensure!(ws.recv().await?["data"] == "alive");
    Ok(())
}

#[tokio::test]
async fn malformed_http_on_the_wire() -> Result<()> {
    let s = TestServer::spawn().await?;
    let big_header = format!(
        "GET /api/info HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    // (request, status, JSON error code or None for hyper's empty answer)
    let cases: Vec<(Vec<u8>, u16, Option<&str>)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400, None),
        (b"GET /api/info\r\n\r\n".to_vec(), 400, None),
        (get("/api/info", "X-Nul: a\0b\r\n"), 400, None),
        (get("/api/info", "Bad Header Name: x\r\n"), 400, None),
        (
            b"POST /api/channels/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n1234".to_vec(),
            400,
            None,
        ),
        (
            b"POST /api/channels/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
            None,
        ),
        (
            b"POST /api/channels/a/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n".to_vec(),
            400,
            Some("bad_request"),
        ),
        (big_header.into_bytes(), 431, None),
        // HTTP/2 prior knowledge on an HTTP/1.1-only listener: dropped.
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 0, None),
    ];
    for (req, status, code) in cases {
        let shown = String::from_utf8_lossy(&req[..req.len().min(80)]).into_owned();
        let r = raw(&s, &req).await?;
        assert_eq!(r.status, status, "{shown:?} -> {r:?}");
        assert_eq!(r.code().as_deref(), code, "{shown:?} -> {r:?}");
    }
    still_serves(&s).await?;
    s.shutdown().await
}

#[tokio::test]
async fn edge_values_of_query_parameters_and_headers() -> Result<()> {
    let s = TestServer::spawn().await?;
    let msgs = "/api/channels/q/messages";
    let events = "/api/channels/q/events";
    let epoch65 = "e".repeat(65);
    let cases: Vec<(Vec<u8>, u16, Option<&str>)> = vec![
        (get(&format!("{msgs}?since=1&since=2"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?since=18446744073709551616"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?since=%FF"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?since=1%00"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?limit=1.5"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?limit=18446744073709551616"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?wait=NaN"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?wait=inf"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?wait=-1"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?wait=60.0001"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?since=x&wait=5"), ""), 400, Some("bad_request")),
        (get(&format!("{msgs}?epoch={epoch65}"), ""), 400, Some("bad_request")),
        // Boundaries that are accepted: a zero wait (even `-0`) is a poll.
        (get(&format!("{msgs}?wait=-0"), ""), 200, None),
        (get(&format!("{msgs}?wait=1e-400&limit=1000&since=0"), ""), 200, None),
        (get(&format!("{msgs}?token=whatever&unknown=1"), ""), 200, None),
        (get(&format!("{events}?since=-1"), ""), 400, Some("bad_request")),
        (get(events, "Last-Event-ID: \r\n"), 400, Some("bad_request")),
        (get(events, "Last-Event-ID: abc:\r\n"), 400, Some("bad_request")),
        (get(events, "Last-Event-ID: :5\r\n"), 400, Some("bad_request")),
        (get(events, "Last-Event-ID: a:-5\r\n"), 400, Some("bad_request")),
        (get(events, &format!("Last-Event-ID: {epoch65}:1\r\n")), 400, Some("bad_request")),
        (get(events, "Last-Event-ID: \u{e9}:1\r\n"), 400, Some("bad_request")),
        (
            b"GET /api/channels/q/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            Some("bad_request"),
        ),
    ];
    for (req, status, code) in cases {
        let shown = String::from_utf8_lossy(&req[..req.len().min(90)]).into_owned();
        let r = raw(&s, &req).await?;
        assert_eq!(r.status, status, "{shown:?} -> {r:?}");
        assert_eq!(r.code().as_deref(), code, "{shown:?} -> {r:?}");
        if status == 400 {
            assert!(r.head.contains("content-type: application/json"), "{r:?}");
        }
    }
    still_serves(&s).await?;
    s.shutdown().await
}

#[tokio::test]
async fn routes_methods_upgrades_and_path_traversal() -> Result<()> {
    let s = TestServer::spawn().await?;
    let ws_head = "Upgrade: websocket\r\nConnection: upgrade\r\n";
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let raw_ws = |extra: &str| -> Vec<u8> {
        format!("GET /api/ws HTTP/1.1\r\nHost: x\r\n{ws_head}{extra}\r\n").into_bytes()
    };
    let cases: Vec<(Vec<u8>, u16, Option<&str>)> = vec![
        (raw_ws(""), 400, Some("bad_request")),
        (raw_ws(&format!("{key}Sec-WebSocket-Version: 8\r\n")), 400, Some("bad_request")),
        (
            raw_ws(&format!("{key}Sec-WebSocket-Version: 13\r\nOrigin: null\r\n")),
            403,
            Some("forbidden"),
        ),
        (
            b"POST /api/ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            Some("method_not_allowed"),
        ),
        (
            b"POST /api/info HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            Some("method_not_allowed"),
        ),
        (
            b"PUT /api/channels/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            Some("method_not_allowed"),
        ),
        (get("/api/channels/a", ""), 404, Some("not_found")),
        (get("/api/channels/a/messages/extra", ""), 404, Some("not_found")),
        (get("/api/channels//messages", ""), 400, Some("bad_channel")),
        // The static files never leave web/.
        (get("/../../etc/passwd", ""), 404, None),
        (get("/%2e%2e/%2e%2e/etc/passwd", ""), 404, None),
        (get("/..%2fCargo.toml", ""), 404, None),
        (get("/%2e%2e%2fCargo.toml", ""), 404, None),
    ];
    for (req, status, code) in cases {
        let shown = String::from_utf8_lossy(&req[..req.len().min(90)]).into_owned();
        let r = raw(&s, &req).await?;
        assert_eq!(r.status, status, "{shown:?} -> {r:?}");
        assert_eq!(r.code().as_deref(), code, "{shown:?} -> {r:?}");
        assert!(
            !r.body.contains("root:") && !r.body.contains("[package]"),
            "{shown:?} leaked a file"
        );
    }
    still_serves(&s).await?;
    s.shutdown().await
}

#[tokio::test]
async fn hostile_json_bodies() -> Result<()> {
    let s = TestServer::spawn().await?;
    let url = s.url("/api/channels/j/messages");
    let deep = "[".repeat(100_000);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (deep.into_bytes(), 400, "bad_json"),
        (b"1 2".to_vec(), 400, "bad_json"),
        (br#"{"a":1}{"b":2}"#.to_vec(), 400, "bad_json"),
        (b"\xef\xbb\xbf1".to_vec(), 400, "bad_json"),
        (b"NaN".to_vec(), 400, "bad_json"),
        (b"  \n\t ".to_vec(), 400, "bad_json"),
        (b"\"raw\x01control\"".to_vec(), 400, "bad_json"),
    ];
    for (body, status, code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        let resp = s.http.post(&url).body(body).send().await?;
        assert_eq!(resp.status().as_u16(), status, "{shown:?}");
        let v: Value = resp.json().await?;
        assert_eq!(v["error"]["code"], code, "{shown:?}: {v}");
    }
    // Nothing above was stored.
    let (_, page) = s.get_json("/api/channels/j/messages?since=0").await?;
    assert_eq!(page["messages"], json!([]));
    still_serves(&s).await?;
    s.shutdown().await
}

/// Found by fuzzing (`fuzz/seeds/ops/regress-*`): a body with line breaks
/// was re-serialised through `serde_json::Value`, which reordered keys,
/// rounded big integers and refused numbers beyond f64 that the same body
/// on one line was accepted with. Now both forms store the text as sent,
/// less the whitespace.
#[tokio::test]
async fn payloads_are_kept_as_sent_with_or_without_line_breaks() -> Result<()> {
    let s = TestServer::spawn().await?;
    let url = s.url("/api/channels/exact/messages");
    let one_line = r#"{"b":1,"a":[123456789012345678901234567890,1e999,"x\"\n y"]}"#;
    let pretty =
        "{\"b\": 1,\n \"a\": [123456789012345678901234567890,\r\n 1e999, \"x\\\"\\n y\"]\n}";
    for body in [one_line, pretty] {
        let resp = s.http.post(&url).body(body).send().await?;
        assert_eq!(resp.status(), 201, "{body:?}: {}", resp.text().await?);
    }
    // Compare the raw text: `Value` cannot even hold 1e999.
    let text = s
        .http
        .get(s.url("/api/channels/exact/messages?since=0"))
        .send()
        .await?
        .text()
        .await?;
    let want = format!(r#""data":{one_line},"#);
    assert_eq!(text.matches(&want).count(), 2, "{text}");
    still_serves(&s).await?;
    s.shutdown().await
}

/// A channel path segment that is not UTF-8 once percent-decoded is answered
/// with a JSON `bad_channel` on both channel routes, not with axum's
/// plain-text rejection.
#[tokio::test]
async fn a_non_utf8_channel_in_the_path_is_a_json_bad_channel() -> Result<()> {
    let s = TestServer::spawn().await?;
    for target in ["/api/channels/%FF/messages", "/api/channels/%FF/events"] {
        let r = raw(&s, &get(target, "")).await?;
        assert_eq!(
            (r.status, r.code().as_deref()),
            (400, Some("bad_channel")),
            "{r:?}"
        );
    }
    s.shutdown().await
}

#[tokio::test]
async fn malformed_websocket_frames() -> Result<()> {
    /// Nesting that never closes: JSON's parser must not recurse on it.
    const UNCLOSED: &str = concat!(
        r#"{"op":"echo","data":"#,
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
    );
    let s = TestServer::spawn().await?;
    let mut ws = Ws::connect(&s).await?;
    // Frames that are well-formed WebSocket but bad ops: an error frame each.
    let cases = [
        ("", "bad_json"),
        (
            r#"{"op":"echo","data":1}{"op":"echo","data":2}"#,
            "bad_json",
        ),
        (UNCLOSED, "bad_json"),
        ("[1,2]", "bad_request"),
        ("null", "bad_request"),
        (r#"{"op":"echo"}"#, "bad_request"),
        (r#"{"op":7}"#, "bad_request"),
        (
            r#"{"op":"subscribe","channel":"a","since":1.5}"#,
            "bad_request",
        ),
        (
            r#"{"op":"subscribe","channel":"a","epoch":5}"#,
            "bad_request",
        ),
        (
            r#"{"op":"subscribe","channel":"a","delivery":"pigeon"}"#,
            "bad_request",
        ),
        (r#"{"op":"subscribe","channel":""}"#, "bad_channel"),
        (r#"{"op":"unsubscribe"}"#, "bad_request"),
    ];
    for (text, code) in cases {
        ws.send_raw(Message::text(text)).await?;
        let reply = ws.recv().await?;
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{text:?}: {reply}"
        );
    }
    // A fragmented text message is one op.
    let first = Frame::message(
        br#"{"op":"echo","#.to_vec(),
        OpCode::Data(Data::Text),
        false,
    );
    let rest = Frame::message(
        br#""data":"joined"}"#.to_vec(),
        OpCode::Data(Data::Continue),
        true,
    );
    ws.send_raw(Message::Frame(first)).await?;
    ws.send_raw(Message::Frame(rest)).await?;
    assert_eq!(ws.recv().await?, json!({"op": "echo", "data": "joined"}));
    // A ping is answered and the socket stays.
    ws.send_raw(Message::Ping(bytes::Bytes::from_static(b"hi")))
        .await?;
    let pong = within("pong", ws.inner.next()).await?;
    assert!(
        matches!(pong, Some(Ok(Message::Pong(ref p))) if &p[..] == b"hi"),
        "{pong:?}"
    );

    // Frames that break RFC 6455: the connection ends (the WebSocket layer
    // refuses them); nothing else is affected.
    let bad_text = Frame::message(vec![0xff, 0xfe], OpCode::Data(Data::Text), true);
    let reserved = Frame::message(b"x".to_vec(), OpCode::Data(Data::Reserved(3)), true);
    let orphan = Frame::message(b"x".to_vec(), OpCode::Data(Data::Continue), true);
    for frame in [bad_text, reserved, orphan] {
        let shown = format!("{:?}", frame.header().opcode);
        let mut ws = Ws::connect(&s).await?;
        let _ = ws.send_raw(Message::Frame(frame)).await;
        let end = socket_end(&mut ws).await?;
        assert!(matches!(end, Some(1002 | 1007) | None), "{shown}: {end:?}");
    }
    // An unmasked client frame (only the raw socket can send one).
    let mut tcp = raw_ws_handshake(&s).await?;
    // FIN + text, no mask bit, 5 bytes.
    tcp.write_all(b"\x81\x05hello").await?;
    let mut rest = Vec::new();
    let _ = within("unmasked frame refused", tcp.read_to_end(&mut rest)).await?;
    ensure!(
        rest.is_empty() || rest[0] == 0x88,
        "expected a close frame or nothing, got {rest:?}"
    );

    ws.send(json!({"op": "echo", "data": "first socket unaffected"}))
        .await?;
    assert_eq!(ws.recv().await?["data"], "first socket unaffected");
    still_serves(&s).await?;
    s.shutdown().await
}

/// How a socket ended: its close code, or `None` for a reset or EOF.
async fn socket_end(ws: &mut Ws) -> Result<Option<u16>> {
    loop {
        match within("the socket to end", ws.inner.next()).await? {
            Some(Ok(Message::Close(c))) => return Ok(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Ok(None),
        }
    }
}

/// A WebSocket handshake done by hand on a [`never_reading`] socket;
/// returns the socket after the 101. Its receive buffer is small, so a test
/// that stops reading stalls the server's writes early.
async fn raw_ws_handshake(s: &TestServer) -> Result<TcpStream> {
    let mut tcp = never_reading(
        s,
        b"GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("101", tcp.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    Ok(tcp)
}

#[tokio::test]
async fn webtransport_line_framing_and_odd_datagrams() -> Result<()> {
    let s = TestServer::spawn().await?;
    let wt = Wt::connect(&s).await?;
    let mut st = wt.stream().await?;
    let cases: Vec<(&[u8], &str)> = vec![
        (b"\xff\xfe\n", "bad_json"),
        (b"[1]\n", "bad_request"),
        (b"null\n", "bad_request"),
        (b"{\"op\":\"echo\"}\n", "bad_request"),
        (
            b"{\"op\":\"echo\",\"data\":1}{\"op\":\"echo\",\"data\":2}\n",
            "bad_json",
        ),
    ];
    for (line, code) in cases {
        st.send_raw(line).await?;
        let reply = st.recv().await?;
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{line:?}: {reply}"
        );
    }
    // Blank and whitespace-only lines get no reply at all.
    st.send_raw(b"\n   \n\r\n\t\n").await?;
    // CRLF endings, an op split over writes, two ops in one write.
    st.send_raw(b"{\"op\":\"echo\",\"data\":\"crlf\"}\r\n")
        .await?;
    for part in [
        &b"{\"op\":\"ec"[..],
        b"ho\",\"da",
        b"ta\":\"split\"}",
        b"\n",
    ] {
        st.send_raw(part).await?;
    }
    st.send_raw(b"{\"op\":\"echo\",\"data\":1}\n{\"op\":\"echo\",\"data\":2}\n")
        .await?;
    for want in [json!("crlf"), json!("split"), json!(1), json!(2)] {
        assert_eq!(st.recv().await?, json!({"op": "echo", "data": want}));
    }

    // A last op without a newline, then the client finishes its side: it
    // is still answered, and the stream finishes.
    let mut last = wt.stream().await?;
    last.send_raw(br#"{"op":"echo","data":"unterminated"}"#)
        .await?;
    last.finish().await?;
    assert_eq!(last.recv().await?["data"], "unterminated");
    assert_eq!(last.next().await?, Err(End::Finished));

    // A stream the client resets mid-line: only that stream is gone.
    let mut reset = wt.stream().await?;
    reset
        .send_raw(br#"{"op":"publish","channel":"half"#)
        .await?;
    reset.reset(7)?;

    // Datagrams: each gets an error datagram saying why.
    for (payload, code) in [
        (&b""[..], "bad_json"),
        (b"\xff", "bad_json"),
        (&[b'{'; 900][..], "bad_json"),
        (b"[]", "bad_request"),
        (br#"{"op":"echo"}"#, "bad_request"),
        (br#"{"op":"unsubscribe","channel":"a"}"#, "bad_request"),
    ] {
        let reply = datagram_exchange(&wt.conn, payload).await?;
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{payload:?}: {reply}"
        );
    }
    st.echo(json!("session unaffected")).await?;
    Wt::connect(&s)
        .await?
        .stream()
        .await?
        .echo(json!(0))
        .await?;
    still_serves(&s).await?;
    s.shutdown().await
}

#[tokio::test]
async fn a_burst_of_junk_udp_at_the_quic_port() -> Result<()> {
    let s = TestServer::spawn().await?;
    let wt = Wt::connect(&s).await?;
    let mut st = wt.stream().await?;
    let (url, _) = info(&s).await?;
    let addr = quic_addr(&url)?;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    // A seeded generator, so a failure can be replayed.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..600u32 {
        let len = (next() % 1500) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match i % 4 {
            // Long header, unknown version: asks for version negotiation.
            0 if len > 6 => p[..5].copy_from_slice(&[0xc0, 0x0a, 0x1a, 0x2a, 0x3a]),
            // Long header claiming QUIC v1 (an Initial full of junk).
            1 if len > 6 => p[..5].copy_from_slice(&[0xc0, 0, 0, 0, 1]),
            // Short header: looks like 1-RTT data for an unknown connection.
            2 if len > 0 => p[0] = 0x40 | (p[0] & 0x3f),
            _ => {}
        }
        udp.send_to(&p, addr).await?;
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    udp.send_to(&[], addr).await?;
    // The session that was open carries on, and new ones are accepted.
    st.echo(json!("survived")).await?;
    Wt::connect(&s)
        .await?
        .stream()
        .await?
        .echo(json!(1))
        .await?;
    still_serves(&s).await?;
    s.shutdown().await
}

/// Writes `byte` every 200 ms until the server hangs up (bounded by
/// [`WAIT`]); returns whatever the server sent meanwhile.
async fn trickle(tcp: &mut TcpStream, byte: &[u8], what: &str) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    within(what, async {
        let mut buf = [0u8; 1024];
        loop {
            if tcp.write_all(byte).await.is_err() {
                return anyhow::Ok(());
            }
            match tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return Ok(()),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    })
    .await??;
    Ok(got)
}

#[tokio::test]
async fn slow_headers_are_cut_off_by_the_header_timeout() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.header_timeout = 1).await?;
    let mut tcp = TcpStream::connect(host(&s)).await?;
    tcp.write_all(b"GET /api/info HTTP/1.1\r\nHost: x\r\n")
        .await?;
    // Trickle a header byte every 200 ms until the server hangs up.
    let got = trickle(&mut tcp, b"X", "slow headers to be cut off").await?;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    still_serves(&s).await?;
    s.shutdown().await
}

/// A body trickled a byte at a time, each byte well within the gap that
/// `RequestBodyTimeoutLayer` allows, is still cut off: the whole body must
/// arrive within 3 × `--header-timeout`.
#[tokio::test]
async fn a_trickled_body_is_cut_off() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.header_timeout = 1).await?;
    let mut tcp = TcpStream::connect(host(&s)).await?;
    tcp.write_all(
        b"POST /api/channels/slow/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
    )
    .await?;
    trickle(&mut tcp, b"1", "a trickled body to be cut off").await?;
    still_serves(&s).await?;
    s.shutdown().await
}

/// A client with a tiny receive buffer that never reads what it asked for
/// (unless the caller does).
async fn never_reading(s: &TestServer, request: &[u8]) -> Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let mut tcp = sock.connect(host(s).parse()?).await?;
    tcp.write_all(request).await?;
    Ok(tcp)
}

#[tokio::test]
async fn a_websocket_subscriber_that_never_reads_is_cut_off_by_the_send_timeout() -> Result<()> {
    // History large enough that the subscriber cannot lag out of it: only
    // the send timeout can end it.
    let s = TestServer::spawn_with(|c| {
        c.send_timeout = 1;
        c.history = 1000;
    })
    .await?;
    let mut tcp = raw_ws_handshake(&s).await?;
    let sub = br#"{"op":"subscribe","channel":"stuck"}"#;
    let mut frame = vec![0x81, 0x80 | sub.len() as u8, 0, 0, 0, 0]; // masked, zero key
    frame.extend_from_slice(sub);
    tcp.write_all(&frame).await?;
    s.wait_stats("websocket", |r| r["connections_open"] == 1)
        .await?;
    publish_until(&s, "stuck", "websocket").await?;
    still_serves(&s).await?;
    drop(tcp);
    s.shutdown().await
}

/// An event stream whose client stopped reading is cut off by
/// `--send-timeout` like a WebSocket is (every HTTP response is written
/// under the send timeout), and the server serves others meanwhile.
#[tokio::test]
async fn an_sse_subscriber_that_never_reads_is_cut_off_by_the_send_timeout() -> Result<()> {
    let s = TestServer::spawn_with(|c| {
        c.send_timeout = 1;
        c.history = 1000;
    })
    .await?;
    let tcp = never_reading(&s, &get("/api/channels/stuck/events", "")).await?;
    s.wait_stats("sse", |r| r["connections_open"] == 1).await?;
    publish_until(&s, "stuck", "sse").await?;
    still_serves(&s).await?;
    drop(tcp);
    s.shutdown().await
}

/// Publishes 60 KB messages until `transport` has no connection open (the
/// stuck subscriber was cut off), bounded by [`WAIT`] and a message count.
async fn publish_until(s: &TestServer, channel: &str, transport: &str) -> Result<()> {
    let pad = "p".repeat(60_000);
    within("the stuck subscriber to be cut off", async {
        for i in 0..2000 {
            s.publish(channel, json!({"i": i, "pad": pad})).await?;
            if i % 20 == 19 && s.stats(transport).await?["connections_open"] == 0 {
                return anyhow::Ok(());
            }
        }
        loop {
            if s.stats(transport).await?["connections_open"] == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    let row = s.stats(transport).await?;
    assert!(row["lagged"].as_u64() >= Some(1), "{row}");
    Ok(())
}
