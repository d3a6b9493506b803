//! Short and long polling.

use anyhow::Result;
use serde_json::json;

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
