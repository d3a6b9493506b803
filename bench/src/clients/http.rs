//! HTTP rungs over raw hyper HTTP/1.1 connections, one TCP connection per
//! subscriber from its own source address (a pooled client could not
//! promise that): SSE, long polling and short polling. The event-stream
//! reader is shared with SSE over HTTP/2 and HTTP/3 ([`super::tls`]).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{Kind, Ready, SubCtx, complete, deliver, set_ready};
use crate::sys::{src_ip, tcp_connect};
use crate::track::Tracker;

/// A keep-alive HTTP/1.1 connection; its driver runs on its own task.
async fn open(ctx: &SubCtx, i: usize) -> Result<SendRequest<Empty<Bytes>>> {
    let tcp = tcp_connect(src_ip(i, ctx.src_ips), ctx.target.http).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(send)
}

fn get(ctx: &SubCtx, path: &str) -> Result<Request<Empty<Bytes>>> {
    Ok(Request::get(path)
        .header(hyper::header::HOST, ctx.target.http.to_string())
        .body(Empty::new())?)
}

pub(super) async fn sse(
    ctx: &SubCtx,
    i: usize,
    ready: &mut Option<Ready>,
    t: &mut Tracker,
) -> Result<()> {
    let mut send = open(ctx, i).await?;
    let path = format!("/api/channels/{}/events?since=0", ctx.channel);
    let resp = send.send_request(get(ctx, &path)?).await?;
    if resp.status() != 200 {
        bail!("sse answered {}", resp.status());
    }
    set_ready(ready);
    read_events(ctx, i, t, resp.into_body()).await
}

/// Reads an event stream (HTTP/1.1 or HTTP/2: hyper's body is the same)
/// until the subscriber is complete, stopped or lagged.
pub(super) async fn read_events(
    ctx: &SubCtx,
    i: usize,
    t: &mut Tracker,
    mut body: hyper::body::Incoming,
) -> Result<()> {
    let mut events = Events::default();
    let mut stop = ctx.stop.clone();
    while !complete(ctx, t) {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            f = body.frame() => f,
        };
        let Some(frame) = frame else {
            bail!("sse stream ended")
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if events.feed(ctx, i, t, &data) {
            return Ok(());
        }
    }
    Ok(())
}

/// An event stream's bytes as they arrive, split into events.
#[derive(Default)]
pub(super) struct Events {
    buf: Vec<u8>,
}

impl Events {
    /// Adds `data` and delivers every complete message event; `true` once
    /// the server said the subscriber lagged.
    pub(super) fn feed(&mut self, ctx: &SubCtx, i: usize, t: &mut Tracker, data: &[u8]) -> bool {
        self.buf.extend_from_slice(data);
        let buf = &self.buf;
        let mut start = 0;
        while let Some(end) = find(&buf[start..], b"\n\n") {
            let block = &buf[start..start + end];
            start += end + 2;
            if block.starts_with(b"id:") || find(block, b"event: message").is_some() {
                if let Some(d) = find(block, b"data: ") {
                    deliver(ctx, i, t, &block[d..]);
                }
            } else if find(block, b"event: lagged").is_some() {
                t.lagged = true;
                return true;
            }
        }
        self.buf.drain(..start);
        false
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(super) async fn poll(
    ctx: &SubCtx,
    i: usize,
    ready: &mut Option<Ready>,
    t: &mut Tracker,
) -> Result<()> {
    let mut send = open(ctx, i).await?;
    let long = matches!(ctx.kind, Kind::LongPoll | Kind::LongPollReused);
    if ctx.kind == Kind::LongPollReused {
        let resp = send.send_request(get(ctx, "/api/info")?).await?;
        if resp.status() != 200 {
            bail!("/api/info answered {}", resp.status());
        }
        resp.into_body().collect().await?;
    }
    let mut since = 0u64;
    let mut stop = ctx.stop.clone();
    // Short polls start spread over one interval, as independent browsers
    // would, instead of all at once.
    let phase = if long {
        Duration::ZERO
    } else {
        ctx.poll_interval.mul_f64((i as f64 * 0.618_034) % 1.0)
    };
    let mut first = true;
    while !complete(ctx, t) {
        // The first request never waits, so "ready" means subscribed.
        let path = match long && !first {
            true => format!(
                "/api/channels/{}/messages?since={since}&wait=30",
                ctx.channel
            ),
            false => format!("/api/channels/{}/messages?since={since}", ctx.channel),
        };
        let req = get(ctx, &path)?;
        let resp = tokio::select! {
            _ = stop.changed() => break,
            r = send.send_request(req) => r?,
        };
        if resp.status() != 200 {
            bail!("poll answered {}", resp.status());
        }
        let body = resp.into_body().collect().await?.to_bytes();
        if first {
            set_ready(ready);
            first = false;
        }
        let v: Value = serde_json::from_slice(&body).context("poll body")?;
        for m in v["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            // Re-serialising only the two numbers is enough for the tracker.
            let off = m["offset"].as_u64().unwrap_or(0);
            let ts = m["data"]["t"].as_u64().unwrap_or(0);
            deliver(ctx, i, t, format!("\"offset\":{off},\"t\":{ts}").as_bytes());
        }
        since = v["next"].as_u64().context("next")?;
        if !long && !complete(ctx, t) {
            let nap = if phase.is_zero() || since > 0 {
                ctx.poll_interval
            } else {
                phase
            };
            tokio::select! {
                _ = stop.changed() => break,
                () = tokio::time::sleep(nap) => {}
            }
        }
    }
    Ok(())
}
