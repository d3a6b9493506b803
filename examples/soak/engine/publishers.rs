//! Publishers over HTTP, WebSocket and WebTransport; only acked publishes
//! count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::subscribers::Endpoints;
use super::wt::{WtLines, wt_connect};
use super::{Backoff, STEP};

/// Everything published and acked, per channel and epoch.
#[derive(Default)]
pub(crate) struct Acks {
    pub(crate) by: Mutex<HashMap<String, HashMap<String, Vec<u64>>>>,
    pub(crate) count: AtomicU64,
}

impl Acks {
    pub(crate) fn add(&self, channel: &str, epoch: &str, offset: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.by
            .lock()
            .expect("acks lock")
            .entry(channel.to_owned())
            .or_default()
            .entry(epoch.to_owned())
            .or_default()
            .push(offset);
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum PubKind {
    Http,
    WebSocket,
    WebTransport,
}

pub(crate) async fn publisher(
    kind: PubKind,
    channel: String,
    ep: Arc<Endpoints>,
    acks: Arc<Acks>,
    stop: CancellationToken,
    every: Duration,
    seed: u64,
) -> u64 {
    let mut backoff = Backoff::new(seed);
    let http = reqwest::Client::new();
    let mut n = 0u64;
    let mut failures = 0u64;
    while !stop.is_cancelled() {
        let run = async {
            match kind {
                PubKind::Http => loop {
                    n += 1;
                    let resp = timeout(
                        STEP,
                        http.post(format!("{}/api/channels/{channel}/messages", ep.http))
                            .json(&json!({"n": n}))
                            .send(),
                    )
                    .await??;
                    ensure!(resp.status() == 201, "publish answered {}", resp.status());
                    let ack: Value = timeout(STEP, resp.json()).await??;
                    ack_of(&acks, &channel, &ack)?;
                    backoff.reset();
                    sleep(every).await;
                },
                PubKind::WebSocket => {
                    let (mut ws, _) =
                        timeout(STEP, tokio_tungstenite::connect_async(ep.ws())).await??;
                    loop {
                        n += 1;
                        let op =
                            json!({"op": "publish", "channel": channel, "data": {"n": n}, "id": n});
                        ws.send(Message::text(op.to_string())).await?;
                        loop {
                            match timeout(STEP, ws.next()).await? {
                                Some(Ok(Message::Text(t))) => {
                                    let v: Value = serde_json::from_str(&t)?;
                                    if v["op"] == "published" && v["id"] == n {
                                        ack_of(&acks, &channel, &v)?;
                                        break;
                                    }
                                    ensure!(v["op"] != "error", "publish refused: {v}");
                                }
                                Some(Ok(_)) => {}
                                other => bail!("socket ended: {other:?}"),
                            }
                        }
                        backoff.reset();
                        sleep(every).await;
                    }
                }
                PubKind::WebTransport => {
                    let (_endpoint, conn) = wt_connect(&ep, &http).await?;
                    let mut lines = WtLines::open(&conn).await?;
                    loop {
                        n += 1;
                        let op =
                            json!({"op": "publish", "channel": channel, "data": {"n": n}, "id": n});
                        lines.send(&op).await?;
                        let v = timeout(STEP, lines.next()).await??;
                        ensure!(v["op"] == "published" && v["id"] == n, "ack: {v}");
                        ack_of(&acks, &channel, &v)?;
                        backoff.reset();
                        sleep(every).await;
                    }
                }
            }
        };
        let r: Result<()> = tokio::select! {
            () = stop.cancelled() => break,
            r = run => r,
        };
        if r.is_err() {
            failures += 1;
            tokio::select! {
                () = stop.cancelled() => break,
                () = backoff.wait() => {}
            }
        }
    }
    failures
}

pub(crate) fn ack_of(acks: &Acks, channel: &str, ack: &Value) -> Result<()> {
    acks.add(
        channel,
        ack["epoch"].as_str().context("ack epoch")?,
        ack["offset"].as_u64().context("ack offset")?,
    );
    Ok(())
}
