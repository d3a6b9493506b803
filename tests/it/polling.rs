//! Short and long polling.

use anyhow::Result;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

#[tokio::test]
async fn short_poll_returns_what_is_retained_after_since() -> Result<()> {
    let s = TestServer::spawn().await?;
    for i in 1..=5 {
        s.publish("p", json!({ "n": i })).await?;
    }
    let (status, body) = s
        .get_json("/api/channels/p/messages?since=2&limit=2")
        .await?;
    assert_eq!(status, 200);
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(offsets(msgs), vec![3, 4]);
    assert_eq!(msgs[0]["data"], json!({"n": 3}));
    assert_eq!(msgs[0]["channel"], "p");
    assert!(msgs[0]["ts"].as_u64().unwrap() > 0);
    assert_eq!(body["next"], 4);
    assert!(body["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(body.get("truncated").is_none());

    // Absent `since` means "from now on": nothing, positioned at the head.
    let (_, body) = s.get_json("/api/channels/p/messages").await?;
    assert_eq!(body["messages"], json!([]));
    assert_eq!(body["next"], 5);
    s.shutdown().await
}

#[tokio::test]
async fn poll_tells_of_truncation_after_history_overrun_and_epoch_change() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.history = 3).await?;
    let epoch = s.publish_count("t", 6).await?;
    let (_, body) = s.get_json("/api/channels/t/messages?since=1").await?;
    assert_eq!(body["truncated"], json!({"oldest": 4, "epoch": epoch}));
    assert_eq!(offsets(body["messages"].as_array().unwrap()), vec![4, 5, 6]);

    let (_, body) = s
        .get_json("/api/channels/t/messages?since=5&epoch=other")
        .await?;
    assert_eq!(body["truncated"]["epoch"], epoch.as_str());
    assert_eq!(offsets(body["messages"].as_array().unwrap()), vec![4, 5, 6]);

    let (_, body) = s
        .get_json(&format!("/api/channels/t/messages?since=5&epoch={epoch}"))
        .await?;
    assert!(body.get("truncated").is_none());
    assert_eq!(offsets(body["messages"].as_array().unwrap()), vec![6]);
    s.shutdown().await
}

#[tokio::test]
async fn long_poll_is_answered_by_a_publish() -> Result<()> {
    let s = TestServer::spawn().await?;
    let url = s.url("/api/channels/lp/messages?since=0&wait=30");
    let http = s.http.clone();
    let waiting = tokio::spawn(async move {
        http.get(url)
            .send()
            .await?
            .json::<serde_json::Value>()
            .await
    });
    // Publish only once the poll is really waiting.
    s.wait_stats("longpoll", |r| r["connections_open"] == 1)
        .await?;
    s.publish("lp", json!("wake")).await?;
    let body = within("long poll answer", waiting).await???;
    assert_eq!(body["messages"][0]["data"], "wake");
    assert_eq!(body["next"], 1);
    let row = s.stats("longpoll").await?;
    assert_eq!(row["requests"], 1);
    assert_eq!(row["messages_out"], 1);
    s.shutdown().await
}

#[tokio::test]
async fn long_poll_with_nothing_new_answers_empty_after_the_wait() -> Result<()> {
    let s = TestServer::spawn().await?;
    s.publish("e", json!(1)).await?;
    let (status, body) = s
        .get_json("/api/channels/e/messages?since=1&wait=0.2")
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["messages"], json!([]));
    assert_eq!(body["next"], 1);
    s.shutdown().await
}

#[tokio::test]
async fn a_long_poll_whose_client_goes_away_is_released() -> Result<()> {
    let s = TestServer::spawn().await?;
    let url = s.url("/api/channels/gone/messages?wait=60");
    let client = reqwest::Client::new();
    let req = tokio::spawn(async move { client.get(url).send().await });
    s.wait_stats("longpoll", |r| r["connections_open"] == 1)
        .await?;
    req.abort();
    // The server notices the closed socket and drops the waiting poll.
    s.wait_stats("longpoll", |r| r["connections_open"] == 0)
        .await?;
    s.shutdown().await
}

