//! WebTransport over HTTP/3: sessions, independent streams, datagrams,
//! refusals, the certificate and shutdown — driven by the wtransport client
//! of [`crate::wt_client`] pinning the served certificate hash (validation
//! stays on), raw quinn where the wire itself matters, and a plain UDP
//! socket for junk.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use wtransport::endpoint::ConnectOptions;
use wtransport::error::{ConnectingError, ConnectionError};

use crate::helpers::*;
use crate::wt_client::*;

fn app_close_code(e: &ConnectionError) -> Option<(u64, String)> {
    match e {
        ConnectionError::ApplicationClosed(c) => Some((
            c.code().into_inner(),
            String::from_utf8_lossy(c.reason()).into_owned(),
        )),
        _ => None,
    }
}

#[tokio::test]
async fn each_stream_gets_exactly_its_own_channel_in_order() -> Result<()> {
    let s = TestServer::spawn().await?;
    let wt = Wt::connect(&s).await?;
    let mut streams = Vec::new();
    for k in 0..3 {
        let mut st = wt.stream().await?;
        st.subscribe(json!({"op": "subscribe", "channel": format!("own.{k}")}))
            .await?;
        streams.push(st);
    }
    for i in 1..=20 {
        for k in 0..3 {
            s.publish(&format!("own.{k}"), json!({"k": k, "i": i}))
                .await?;
        }
    }
    for (k, st) in streams.iter_mut().enumerate() {
        let got = st.messages_until(20).await?;
        assert_eq!(offsets(&got), (1..=20).collect::<Vec<_>>());
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m["channel"], format!("own.{k}"));
            assert_eq!(m["data"], json!({"k": k, "i": i + 1}));
        }
        // Nothing else is waiting on this stream: an echo comes next.
        st.echo(json!("end")).await?;
    }
    let row = s
        .wait_stats("webtransport", |r| {
            r["bytes_in"].as_u64() > Some(0) && r["bytes_out"].as_u64() > Some(0)
        })
        .await?;
    assert_eq!(row["connections_open"], 1);
    assert_eq!(row["requests"], 1);
    assert_eq!(row["streams_total"], 3);
    assert_eq!(row["messages_out"], 60);
    drop(streams);
    drop(wt);
    s.shutdown().await
}

#[tokio::test]
async fn a_stalled_stream_does_not_hold_up_another() -> Result<()> {
    // Small history so the stalled subscriber falls out of it; a short send
    // timeout so a blocked write is cut off within the test.
    let s = TestServer::spawn_with(|c| {
        c.history = 64;
        c.send_timeout = 2;
    })
    .await?;
    let wt = Wt::connect(&s).await?;
    let mut a = wt.stream().await?;
    let mut b = wt.stream().await?;
    let mut publisher = wt.stream().await?;
    a.subscribe(json!({"op": "subscribe", "channel": "flood"}))
        .await?;
    b.subscribe(json!({"op": "subscribe", "channel": "steady"}))
        .await?;

    // 400 × 4 KB on A's channel is more than a QUIC stream window, so A's
    // writes block while nobody reads A; B must still get every message.
    let pad = "x".repeat(4000);
    const N: u64 = 400;
    for i in 1..=N {
        publisher
            .send(json!({"op": "publish", "channel": "flood", "data": {"i": i, "pad": pad}}))
            .await?;
        publisher
            .send(json!({"op": "publish", "channel": "steady", "data": {"i": i}}))
            .await?;
        for _ in 0..2 {
            assert_eq!(publisher.recv().await?["op"], "published");
        }
        let m = b.recv().await?;
        assert_eq!(m["op"], "message", "{m}");
        assert_eq!(m["channel"], "steady");
        assert_eq!(m["offset"], i);
        assert_eq!(m["data"]["i"], i);
    }

    // Now A reads: an unbroken run of its own messages from offset 1, then
    // either all of them, a `lagged` line, or the stream cut off.
    let mut last = 0;
    let outcome = loop {
        match a.next().await? {
            Ok(m) if m["op"] == "message" => {
                assert_eq!(m["channel"], "flood");
                assert_eq!(m["offset"], last + 1, "gap or reorder on A");
                last += 1;
                if last == N {
                    break "caught up".to_owned();
                }
            }
            Ok(m) if m["op"] == "lagged" => {
                assert_eq!(m["offset"], last, "{m}");
                break "lagged".to_owned();
            }
            Ok(m) => bail!("unexpected line on A: {m}"),
            Err(end) => break format!("{end:?}"),
        }
    };
    assert!(
        ["caught up", "lagged", "Finished", "Reset(2)"].contains(&outcome.as_str()),
        "A ended with {outcome}"
    );
    println!("stalled stream A ended: {outcome} after {last} messages");
    // B is still fine afterwards.
    s.publish("steady", json!({"i": N + 1})).await?;
    assert_eq!(b.messages_until(N + 1).await?.len(), 1);
    b.echo(json!({"after": outcome})).await?;
    s.shutdown().await
}

