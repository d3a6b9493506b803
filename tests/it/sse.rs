//! Server-Sent Events.

use anyhow::Result;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn sse_replays_then_streams_live_with_ids() -> Result<()> {
    let s = TestServer::spawn().await?;
    let ack = s.publish("s", json!("one")).await?;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    let mut sse = Sse::connect(&s, "s", "?since=0", None).await?;
    let first = sse.next().await?.unwrap();
    assert_eq!(sse.retry, Some(2000), "retry: comes first");
    assert_eq!(first.id.as_deref(), Some(format!("{epoch}:1").as_str()));
    assert_eq!(first.event, "message");
    assert_eq!(
        first.json(),
        json!({"channel":"s","offset":1,"data":"one","ts":first.json()["ts"]})
    );
    s.publish("s", json!({"two": 2})).await?;
    let second = sse.next().await?.unwrap();
    assert_eq!(second.id.as_deref(), Some(format!("{epoch}:2").as_str()));
    assert_eq!(second.json()["data"], json!({"two": 2}));
    s.shutdown().await
}

#[tokio::test]
async fn last_event_id_resumes_exactly_after_that_message() -> Result<()> {
    let s = TestServer::spawn().await?;
    let epoch = s.publish_count("r", 5).await?;
    // Last-Event-ID wins over the query's `since`.
    let mut sse = Sse::connect(&s, "r", "?since=0", Some(&format!("{epoch}:3"))).await?;
    let got = sse.messages_until(5).await?;
    assert_eq!(offsets(&got), vec![4, 5]);
    s.shutdown().await
}

#[tokio::test]
async fn sse_announces_truncation_for_overrun_and_stale_epoch() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.history = 2).await?;
    let epoch = s.publish_count("x", 4).await?;
    for last_id in ["1", "stale:3"] {
        let mut sse = Sse::connect(&s, "x", "", Some(last_id)).await?;
        let ev = sse.next().await?.unwrap();
        assert_eq!(ev.event, "truncated", "after Last-Event-ID {last_id}");
        assert_eq!(ev.json(), json!({"oldest": 3, "epoch": epoch}));
        assert_eq!(offsets(&sse.messages_until(4).await?), vec![3, 4]);
    }
    s.shutdown().await
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments() -> Result<()> {
    let s = TestServer::spawn_with(|c| c.heartbeat = 1).await?;
    let mut sse = Sse::connect(&s, "quiet", "", None).await?;
    // Nothing is published, so the only blocks that can come are the
    // retry line and pings.
    while sse.comments.is_empty() {
        assert_eq!(
            sse.next_block().await?,
            Block::Other,
            "no event was published"
        );
    }
    assert_eq!(sse.comments[0], "ping");
    s.shutdown().await
}
