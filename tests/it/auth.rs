//! Tokens, channel permissions and per-client limits on the HTTP rungs.

use anyhow::Result;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "test-secret";

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_secs(s: u64) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + s
}

async fn code(resp: reqwest::Response) -> Result<(u16, String)> {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await?;
    Ok((
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ))
}

#[tokio::test]
async fn tokens_gate_publish_and_subscribe_by_channel_pattern() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.jwt_secret = Some(SECRET.into())).await?;
    let good =
        token(json!({"exp": in_secs(600), "subscribe": ["room:*"], "publish": ["room:mine"]}));
    let post = |ch: &str, tok: Option<&str>| {
        let mut r = s
            .http
            .post(s.url(&format!("/api/channels/{ch}/messages")))
            .body("1");
        if let Some(t) = tok {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(
        code(post("room:mine", None).await?).await?,
        (401, "unauthorized".into())
    );
    assert_eq!(
        code(post("room:mine", Some("not.a.jwt")).await?).await?,
        (401, "unauthorized".into())
    );
    let expired = token(json!({"exp": 1000, "publish": ["*"]}));
    assert_eq!(
        code(post("room:mine", Some(&expired)).await?).await?,
        (401, "unauthorized".into())
    );
    let wrong_key = jsonwebtoken::encode(
        &Header::default(),
        &json!({"exp": in_secs(60), "publish": ["*"]}),
        &EncodingKey::from_secret(b"other"),
    )?;
    assert_eq!(
        code(post("room:mine", Some(&wrong_key)).await?).await?,
        (401, "unauthorized".into())
    );
    assert_eq!(
        code(post("room:yours", Some(&good)).await?).await?,
        (403, "forbidden".into())
    );
    assert_eq!(post("room:mine", Some(&good)).await?.status(), 201);

    // Browsers' EventSource cannot set headers: the token rides in the query.
    let (status, body) = s
        .get_json(&format!(
            "/api/channels/room:mine/messages?since=0&token={good}"
        ))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    let (status, body) = s
        .get_json(&format!("/api/channels/lobby/messages?token={good}"))
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = s.get_json("/api/channels/room:mine/messages").await?;
    assert_eq!(status, 401);
    let mut sse = Sse::connect(&s, "room:mine", &format!("?since=0&token={good}"), None).await?;
    assert_eq!(sse.messages_until(1).await?.len(), 1);
    assert!(
        Sse::connect(&s, "room:mine", "?since=0", None)
            .await
            .is_err()
    );
    s.shutdown().await
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_expires() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.jwt_secret = Some(SECRET.into())).await?;
    let short = token(json!({"exp": in_secs(3), "subscribe": ["*"]}));
    let mut sse = Sse::connect(&s, "t", &format!("?token={short}"), None).await?;
    let ev = sse.next().await?.expect("an event before the end");
    assert_eq!(ev.event, "error");
    assert_eq!(ev.json()["code"], "unauthorized");
    assert_eq!(sse.next().await?, None);
    s.shutdown().await
}

#[tokio::test]
async fn per_ip_limits_answer_429() -> Result<()> {
    let s = TestServer::spawn_with(|c| {
        c.publish_rate = 5;
        c.max_long_polls_per_ip = 1;
    })
    .await?;
    // One concurrent burst of 40. The quota lets 5 through at once and one
    // more per 200 ms, so how many pass depends on how long the burst took on
    // this machine: the bound is computed from the time it really took.
    const BURST: usize = 40;
    let started = std::time::Instant::now();
    let sends = (0..BURST).map(|i| {
        s.http
            .post(s.url("/api/channels/r/messages"))
            .body(i.to_string())
            .send()
    });
    let mut statuses = Vec::new();
    for r in futures_util::future::join_all(sends).await {
        statuses.push(r?.status().as_u16());
    }
    let took = started.elapsed().as_secs_f64();
    let passed = statuses.iter().filter(|&&c| c == 201).count();
    let limited = statuses.iter().filter(|&&c| c == 429).count();
    assert_eq!(passed + limited, BURST, "only 201 or 429: {statuses:?}");
    assert!(passed >= 5, "the burst of 5 passes: {statuses:?}");
    let allowed = 5 + (took * 5.0).ceil() as usize;
    assert!(
        passed <= allowed,
        "{passed} passed in {took:.2} s, at most {allowed} allowed"
    );
    assert!(limited >= 1, "{statuses:?} (took {took:.2} s)");

    let url = s.url("/api/channels/lp/messages?wait=30");
    let http = s.http.clone();
    let first = tokio::spawn(async move { http.get(url).send().await });
    s.wait_stats("longpoll", |r| r["connections_open"] == 1)
        .await?;
    let (status, body) = s.get_json("/api/channels/lp/messages?wait=30").await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    first.abort();
    s.shutdown().await
}