#[tokio::test]
async fn webtransport_sse_and_websocket_see_the_same_offsets() -> Result<()> {
    let s = TestServer::spawn().await?;
    let wt = Wt::connect(&s).await?;
    let mut st = wt.stream().await?;

    // WebTransport → SSE and WebSocket.
    let mut sse = Sse::connect(&s, "xt", "?since=0", None).await?;
    let mut ws = Ws::connect(&s).await?;
    ws.subscribe("xt", Some(0)).await?;
    for i in 1..=5u64 {
        st.send(json!({"op": "publish", "channel": "xt", "data": {"wt": i}, "id": i}))
            .await?;
        let ack = st.recv().await?;
        assert_eq!(ack["op"], "published");
        assert_eq!(ack["offset"], i);
        assert_eq!(ack["id"], i);
    }
    let expect: Vec<(u64, Value)> = (1..=5u64).map(|i| (i, json!({"wt": i}))).collect();
    assert_eq!(pairs(&sse.messages_until(5).await?), expect);
    assert_eq!(pairs(&ws.messages_until(5).await?), expect);

    // WebSocket and HTTP → WebTransport.
    st.subscribe(json!({"op": "subscribe", "channel": "xt", "since": 5}))
        .await?;
    ws.send(json!({"op": "publish", "channel": "xt", "data": "from ws"}))
        .await?;
    // The WebSocket also gets its own message back through its subscription;
    // skip to the ack.
    loop {
        let f = ws.recv().await?;
        if f["op"] == "published" {
            assert_eq!(f["offset"], 6);
            break;
        }
    }
    s.publish("xt", json!("from http")).await?;
    let got = st.messages_until(7).await?;
    assert_eq!(
        pairs(&got),
        vec![(6, json!("from ws")), (7, json!("from http"))]
    );
    let via_sse = sse.messages_until(7).await?;
    assert_eq!(pairs(&via_sse), pairs(&got));
    s.shutdown().await
}

#[tokio::test]
async fn datagram_echo_and_errors() -> Result<()> {
    let s = TestServer::spawn().await?;
    let wt = Wt::connect(&s).await?;
    let ask = json!({"op": "echo", "data": {"x": 1, "s": "hé"}});
    assert_eq!(
        datagram_exchange(&wt.conn, ask.to_string().as_bytes()).await?,
        ask
    );

    // Anything but echo is answered with an error datagram.
    let other = datagram_exchange(&wt.conn, br#"{"op":"subscribe","channel":"x","id":3}"#).await?;
    assert_eq!(other["op"], "error", "{other}");
    assert_eq!(other["code"], "bad_request");
    assert_eq!(other["id"], 3);
    let bad = datagram_exchange(&wt.conn, b"{nope").await?;
    assert_eq!(bad["code"], "bad_json", "{bad}");

    s.wait_stats("webtransport", |r| {
        r["datagrams_in"].as_u64() >= Some(3) && r["datagrams_out"].as_u64() >= Some(3)
    })
    .await?;
    s.shutdown().await
}

#[tokio::test]
async fn datagram_delivery_falls_back_to_the_stream_when_too_big() -> Result<()> {
    let s = TestServer::spawn().await?;
    let wt = Wt::connect(&s).await?;
    let mut st = wt.stream().await?;
    st.subscribe(json!({"op": "subscribe", "channel": "cursor", "delivery": "datagram"}))
        .await?;
    // Small messages come as datagrams (unreliable: publish until one lands).
    let mut got = None;
    for i in 0..10 {
        s.publish("cursor", json!({"x": i})).await?;
        if let Ok(d) = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            wt.conn.receive_datagram(),
        )
        .await
        {
            got = Some(serde_json::from_slice::<Value>(&d?.payload())?);
            break;
        }
    }
    let m = got.context("no message datagram")?;
    assert_eq!(m["op"], "message");
    assert_eq!(m["channel"], "cursor");
    assert!(m["offset"].as_u64().is_some());

    // One that cannot fit any datagram arrives on the stream, in order.
    let big = "y".repeat(4000);
    let ack = s.publish("cursor", json!({"big": big})).await?;
    let line = st.recv().await?;
    assert_eq!(line["op"], "message");
    assert_eq!(line["offset"], ack["offset"]);
    assert_eq!(line["data"]["big"].as_str().map(str::len), Some(4000));
    s.wait_stats("webtransport", |r| r["datagrams_out"].as_u64() >= Some(1))
        .await?;
    s.shutdown().await
}