/// Reads one HTTP/1.1 response with a `content-length` from `tcp`, keeping
/// what follows it in `buf`; returns its lower-cased head and its body.
async fn read_response(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(String, Value)> {
    within("response", async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buf[..end].to_vec())?.to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .ok_or_else(|| anyhow::anyhow!("no content-length: {head}"))?
                    .parse()?;
                if buf.len() >= end + 4 + len {
                    let body = serde_json::from_slice(&buf[end + 4..end + 4 + len])?;
                    buf.drain(..end + 4 + len);
                    return Ok((head, body));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "closed early: {:?}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await?
}

/// Sends a long poll on channel `ka` after `since` on `tcp`, publishes
/// `since + 1` once it waits, and returns the offsets it is answered with.
async fn long_poll_woken(
    s: &TestServer,
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    since: u64,
) -> Result<Vec<u64>> {
    let req =
        format!("GET /api/channels/ka/messages?since={since}&wait=30 HTTP/1.1\r\nhost: x\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    s.wait_stats("longpoll", |r| r["connections_open"] == 1)
        .await?;
    s.publish("ka", json!(since + 1)).await?;
    let (_, body) = read_response(tcp, buf).await?;
    Ok(offsets(body["messages"].as_array().unwrap()))
}

/// A connection that opens with a poll is served without hyper for as long
/// as it polls (kept alive, pipelined or not); the first other request on
/// it goes to hyper with nothing lost, even when it was read together with
/// a poll.
#[tokio::test]
async fn polls_and_other_requests_share_a_kept_alive_connection() -> Result<()> {
    let s = TestServer::spawn().await?;
    s.publish("ka", json!(1)).await?;
    let mut tcp = TcpStream::connect(s.base.trim_start_matches("http://")).await?;
    let mut buf = Vec::new();
    let get =
        |query: &str| format!("GET /api/channels/ka/messages?{query} HTTP/1.1\r\nhost: x\r\n\r\n");

    tcp.write_all(get("since=0").as_bytes()).await?;
    let (head, body) = read_response(&mut tcp, &mut buf).await?;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(offsets(body["messages"].as_array().unwrap()), vec![1]);

    // A long poll on the same connection waits for the next publish.
    let woken = long_poll_woken(&s, &mut tcp, &mut buf, 1).await?;
    assert_eq!(woken, vec![2]);

    // Three requests in one write: a long poll answered at once, a publish
    // (hyper's, with a body) and a short poll, answered in order.
    let publish = "POST /api/channels/ka/messages HTTP/1.1\r\nhost: x\r\n\
                   content-type: application/json\r\ncontent-length: 7\r\n\r\n\"three\"";
    let batch = format!("{}{publish}{}", get("since=0&wait=30"), get("since=2"));
    tcp.write_all(batch.as_bytes()).await?;
    let (_, body) = read_response(&mut tcp, &mut buf).await?;
    assert_eq!(offsets(body["messages"].as_array().unwrap()), vec![1, 2]);
    let (head, body) = read_response(&mut tcp, &mut buf).await?;
    assert!(head.starts_with("http/1.1 201"), "{head}");
    assert_eq!(body["offset"], 3);
    let (_, body) = read_response(&mut tcp, &mut buf).await?;
    assert_eq!(offsets(body["messages"].as_array().unwrap()), vec![3]);
    assert_eq!(body["messages"][0]["data"], "three");

    // hyper serves the rest of this connection, long polls included.
    assert_eq!(long_poll_woken(&s, &mut tcp, &mut buf, 3).await?, vec![4]);
    assert!(buf.is_empty());
    assert_eq!(s.stats("poll").await?["requests"], 2);
    assert_eq!(s.stats("longpoll").await?["requests"], 3);

    // `connection: close` is honoured: the answer says so and the
    // connection ends after it.
    let mut once = TcpStream::connect(s.base.trim_start_matches("http://")).await?;
    once.write_all(
        b"GET /api/channels/ka/messages?since=3&wait=30 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await?;
    let mut got = Vec::new();
    within("closed answer", once.read_to_end(&mut got)).await??;
    let text = String::from_utf8(got)?.to_ascii_lowercase();
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.contains(r#""offset":4"#), "{text}");
    s.shutdown().await
}

/// `Ladder-Connection` (docs/protocol.md): polls on one kept-alive
/// connection name the same connection; a poll on a connection opened
/// after an answer names one numbered above that answer's `accepted`,
/// which is how a polling client tells that its connection was replaced.
#[tokio::test]
async fn a_poll_answer_names_the_connection_that_carried_it() -> Result<()> {
    let s = TestServer::spawn().await?;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut a = within("a connection", TcpStream::connect(&addr)).await??;
    let first = within("a poll", connection_of_poll(&mut a, "")).await??;
    let again = within("a long poll on it", connection_of_poll(&mut a, "&wait=0")).await??;
    assert_eq!((first.0.as_str(), first.1), (again.0.as_str(), again.1));
    assert!(
        first.1 <= first.2 && first.2 <= again.2,
        "{first:?} {again:?}"
    );
    let mut b = within("another connection", TcpStream::connect(&addr)).await??;
    let other = within("a poll on it", connection_of_poll(&mut b, "")).await??;
    assert_eq!(other.0, first.0, "one server, one server id");
    assert!(other.1 > again.2, "{other:?} opened after {again:?}");
    s.shutdown().await
}

/// Polls on `stream` (keeping it alive) and returns its answer's
/// `Ladder-Connection`: (server, number, accepted).
async fn connection_of_poll(stream: &mut TcpStream, extra: &str) -> Result<(String, u64, u64)> {
    let req = format!("GET /api/channels/conn/messages?since=0{extra} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection closed mid-answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .ok_or_else(|| anyhow::anyhow!("no {name} in {head}"))
    };
    let len: usize = header("content-length:")?.parse()?;
    let mut body = buf.split_off(head_end);
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    let value = header("ladder-connection:")?;
    let field = |k: &str| {
        value
            .split("; ")
            .find_map(|kv| kv.strip_prefix(k))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no {k} in {value}"))
    };
    Ok((
        field("server=")?,
        field("number=")?.parse()?,
        field("accepted=")?.parse()?,
    ))
}