#[tokio::test]
async fn connections_per_ip_are_limited() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.max_connections_per_ip = 1).await?;
    let _held = Sse::connect(&s, "a", "", None).await?;
    let resp = reqwest::Client::new()
        .get(s.url("/api/info"))
        .send()
        .await?;
    assert_eq!(code(resp).await?, (429, "rate_limited".into()));
    Ok(())
}

#[tokio::test]
async fn websocket_needs_a_token_and_ops_are_checked_one_by_one() -> Result<()> {
    let s = TestServer::spawn_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.publish_rate = 3;
    })
    .await?;
    let err = tokio_tungstenite::connect_async(s.ws_url())
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let t = token(json!({"exp": in_secs(600), "subscribe": ["news:*"], "publish": ["news:*"]}));
    let (inner, _) = tokio_tungstenite::connect_async(format!("{}?token={t}", s.ws_url())).await?;
    let mut ws = Ws { inner };
    ws.subscribe("news:1", None).await?;
    ws.send(json!({"op":"subscribe","channel":"secret","id":1}))
        .await?;
    let e = ws.recv().await?;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("forbidden"), Some(1))
    );
    ws.send(json!({"op":"publish","channel":"secret","data":1}))
        .await?;
    assert_eq!(ws.recv().await?["code"], "forbidden");
    // Nothing was published by the refused op.
    let (_, body) = s
        .get_json(&format!(
            "/api/channels/secret/messages?since=0&token={}",
            token(json!({"exp": in_secs(60), "subscribe": ["*"]}))
        ))
        .await?;
    assert_eq!(body["messages"], json!([]));

    // The publish rate: 3 per second per connection, then `rate_limited`.
    let mut codes = Vec::new();
    for i in 0..6 {
        ws.send(json!({"op":"publish","channel":"news:2","data":i}))
            .await?;
        let r = ws.recv().await?;
        codes.push(
            r["op"].as_str().unwrap_or_default().to_owned()
                + ":"
                + r["code"].as_str().unwrap_or(""),
        );
    }
    assert_eq!(
        codes.iter().filter(|c| c.starts_with("published")).count(),
        3,
        "{codes:?}"
    );
    assert!(
        codes.contains(&"error:rate_limited".to_owned()),
        "{codes:?}"
    );
    s.shutdown().await
}

#[tokio::test]
async fn a_websocket_is_closed_when_its_token_expires() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.jwt_secret = Some(SECRET.into())).await?;
    let t = token(json!({"exp": in_secs(3), "subscribe": ["*"]}));
    let (inner, _) = tokio_tungstenite::connect_async(format!("{}?token={t}", s.ws_url())).await?;
    let mut ws = Ws { inner };
    ws.subscribe("x", None).await?;
    let e = ws.recv().await?;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unauthorized"))
    );
    assert_eq!(ws.closed().await?, 4001);
    s.shutdown().await
}

#[tokio::test]
async fn webtransport_sessions_need_a_token_and_end_with_it() -> Result<()> {
    use crate::wt_client::Wt;
    let s = TestServer::spawn_with(|c| c.jwt_secret = Some(SECRET.into())).await?;
    assert!(
        Wt::connect(&s).await.is_err(),
        "no token: the session is refused"
    );
    assert!(Wt::connect_with_query(&s, "?token=bogus").await.is_err());
    let t = token(json!({"exp": in_secs(3), "subscribe": ["ok"], "publish": ["ok"]}));
    let wt = Wt::connect_with_query(&s, &format!("?token={t}")).await?;
    let mut lines = wt.stream().await?;
    lines
        .subscribe(json!({"op":"subscribe","channel":"ok"}))
        .await?;
    lines
        .send(json!({"op":"publish","channel":"nope","data":1,"id":"p"}))
        .await?;
    let e = lines.recv().await?;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("forbidden"), Some("p"))
    );
    // At expiry the stream is told and finished.
    let e = lines.recv().await?;
    assert_eq!(e["code"], "unauthorized", "{e}");
    s.shutdown().await
}