// Server and 200 clients share the test's runtime: give it threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_sessions_of_four_streams() -> Result<()> {
    const SESSIONS: usize = 200;
    const STREAMS: usize = 4;
    let s = TestServer::spawn().await?;
    let (url, hash) = info(&s).await?;
    let endpoint = Arc::new(client(&hash)?);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SESSIONS);
    let go = tokio_util::sync::CancellationToken::new();
    // All sessions end up open at once, but at most 32 handshakes run at a
    // time: a burst of 200 overflows loopback socket buffers and then only
    // measures QUIC's retransmission back-off.
    let opening = Arc::new(tokio::sync::Semaphore::new(32));
    let mut set = JoinSet::new();
    for n in 0..SESSIONS {
        let (endpoint, url, ready_tx, go, opening) = (
            endpoint.clone(),
            url.clone(),
            ready_tx.clone(),
            go.clone(),
            opening.clone(),
        );
        set.spawn(async move {
            let permit = opening.acquire_owned().await?;
            let conn = within("many connect", endpoint.connect(&url)).await??;
            let mut streams = Vec::new();
            for k in 0..STREAMS {
                let mut st = Lines::open(&conn).await?;
                st.subscribe(json!({"op": "subscribe", "channel": format!("many.{k}")}))
                    .await?;
                streams.push(st);
            }
            drop(permit);
            ready_tx.send(()).await?;
            within("go signal", go.cancelled()).await?;
            for (k, st) in streams.iter_mut().enumerate() {
                let m = st.recv().await?;
                ensure!(
                    m["op"] == "message" && m["channel"] == format!("many.{k}") && m["offset"] == 1,
                    "session {n} stream {k}: {m}"
                );
            }
            Ok::<_, anyhow::Error>(conn)
        });
    }
    drop(ready_tx);
    for _ in 0..SESSIONS {
        within("sessions ready", ready_rx.recv())
            .await?
            .context("a session failed")?;
    }
    let row = s.stats("webtransport").await?;
    assert_eq!(row["connections_open"], SESSIONS as u64);
    assert_eq!(row["streams_total"], (SESSIONS * STREAMS) as u64);
    for k in 0..STREAMS {
        s.publish(&format!("many.{k}"), json!(k)).await?;
    }
    go.cancel();
    let mut conns = Vec::new();
    while let Some(done) = within("sessions done", set.join_next()).await? {
        conns.push(done??);
    }
    assert_eq!(conns.len(), SESSIONS);
    s.shutdown().await
}

#[tokio::test]
async fn bad_lines_get_errors_and_oversized_lines_close_only_their_stream() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.max_message_bytes = 1024).await?;
    let wt = Wt::connect(&s).await?;
    let mut st = wt.stream().await?;

    st.send_raw(b"{nope\n").await?;
    let e = st.recv().await?;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_json"))
    );
    st.send(json!({"op": "subscribe", "channel": "bad channel!"}))
        .await?;
    assert_eq!(st.recv().await?["code"], "bad_channel");
    st.echo(json!("still here")).await?;

    // 1024 + 1024 is the hard line bound; this is well over it.
    let mut big = format!(
        r#"{{"op":"publish","channel":"c","data":"{}"}}"#,
        "z".repeat(5000)
    );
    big.push('\n');
    st.send_raw(big.as_bytes()).await?;
    let e = st.recv().await?;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("too_large"))
    );
    assert_eq!(st.next().await?, Err(End::Finished));

    // The session and a new stream still work.
    let mut other = wt.stream().await?;
    other.echo(json!({"session": "alive"})).await?;
    // A line between the data limit and the hard bound is an ordinary error.
    let mid = format!(
        r#"{{"op":"publish","channel":"c","data":"{}"}}"#,
        "z".repeat(1200)
    );
    other.send_raw(format!("{mid}\n").as_bytes()).await?;
    assert_eq!(other.recv().await?["code"], "too_large");
    other.echo(json!(1)).await?;
    s.shutdown().await
}

