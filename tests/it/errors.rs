//! Every error code of the contract, each from a real bad request, and the
//! server keeps serving afterwards.

use anyhow::Result;
use serde_json::{Value, json};

use crate::helpers::*;

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Result<()> {
    assert_eq!(resp.status().as_u16(), status, "status for {code}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    Ok(())
}

#[tokio::test]
async fn http_errors_are_json_with_fitting_status() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.max_message_bytes = 1000).await?;
    let post = |path: &str, body: Vec<u8>| s.http.post(s.url(path)).body(body).send();
    let get = |path: &str| s.http.get(s.url(path)).send();
    let msgs = "/api/channels/ok/messages";

    expect_error(post(msgs, b"{nope".to_vec()).await?, 400, "bad_json").await?;
    expect_error(post(msgs, b"".to_vec()).await?, 400, "bad_json").await?;
    expect_error(post(msgs, vec![0xff, 0xfe]).await?, 400, "bad_json").await?;
    expect_error(
        post("/api/channels/no%20spaces/messages", b"1".to_vec()).await?,
        400,
        "bad_channel",
    )
    .await?;
    let long = format!("/api/channels/{}/messages", "a".repeat(129));
    expect_error(get(&long).await?, 400, "bad_channel").await?;
    expect_error(
        get("/api/channels/caf%C3%A9/events").await?,
        400,
        "bad_channel",
    )
    .await?;
    for q in [
        "since=-1",
        "since=x",
        "limit=0",
        "limit=1001",
        "wait=61",
        "wait=abc",
        "epoch=",
    ] {
        expect_error(get(&format!("{msgs}?{q}")).await?, 400, "bad_request").await?;
    }
    let bad_id = s
        .http
        .get(s.url("/api/channels/ok/events"))
        .header("Last-Event-ID", "e:notanumber")
        .send()
        .await?;
    expect_error(bad_id, 400, "bad_request").await?;
    expect_error(get("/api/ws").await?, 400, "bad_request").await?;
    expect_error(get("/api/nope").await?, 404, "not_found").await?;
    expect_error(
        s.http.delete(s.url(msgs)).send().await?,
        405,
        "method_not_allowed",
    )
    .await?;
    let big = serde_json::to_vec(&json!("x".repeat(1500)))?;
    expect_error(post(msgs, big).await?, 413, "too_large").await?;
    let huge = vec![b' '; 10_000];
    expect_error(post(msgs, huge).await?, 413, "too_large").await?;

    // Nothing above was stored, and the server still serves.
    let ack = s.publish("ok", json!("fine")).await?;
    assert_eq!(ack["offset"], 1);
    s.shutdown().await
}

#[tokio::test]
async fn capacity_limits_answer_429_and_503() -> Result<()> {
    let s = TestServer::spawn_with(|c| {
        c.max_channels = 1;
        c.max_subscriptions = 1;
    })
    .await?;
    s.publish("only", json!(1)).await?;
    let resp = s
        .http
        .post(s.url("/api/channels/another/messages"))
        .body("1")
        .send()
        .await?;
    expect_error(resp, 503, "unavailable").await?;

    let mut ws = Ws::connect(&s).await?;
    ws.subscribe("only", None).await?;
    ws.send(json!({"op":"subscribe","channel":"only2"})).await?;
    assert_eq!(ws.recv().await?["code"], "rate_limited");
    s.shutdown().await
}

#[tokio::test]
async fn disabled_transports_answer_404() -> Result<()> {
    let s = TestServer::spawn_with(|c| {
        c.disable = vec![
            ladder::stats::Transport::Sse,
            ladder::stats::Transport::WebSocket,
        ]
    })
    .await?;
    expect_error(
        s.http.get(s.url("/api/channels/a/events")).send().await?,
        404,
        "not_found",
    )
    .await?;
    let (_, info) = s.get_json("/api/info").await?;
    let names: Vec<&str> = info["transports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !names.contains(&"sse") && !names.contains(&"websocket"),
        "{names:?}"
    );
    assert!(names.contains(&"poll") && names.contains(&"longpoll"));
    s.shutdown().await
}

#[tokio::test]
async fn connections_over_the_limit_get_503() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.max_connections = 1).await?;
    let _held = Sse::connect(&s, "a", "", None).await?;
    let other = reqwest::Client::new();
    let resp = other.get(s.url("/api/info")).send().await?;
    expect_error(resp, 503, "unavailable").await?;
    Ok(())
}
