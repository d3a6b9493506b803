//! Publishers over HTTP, WebSocket and WebTransport; only acked publishes
//! count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

use super::subscribers::{Endpoints, wt_options};
use super::{Backoff, STEP};
use crate::ws::{Ws, WsOptions};
use crate::wt::Wt;
use crate::{Base, within_for};

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
                    let data = json!({"n": n});
                    let ack = within_for(
                        STEP,
                        "publish",
                        crate::server::publish(&http, &ep.http, &channel, &data),
                    )
                    .await??;
                    ack_of(&acks, &channel, &ack)?;
                    backoff.reset();
                    sleep(every).await;
                },
                PubKind::WebSocket => {
                    let opts = WsOptions {
                        wait: STEP,
                        ..WsOptions::default()
                    };
                    let mut ws = Ws::connect_with(&ep.ws_url(), opts).await?;
                    loop {
                        n += 1;
                        let ack = within_for(STEP, "ack", ws.publish(&channel, json!({"n": n}), n))
                            .await??;
                        ack_of(&acks, &channel, &ack)?;
                        backoff.reset();
                        sleep(every).await;
                    }
                }
                PubKind::WebTransport => {
                    let wt = within_for(
                        STEP,
                        "wt session",
                        Wt::connect_with(&*ep, "", &wt_options()),
                    )
                    .await??;
                    let mut lines = within_for(STEP, "wt stream", wt.stream())
                        .await??
                        .with_wait(STEP);
                    loop {
                        n += 1;
                        let ack = lines.publish(&channel, json!({"n": n}), n).await?;
                        ack_of(&acks, &channel, &ack)?;
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