#[tokio::test]
async fn refusals_leave_the_server_serving() -> Result<()> {
    let s = TestServer::spawn().await?;
    let (url, hash) = info(&s).await?;
    let endpoint = client(&hash)?;

    // Unknown path (404): the session is rejected; a query on /wt is fine.
    let wrong = url.replace("/wt", "/nope");
    let err = within("wrong path", endpoint.connect(&wrong)).await?.err();
    assert!(
        matches!(err, Some(ConnectingError::SessionRejected)),
        "{err:?}"
    );
    within("query", endpoint.connect(format!("{url}?x=1"))).await??;

    // A foreign origin (403) is rejected; our own HTTP origin is accepted.
    let opts = |origin: &str| -> ConnectOptions {
        ConnectOptions::builder(&url)
            .add_header("origin", origin)
            .build()
    };
    let err = within("bad origin", endpoint.connect(opts("http://evil.example")))
        .await?
        .err();
    assert!(
        matches!(err, Some(ConnectingError::SessionRejected)),
        "{err:?}"
    );
    within("own origin", endpoint.connect(opts(&s.base))).await??;

    // Wrong ALPN over raw quinn: the TLS handshake fails.
    let addr = quic_addr(&url)?;
    {
        use wtransport::{quinn, tls::rustls};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            // Only to plug in the hash verifier; the certificate is checked.
            .with_custom_certificate_verifier(Arc::new(
                wtransport::tls::client::ServerHashVerification::new([digest(&hash)?]),
            ))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"not-h3".to_vec()];
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
        )));
        let res = within("wrong alpn", ep.connect(addr, "localhost")?).await?;
        assert!(res.is_err(), "a client without h3 must be refused");
    }

    // Garbage UDP.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    udp.send_to(b"\0garbage that is not quic", addr).await?;
    let mut blob = vec![0xc0u8; 1300];
    blob[1..5].copy_from_slice(&[0, 0, 0, 1]);
    udp.send_to(&blob, addr).await?;

    // Everybody else is still served.
    let wt = Wt::connect(&s).await?;
    wt.stream().await?.echo(json!("fine")).await?;
    assert!(wt.url.ends_with("/wt"));
    s.shutdown().await
}

#[tokio::test]
async fn a_unidirectional_stream_is_a_protocol_error() -> Result<()> {
    let s = TestServer::spawn().await?;
    let wt = Wt::connect(&s).await?;
    let mut uni = within("open_uni", async {
        anyhow::Ok(wt.conn.open_uni().await?.await?)
    })
    .await??;
    within("uni write", uni.write_all(b"hello\n")).await??;
    let closed = within("session close", wt.conn.closed()).await?;
    let (code, reason) = app_close_code(&closed).context(format!("{closed:?}"))?;
    assert_eq!(code, u64::from(ladder::transport::CLOSE_PROTOCOL_ERROR));
    assert!(reason.starts_with("protocol error"), "{reason}");
    // Other sessions are unaffected.
    Wt::connect(&s)
        .await?
        .stream()
        .await?
        .echo(json!(0))
        .await?;
    s.shutdown().await
}

#[tokio::test]
async fn expiring_certificate_is_replaced_and_is_what_the_handshake_shows() -> Result<()> {
    // A development certificate with 20 hours left, as a previous run might
    // have left it.
    let dir = temp_dir("certs-expiring");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::hours(20);
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join(ladder::tls::DEV_CERT_FILE), cert.pem())?;
    std::fs::write(dir.join(ladder::tls::DEV_KEY_FILE), key.serialize_pem())?;
    let old = hex(&wtransport::tls::Certificate::from_der(cert.der().to_vec())?.hash());

    let certs = dir.clone();
    let s = TestServer::spawn_with(move |c| c.certs_dir = certs).await?;
    let (_, served) = info(&s).await?;
    assert_ne!(served, old, "the expiring certificate was reused");
    assert_eq!(
        Some(served.clone()),
        s.ctx.webtransport().map(|w| w.cert_sha256)
    );
    let stored = std::fs::read_to_string(dir.join(ladder::tls::DEV_CERT_FILE))?;
    assert_ne!(stored, cert.pem(), "the new certificate was not stored");

    let wt = Wt::connect(&s).await?;
    let chain = wt.conn.peer_identity().context("no peer certificate")?;
    assert_eq!(hex(&chain.as_slice()[0].hash()), served);
    // And a client pinning the old hash is refused.
    let err = within("old hash", client(&old)?.connect(&wt.url))
        .await?
        .err();
    assert!(
        matches!(err, Some(ConnectingError::ConnectionError(_))),
        "{err:?}"
    );
    s.shutdown().await
}

