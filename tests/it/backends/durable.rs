//! The embedded durable backend across restarts: graceful (SIGTERM) and a
//! real SIGKILL of the `ladder` binary, then resuming every HTTP rung from
//! its last position — nothing missing, nothing repeated, no `truncated`.

use anyhow::{Context, Result, ensure};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::post;
use crate::helpers::*;

const CH: &str = "durable";

/// Publishes `n` messages on the child, alternating HTTP and WebSocket;
/// returns the epoch and every acknowledged `(offset, data)`.
async fn publish_on(child: &Child, n: u64) -> Result<(String, Vec<(u64, Value)>)> {
    let http = reqwest::Client::new();
    let ws_url = format!("{}/api/ws", child.base.replacen("http", "ws", 1));
    let (inner, _) = within("ws connect", tokio_tungstenite::connect_async(ws_url)).await??;
    let mut ws = Ws { inner };
    let mut acks = Vec::new();
    let mut epoch = String::new();
    for i in 0..n {
        let data = json!({"i": i, "via": if i % 2 == 0 { "http" } else { "ws" }});
        let ack = if i % 2 == 0 {
            let (status, body) = post(&http, &child.base, CH, &data).await?;
            ensure!(status == 201, "publish answered {status}: {body}");
            body
        } else {
            ws.inner
                .send(Message::text(
                    json!({"op":"publish","channel":CH,"data":data}).to_string(),
                ))
                .await?;
            let ack = ws.recv().await?;
            ensure!(ack["op"] == "published", "{ack}");
            ack
        };
        epoch = ack["epoch"].as_str().context("epoch")?.to_owned();
        acks.push((ack["offset"].as_u64().context("offset")?, data));
    }
    let offsets: Vec<u64> = acks.iter().map(|a| a.0).collect();
    ensure!(
        offsets == (1..=n).collect::<Vec<_>>(),
        "acked offsets {offsets:?}"
    );
    Ok((epoch, acks))
}

/// Polls (or long-polls) from `(epoch, since)` until `last`, failing on any
/// `truncated` or epoch change.
async fn poll_resume(
    s: &TestServer,
    epoch: &str,
    since: u64,
    wait: bool,
    last: u64,
) -> Result<Vec<Value>> {
    let mut since = since;
    let mut out = Vec::new();
    while since < last {
        let wait = if wait { "&wait=10" } else { "" };
        let (status, body) = s
            .get_json(&format!(
                "/api/channels/{CH}/messages?since={since}&epoch={epoch}{wait}"
            ))
            .await?;
        ensure!(status == 200, "poll answered {status}: {body}");
        ensure!(body.get("truncated").is_none(), "told truncated: {body}");
        ensure!(body["epoch"] == epoch, "epoch changed: {body}");
        out.extend(body["messages"].as_array().cloned().unwrap_or_default());
        since = body["next"].as_u64().context("next")?;
    }
    Ok(out)
}

/// After a restart: every rung resumes from its own last position (in the
/// old epoch) and gets exactly what it missed, then a new publish continues
/// the numbering in the same epoch.
async fn resume_every_rung(s: &TestServer, epoch: &str, acked: &[(u64, Value)]) -> Result<()> {
    let last = acked.len() as u64;
    let after = |since: u64| acked[since as usize..].to_vec();
    // Each rung had seen a different amount before the restart.
    let (poll_at, long_at, sse_at, ws_at) = (last / 4, last / 3, last / 2, last);
    let mut sse = Sse::connect(s, CH, "", Some(&format!("{epoch}:{sse_at}"))).await?;
    let mut ws = Ws::connect(s).await?;
    ws.send(json!({"op":"subscribe","channel":CH,"since":ws_at,"epoch":epoch}))
        .await?;
    let sub = ws.recv().await?;
    ensure!(
        sub["op"] == "subscribed" && sub["epoch"] == epoch && sub["offset"] == last,
        "{sub}"
    );

    let next = s.publish(CH, json!({"after": "restart"})).await?;
    ensure!(
        next["offset"] == last + 1 && next["epoch"] == epoch,
        "numbering did not continue: {next}"
    );
    let mut all = acked.to_vec();
    all.push((last + 1, json!({"after": "restart"})));
    let tail = |since: u64| {
        let mut v = after(since);
        v.push(all[last as usize].clone());
        v
    };
    assert_eq!(
        pairs(&poll_resume(s, epoch, poll_at, false, last + 1).await?),
        tail(poll_at)
    );
    assert_eq!(
        pairs(&poll_resume(s, epoch, long_at, true, last + 1).await?),
        tail(long_at)
    );
    // `messages_until` fails on anything but a message, `truncated` included.
    assert_eq!(pairs(&sse.messages_until(last + 1).await?), tail(sse_at));
    assert_eq!(pairs(&ws.messages_until(last + 1).await?), tail(ws_at));
    Ok(())
}

#[tokio::test]
async fn sigkill_loses_nothing_acknowledged_and_every_rung_resumes_exactly() -> Result<()> {
    let dir = temp_dir("data");
    let dir_arg = dir.to_str().context("utf-8 path")?;
    let child = Child::start(&["--data-dir", dir_arg]).await?;
    let (epoch, acked) = publish_on(&child, 40).await?;
    let status = child.signal("-KILL").await?;
    ensure!(
        !status.success(),
        "SIGKILL should not look like a clean exit"
    );

    let s = TestServer::spawn_with(|c| c.data_dir = Some(dir.clone())).await?;
    resume_every_rung(&s, &epoch, &acked).await?;
    s.shutdown().await
}

#[tokio::test]
async fn graceful_restarts_continue_the_numbering() -> Result<()> {
    let dir = temp_dir("data");
    let dir_arg = dir.to_str().context("utf-8 path")?;
    let child = Child::start(&["--data-dir", dir_arg, "--fsync", "per-publish"]).await?;
    let (epoch, mut acked) = publish_on(&child, 12).await?;
    let status = child.signal("-TERM").await?;
    ensure!(status.success(), "SIGTERM must exit 0, got {status}");

    // Twice in-process, too: the server closes its file on shutdown.
    for round in 0..2 {
        let s = TestServer::spawn_with(|c| c.data_dir = Some(dir.clone())).await?;
        resume_every_rung(&s, &epoch, &acked).await?;
        acked.push((acked.len() as u64 + 1, json!({"after": "restart"})));
        s.shutdown()
            .await
            .with_context(|| format!("round {round}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn a_damaged_data_file_stops_the_server_with_a_clear_message() -> Result<()> {
    let dir = temp_dir("data");
    let dir_arg = dir.to_str().context("utf-8 path")?;
    let child = Child::start(&["--data-dir", dir_arg]).await?;
    publish_on(&child, 6).await?;
    ensure!(child.signal("-TERM").await?.success());

    let file = dir.join("ladder.redb");
    let mut bytes = std::fs::read(&file)?;
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&file, &bytes)?;
    let (status, stderr) = start_fails(&["--data-dir", dir_arg]).await?;
    ensure!(!status.success(), "a damaged file must not start: {stderr}");
    ensure!(
        stderr.contains("is damaged") && stderr.contains("ladder.redb"),
        "the message should name the damaged file: {stderr}"
    );
    Ok(())
}
