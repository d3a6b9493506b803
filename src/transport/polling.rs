//! Short and long polling: `GET /api/channels/{channel}/messages`.
//!
//! A short poll answers at once with what is retained after `since`. With
//! `wait=S` it is a long poll: held until a message after `since` exists, `S`
//! seconds pass, the client goes away (hyper drops this future), or the
//! server shuts down (it answers with what it has).

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use bytes::{BufMut, BytesMut};
use serde::Deserialize;

use super::parse_position;
use crate::context::Ctx;
use crate::http::Peer;
use crate::http::api::{channel_param, ensure_enabled, grant, json_bytes};
use crate::hub::{ChannelName, Page};
use crate::protocol::{ErrorCode, ProtocolError};
use crate::stats::Transport;

/// The longest wait the contract allows, in seconds.
pub const MAX_WAIT_SECS: f64 = 60.0;
/// Messages per response when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// Query parameters of a poll.
#[derive(Debug, Deserialize)]
pub struct PollQuery {
    since: Option<String>,
    epoch: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
}

fn bad(msg: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::BadRequest, msg)
}

/// Parses the `limit` query parameter (default [`DEFAULT_LIMIT`]).
pub fn parse_limit(s: Option<&str>) -> Result<usize, ProtocolError> {
    let Some(s) = s else { return Ok(DEFAULT_LIMIT) };
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(bad(format!(
            "`limit` must be an integer from 1 to {MAX_LIMIT}, got {s:?}"
        ))),
    }
}

/// Parses the `wait` query parameter: seconds, 0 to [`MAX_WAIT_SECS`].
pub fn parse_wait(s: &str) -> Result<Duration, ProtocolError> {
    match s.parse::<f64>() {
        Ok(w) if (0.0..=MAX_WAIT_SECS).contains(&w) => Ok(Duration::from_secs_f64(w)),
        _ => Err(bad(format!(
            "`wait` must be a number of seconds from 0 to 60, got {s:?}"
        ))),
    }
}

/// `GET /api/channels/{channel}/messages`.
pub async fn get(
    State(ctx): State<Ctx>,
    channel: Result<Path<String>, PathRejection>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<Response, ProtocolError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let channel = channel_param(channel)?;
    let grant = grant(&ctx, &headers, &uri)?;
    grant.can_subscribe(&channel)?;
    let pos = parse_position(q.since.as_deref(), q.epoch.as_deref())?;
    let limit = parse_limit(q.limit.as_deref())?;
    let page = match q.wait.as_deref() {
        None => {
            ensure_enabled(&ctx, Transport::Poll)?;
            let _open = ctx.stats.open(Transport::Poll);
            ctx.hub.read(&channel, &pos, limit).await?
        }
        Some(w) => {
            ensure_enabled(&ctx, Transport::LongPoll)?;
            let mut wait = parse_wait(w)?;
            // A waiting poll must not outlive the token that allowed it.
            if let Some(left) = grant.remaining() {
                wait = wait.min(left);
            }
            let _slot = match peer {
                Some(Extension(Peer(addr))) => {
                    Some(ctx.limits.long_polls.acquire(addr.ip()).ok_or_else(|| {
                        ProtocolError::new(
                            ErrorCode::RateLimited,
                            "too many long polls waiting from this address",
                        )
                    })?)
                }
                None => None,
            };
            let _open = ctx.stats.open(Transport::LongPoll);
            tokio::select! {
                page = ctx.hub.read_wait(&channel, &pos, limit, wait) => page?,
                () = ctx.shutdown.cancelled() => ctx.hub.read(&channel, &pos, limit).await?,
            }
        }
    };
    let t = if q.wait.is_some() {
        Transport::LongPoll
    } else {
        Transport::Poll
    };
    ctx.stats
        .of(t)
        .messages_out
        .inc_by(page.messages.len() as u64);
    Ok(json_bytes(StatusCode::OK, encode_page(&channel, &page)))
}

/// `{"channel","epoch","messages":[…],"next","truncated"?}` from the
/// messages' shared encodings.
fn encode_page(channel: &ChannelName, page: &Page) -> BytesMut {
    let size: usize = page.messages.iter().map(|m| m.json().len() + 1).sum();
    let mut out = BytesMut::with_capacity(size + 128);
    out.put_slice(br#"{"channel":""#);
    out.put_slice(channel.as_str().as_bytes());
    out.put_slice(br#"","epoch":""#);
    out.put_slice(page.epoch.as_str().as_bytes());
    out.put_slice(br#"","messages":["#);
    for (i, m) in page.messages.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(m.json());
    }
    out.put_slice(format!(r#"],"next":{}"#, page.next).as_bytes());
    if let Some(t) = &page.truncated {
        out.put_slice(
            format!(
                r#","truncated":{{"oldest":{},"epoch":"{}"}}"#,
                t.oldest, t.epoch
            )
            .as_bytes(),
        );
    }
    out.put_u8(b'}');
    out
}