#[tokio::test]
async fn shutdown_closes_sessions_with_the_documented_code() -> Result<()> {
    let s = TestServer::spawn().await?;
    let wt = Wt::connect(&s).await?;
    let mut st = wt.stream().await?;
    st.subscribe(json!({"op": "subscribe", "channel": "bye"}))
        .await?;
    s.begin_shutdown();
    let closed = within("session close", wt.conn.closed()).await?;
    let (code, reason) = app_close_code(&closed).context(format!("{closed:?}"))?;
    assert_eq!(code, u64::from(ladder::transport::CLOSE_SHUTDOWN));
    assert_eq!(reason, ladder::transport::CLOSE_SHUTDOWN_REASON);
    s.finished().await
}

#[tokio::test]
async fn bind_reports_the_quic_address_unless_disabled() -> Result<()> {
    let mut cfg = ladder::config::Config {
        http: "127.0.0.1:0".parse()?,
        h3: "127.0.0.1:0".parse()?,
        certs_dir: temp_dir("certs-bind"),
        ..Default::default()
    };
    let server = ladder::server::Server::bind(cfg.clone()).await?;
    let addr = server.quic_addr().context("no quic address")?;
    assert_ne!(addr.port(), 0);
    let info = server
        .ctx()
        .webtransport()
        .context("no webtransport info")?;
    assert_eq!(info.url, format!("https://{addr}/wt"));
    assert_eq!(Some(info.cert_sha256.as_str()), server.cert_sha256());
    assert!(
        server
            .banner()
            .contains(&format!("webtransport=https://{addr}/wt"))
    );
    drop(server);

    cfg.disable = vec![ladder::stats::Transport::WebTransport];
    let server = ladder::server::Server::bind(cfg).await?;
    assert_eq!(server.quic_addr(), None);
    assert_eq!(server.ctx().webtransport(), None);
    Ok(())
}

#[tokio::test]
async fn sessions_over_the_limit_are_refused_until_one_leaves() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.wt_max_sessions = 1).await?;
    let first = Wt::connect(&s).await?;
    let err = within(
        "second session",
        client(&info(&s).await?.1)?.connect(&first.url),
    )
    .await?
    .err();
    assert!(
        matches!(err, Some(ConnectingError::SessionRejected)),
        "{err:?}"
    );
    first.conn.close(wtransport::VarInt::from_u32(0), b"done");
    drop(first);
    s.wait_stats("webtransport", |r| r["connections_open"] == 0)
        .await?;
    Wt::connect(&s)
        .await?
        .stream()
        .await?
        .echo(json!("room again"))
        .await?;
    s.shutdown().await
}

#[tokio::test]
async fn lent_streams_get_every_message_in_order_while_ops_come_and_go() -> Result<()> {
    use ladder::config::WtFanout;
    use ladder::stats::Transport;
    for fanout in [WtFanout::Lend, WtFanout::Task] {
        let s = TestServer::spawn_with(|c| c.wt_fanout = fanout).await?;
        let writes = s
            .ctx
            .stats
            .of(Transport::WebTransport)
            .direct_writes
            .clone();
        let wt = Wt::connect(&s).await?;
        let mut lines = wt.stream().await?;
        lines
            .subscribe(json!({"op": "subscribe", "channel": "d"}))
            .await?;
        // One message at a time until the fan-out wrote one itself (the
        // stream is lent once it is caught up and the fan-out follows).
        let mut last = 0;
        if fanout == WtFanout::Lend {
            while writes.get() == 0 {
                ensure!(last < 100, "no direct write in 100 messages");
                last = s.publish("d", json!("warm-up")).await?["offset"]
                    .as_u64()
                    .context("offset")?;
                assert_eq!(offsets(&lines.messages_until(last).await?), [last]);
            }
        }
        for round in 0..20u64 {
            for _ in 0..5 {
                s.publish("d", json!({"round": round})).await?;
            }
            // An op needs the stream back mid-flow.
            lines.send(json!({"op": "echo", "data": round})).await?;
            for _ in 0..5 {
                s.publish("d", json!({"round": round})).await?;
            }
            let (mut got, mut echoed) = (Vec::new(), false);
            while got.len() < 10 || !echoed {
                let m = lines.recv().await?;
                match m["op"].as_str() {
                    Some("message") => {
                        assert_eq!(m["data"], json!({"round": round}));
                        got.push(m["offset"].as_u64().context("offset")?);
                    }
                    Some("echo") => {
                        assert_eq!(m["data"], round);
                        echoed = true;
                    }
                    _ => bail!("unexpected {m}"),
                }
            }
            assert_eq!(
                got,
                (last + 1..=last + 10).collect::<Vec<_>>(),
                "round {round}"
            );
            last += 10;
        }
        if fanout == WtFanout::Task {
            assert_eq!(writes.get(), 0);
        }
        drop(lines);
        drop(wt);
        s.fanouts_stopped().await?;
        s.shutdown().await?;
    }
    Ok(())
}

