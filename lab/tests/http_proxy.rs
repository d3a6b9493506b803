//! The HTTP-aware relays (`no-upgrade`, `buffering-proxy`) against a small
//! hand-driven HTTP/1.1 upstream, so every byte and its timing is the
//! test's to choose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ladder_lab::{NetworkSwitch, RelayStats, TcpImpair, TcpRelay};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(10);

/// An upstream that answers every request with `200` and its method, path
/// and body length (keep-alive), answers `Upgrade` with `101` and then
/// echoes, and answers `/stream` with a chunked body whose chunks the test
/// sends through the returned channel (an empty one ends it).
async fn upstream() -> (SocketAddr, Arc<AtomicU64>, mpsc::Sender<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let count = count.clone();
            let rx = rx.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut head = Vec::new();
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        let end = line == "\r\n";
                        head.push(line);
                        if end {
                            break;
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).await.unwrap();
                    let first = head[0].clone();
                    if head
                        .iter()
                        .any(|h| h.to_ascii_lowercase().starts_with("upgrade:"))
                    {
                        w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n").await.unwrap();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        return;
                    }
                    if first.contains("/stream") {
                        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
                        let mut rx = rx.lock().await;
                        while let Some(chunk) = rx.recv().await {
                            w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                                .await
                                .unwrap();
                            w.write_all(&chunk).await.unwrap();
                            w.write_all(b"\r\n").await.unwrap();
                            if chunk.is_empty() {
                                break;
                            }
                        }
                        continue;
                    }
                    let text = format!("{} {}", first.trim(), body.len());
                    w.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        )
                        .as_bytes(),
                    )
                    .await
                    .unwrap();
                }
            });
        }
    });
    (addr, requests, tx)
}

/// Reads one response: its head and a `content-length` body.
async fn read_response(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> (String, String) {
    let mut head = String::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        assert!(
            timeout(BOUND, r.read_line(&mut line))
                .await
                .unwrap()
                .unwrap()
                > 0,
            "closed inside a head"
        );
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; len];
    timeout(BOUND, r.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    (head, String::from_utf8(body).unwrap())
}

async fn relay(upstream: SocketAddr, impair: TcpImpair, stop: &CancellationToken) -> TcpRelay {
    TcpRelay::bind(
        "127.0.0.1:0".parse().unwrap(),
        vec![upstream],
        impair,
        NetworkSwitch::default(),
        stop.clone(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn no_upgrade_refuses_websocket_and_forwards_plain_requests_on_one_connection() {
    let (up, requests, _) = upstream().await;
    let stop = CancellationToken::new();
    let relay = relay(
        up,
        TcpImpair {
            refuse_upgrade: true,
            ..Default::default()
        },
        &stop,
    )
    .await;

    let (r, mut w) = TcpStream::connect(relay.local_addr())
        .await
        .unwrap()
        .into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut r).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "GET /a HTTP/1.1 0");
    w.write_all(b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (_, body) = read_response(&mut r).await;
    assert_eq!(
        body, "POST /b HTTP/1.1 5",
        "the body went through and the connection stayed up"
    );

    let (r, mut w) = TcpStream::connect(relay.local_addr())
        .await
        .unwrap()
        .into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"GET /api/ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let (head, _) = read_response(&mut r).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let mut rest = Vec::new();
    timeout(BOUND, r.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "the proxy closes after refusing");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "the upgrade never reached the server"
    );
    assert_eq!(RelayStats::get(&relay.stats().refused_upgrades), 1);
    stop.cancel();
}

#[tokio::test]
async fn buffering_proxy_passes_upgrades_through() {
    let (up, _, _) = upstream().await;
    let stop = CancellationToken::new();
    let relay = relay(
        up,
        TcpImpair {
            buffer_bytes: Some(1024),
            ..Default::default()
        },
        &stop,
    )
    .await;
    let mut s = TcpStream::connect(relay.local_addr()).await.unwrap();
    s.write_all(b"GET /u HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut status = String::new();
    timeout(BOUND, r.read_line(&mut status))
        .await
        .unwrap()
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        timeout(BOUND, r.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        if line == "\r\n" {
            break;
        }
    }
    w.write_all(b"after upgrade").await.unwrap();
    let mut buf = [0u8; 13];
    timeout(BOUND, r.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"after upgrade");
    stop.cancel();
}

#[tokio::test]
async fn buffering_proxy_sends_the_head_at_once_and_holds_the_body_until_full_or_ended() {
    let (up, _, chunks) = upstream().await;
    let stop = CancellationToken::new();
    let relay = relay(
        up,
        TcpImpair {
            buffer_bytes: Some(1024),
            ..Default::default()
        },
        &stop,
    )
    .await;
    let (r, mut w) = TcpStream::connect(relay.local_addr())
        .await
        .unwrap()
        .into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The head arrives at once (EventSource would fire `open` here).
    let mut head = String::new();
    loop {
        let mut line = String::new();
        timeout(BOUND, r.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.contains("text/event-stream"), "{head}");

    // 600 bytes are held: nothing arrives. (A correct proxy never sends
    // them, however long the wait; the wait only bounds the check.)
    chunks.send(vec![b'a'; 600]).await.unwrap();
    let mut one = [0u8; 1];
    assert!(
        timeout(Duration::from_millis(300), r.read(&mut one))
            .await
            .is_err(),
        "a held body leaked through"
    );
    // 600 more pass the 1 KiB limit: the held bytes go out together.
    chunks.send(vec![b'b'; 600]).await.unwrap();
    let mut got = vec![0u8; 1024];
    timeout(BOUND, r.read_exact(&mut got))
        .await
        .expect("released at the limit")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("258\r\naaa"),
        "chunk framing passed on: {:?}",
        &text[..8]
    );
    // The end of the body releases the rest.
    chunks.send(b"tail".to_vec()).await.unwrap();
    chunks.send(Vec::new()).await.unwrap();
    let mut rest = Vec::new();
    let want = b"bbbb\r\n4\r\ntail\r\n0\r\n\r\n";
    while !rest.ends_with(want) {
        let mut buf = [0u8; 2048];
        let n = timeout(BOUND, r.read(&mut buf))
            .await
            .expect("released at the end")
            .unwrap();
        assert!(n > 0, "closed before the end of the body");
        rest.extend_from_slice(&buf[..n]);
    }
    assert_eq!(1024 + rest.len(), 5 + 600 + 2 + 5 + 600 + 2 + 3 + 4 + 2 + 5);
    stop.cancel();
}