#[tokio::test]
async fn lent_datagram_subscriptions_get_their_datagrams_from_the_fan_out() -> Result<()> {
    use ladder::stats::Transport;
    let s = TestServer::spawn().await?;
    let stats = s.ctx.stats.of(Transport::WebTransport);
    let wt = Wt::connect(&s).await?;
    let mut st = wt.stream().await?;
    st.subscribe(json!({"op": "subscribe", "channel": "dg", "delivery": "datagram"}))
        .await?;
    // Each message is published once the previous one arrived, so none is
    // queued long enough to be dropped (datagrams are unreliable).
    let next_datagram = || async {
        let d = tokio::time::timeout(Duration::from_secs(10), wt.conn.receive_datagram())
            .await
            .context("no datagram within 10 s")??;
        anyhow::Ok(serde_json::from_slice::<Value>(&d.payload())?)
    };
    // One at a time until the fan-out sent one itself (the stream is lent
    // once caught up).
    let mut n = 0;
    while stats.direct_writes.get() == 0 {
        ensure!(n < 100, "no direct write in 100 messages");
        let offset = s.publish("dg", json!({"n": n})).await?["offset"].clone();
        assert_eq!(next_datagram().await?["offset"], offset);
        n += 1;
    }
    let (writes, datagrams) = (stats.direct_writes.get(), stats.datagrams_out.get());
    for i in 0..20 {
        let offset = s.publish("dg", json!({"i": i})).await?["offset"].clone();
        let m = next_datagram().await?;
        assert_eq!(
            (&m["op"], &m["offset"], &m["data"]),
            (&json!("message"), &offset, &json!({"i": i}))
        );
    }
    // All twenty from the fan-out, none from the stream's task.
    assert_eq!(stats.direct_writes.get() - writes, 20);
    assert_eq!(stats.datagrams_out.get() - datagrams, 20);
    // Too big for a datagram: the fan-out puts it on the stream, and the
    // stream stays lent for the next one.
    let big = s.publish("dg", json!({"big": "y".repeat(4000)})).await?;
    let line = st.recv().await?;
    assert_eq!(
        (&line["op"], &line["offset"]),
        (&json!("message"), &big["offset"])
    );
    let after = s.publish("dg", json!("small")).await?["offset"].clone();
    assert_eq!(next_datagram().await?["offset"], after);
    assert_eq!(stats.direct_writes.get() - writes, 22);
    s.shutdown().await
}

#[tokio::test]
async fn a_closed_sessions_bytes_stay_counted() -> Result<()> {
    let s = TestServer::spawn().await?;
    let wt = Wt::connect(&s).await?;
    let mut st = wt.stream().await?;
    st.echo(json!("x".repeat(1000))).await?;
    // Nothing reads the stats while the session is open: the counts must be
    // taken when it ends.
    wt.conn.close(wtransport::VarInt::from_u32(0), b"bye");
    let open = &s
        .ctx
        .stats
        .of(ladder::stats::Transport::WebTransport)
        .connections_open;
    within("the session to end", async {
        while open.get() != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await?;
    let row = s.stats("webtransport").await?;
    assert!(row["bytes_in"].as_u64() > Some(1000), "{row}");
    assert!(row["bytes_out"].as_u64() > Some(1000), "{row}");
    s.shutdown().await
}
