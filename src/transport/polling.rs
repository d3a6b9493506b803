//! Short and long polling: `GET /api/channels/{channel}/messages`.
//!
//! A short poll answers at once with what is retained after `since`. With
//! `wait=S` it is a long poll: held until a message after `since` exists, `S`
//! seconds pass, the client goes away (hyper drops this future), or the
//! server shuts down (it answers with what it has). A long poll that asks
//! for presence changes (`presence=V`) is also answered as soon as there
//! is a join or leave after V.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{BufMut, BytesMut};
use serde::Deserialize;

use super::extract::{ChannelParam, Granted, Peer, ensure_enabled, json_bytes};
use super::parse_position;
use crate::context::Ctx;
use crate::hub::presence::{ClientId, Held, Info, Since, members_json};
use crate::hub::{ChannelName, Page, Position};
use crate::limits::PerIpGuard;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::stats::Transport;
use crate::transport::meter::Meter;
use crate::transport::presence as wire;

/// The longest wait the contract allows, in seconds.
pub const MAX_WAIT_SECS: f64 = 60.0;
/// The answer's header naming the connection that carried it (see
/// [`crate::stats::ConnectionNumbers`]).
const CONNECTION: HeaderName = HeaderName::from_static("ladder-connection");
/// Messages per response when `limit` is absent.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// Query parameters of a poll.
#[derive(Debug, Deserialize)]
pub(crate) struct PollQuery {
    since: Option<String>,
    epoch: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
    /// Presence id (auth off) and its `info` (JSON): the poller stays a
    /// member while it keeps polling within `--presence-lapse`. With the
    /// repeatable `tab` (read from the raw query), one member per tab,
    /// each on the same lease.
    client: Option<String>,
    info: Option<String>,
    /// `presence=V`: the joins and leaves after version V (from the last
    /// answer's `presence.version`), or `0` for the member list.
    presence: Option<String>,
}

/// What a poll asks of presence.
struct PollPresence {
    /// The members it renews: one, or one per tab.
    who: Vec<(ClientId, Info)>,
    /// `Some(v)` to be told the changes after `v` (0: the list).
    after: Option<u64>,
}

fn bad(msg: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::BadRequest, msg)
}

/// Parses the `limit` query parameter (default `DEFAULT_LIMIT`).
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
///
/// Not an `async fn`: the request is checked before the future exists, so
/// the future (which a long poll holds for its whole wait) keeps only what
/// the read needs, not the extractors, which an `async fn` would store
/// twice.
pub(crate) fn get(
    State(ctx): State<Ctx>,
    channel: Result<ChannelParam, ProtocolError>,
    granted: Result<Granted, ProtocolError>,
    peer: Option<Peer>,
    meter: Option<Extension<Arc<Meter>>>,
    query: Result<Query<PollQuery>, QueryRejection>,
    RawQuery(raw): RawQuery,
) -> impl Future<Output = Result<Response, ProtocolError>> {
    let poll = check(&ctx, channel, granted, peer, query, raw.as_deref());
    // HTTP/1.1 and HTTP/2 connections are numbered; HTTP/3 ones are not.
    let connection = meter.map(|Extension(m)| m.number());
    async move {
        let Poll {
            channel,
            pos,
            limit,
            wait,
            presence,
        } = poll?;
        // Boxed, as is the tail below: they would otherwise size the
        // future every waiting long poll holds.
        let (held, refused) = match &presence {
            Some(p) => Box::pin(join(&ctx, &channel, p, wait.is_some())).await,
            None => (Vec::new(), None),
        };
        let (t, page) = match wait {
            None => {
                let _open = ctx.stats.open(Transport::Poll);
                (Transport::Poll, ctx.hub.read(&channel, &pos, limit).await?)
            }
            Some((wait, _slot)) => {
                let _open = ctx.stats.open(Transport::LongPoll);
                // The read on shutdown is not awaited inside `select!`,
                // which would keep the waiting future alive beside it and
                // size this one for both.
                let news = presence_news(&ctx, &channel, presence.as_deref());
                let waited = tokio::select! {
                    page = ctx.hub.read_wait(&channel, &pos, limit, wait) => Some(page?),
                    () = ctx.shutdown.cancelled() => None,
                    () = async move {
                        match news {
                            Some(news) => news.await,
                            None => std::future::pending().await,
                        }
                    } => None,
                };
                let page = match waited {
                    Some(page) => page,
                    None => ctx.hub.read(&channel, &pos, limit).await?,
                };
                (Transport::LongPoll, page)
            }
        };
        ctx.stats
            .of(t)
            .messages_out
            .inc_by(page.messages.len() as u64);
        drop(held);
        let tail = match presence {
            Some(p) => Box::pin(tail(&ctx, &channel, *p, refused)).await,
            None => String::new(),
        };
        let mut answer = json_bytes(StatusCode::OK, encode_page(&channel, &page, &tail));
        if let Some(n) = connection
            && let Ok(v) = HeaderValue::from_str(&ctx.stats.connections.header(n))
        {
            answer.headers_mut().insert(CONNECTION, v);
        }
        Ok(answer)
    }
}

/// A checked poll request.
struct Poll {
    channel: ChannelName,
    pos: Position,
    limit: usize,
    /// A long poll's wait and its per-address slot.
    wait: Option<(Duration, Option<PerIpGuard>)>,
    presence: Option<Box<PollPresence>>,
}

/// Renews the poller's presence leases (one per member: per tab when it
/// names tabs); a long poll also holds its members while it waits. Every
/// member is tried. Returns the holds and, if a join failed, the first
/// reason.
async fn join(
    ctx: &Ctx,
    channel: &ChannelName,
    p: &PollPresence,
    waits: bool,
) -> (Vec<Held>, Option<ProtocolError>) {
    let presence = ctx.hub.presence();
    let (mut held, mut refused) = (Vec::new(), None);
    for (id, info) in &p.who {
        if let Err(e) = presence.touch(channel, id, info).await {
            refused.get_or_insert(e.into());
            continue;
        }
        if waits {
            match presence.hold(channel, id.clone(), info.clone()).await {
                Ok(h) => held.push(h),
                Err(e) => {
                    refused.get_or_insert(e.into());
                }
            }
        }
    }
    (held, refused)
}

/// For a long poll that asked for presence changes: resolves when it has
/// some to be told — at once if it has already (its version is behind, or
/// unknown, or it asked for the list), else at the next join or leave.
/// Boxed, so the waiting poll's future stays small.
fn presence_news(
    ctx: &Ctx,
    channel: &ChannelName,
    p: Option<&PollPresence>,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
    let after = p?.after?;
    let presence = ctx.hub.presence();
    // Watching before asking, so a change in between is not missed.
    let mut changes = presence.watch(channel);
    let news = presence.has_news(channel, after);
    Some(Box::pin(async move {
        if !news {
            // A change, falling behind the changes, or (never while this
            // watches) the end of the channel's watchers: all news.
            let _ = changes.recv().await;
        }
    }))
}

/// The presence part of a poll's answer: `,"presence":{"version",
/// "members"|"changes"}` and `,"presence_error":{…}` as asked and needed.
async fn tail(
    ctx: &Ctx,
    channel: &ChannelName,
    p: PollPresence,
    refused: Option<ProtocolError>,
) -> String {
    let mut out = String::new();
    if let Some(e) = refused {
        out.push_str(&format!(r#","presence_error":{}"#, wire::error_json(&e)));
    }
    let presence = ctx.hub.presence();
    // A long poll renews its lease as it answers, so the wait counts as
    // polling.
    for (id, info) in &p.who {
        let _ = presence.touch(channel, id, info).await;
    }
    let Some(after) = p.after else { return out };
    let (since, version) = presence.since(channel, (after > 0).then_some(after)).await;
    let body = match since {
        Since::Changes(changes) => {
            let list: Vec<String> = changes
                .iter()
                .map(|c| {
                    format!(
                        r#"{{"type":"{}","member":{}}}"#,
                        c.kind(),
                        c.member().json()
                    )
                })
                .collect();
            format!(r#""changes":[{}]"#, list.join(","))
        }
        Since::Snapshot(members) => format!(r#""members":{}"#, members_json(&members)),
    };
    out.push_str(&format!(r#","presence":{{"version":{version},{body}}}"#));
    out
}

/// Checks a poll request: its parameters, its grant, whether its rung is
/// enabled, and a long poll's per-address limit.
fn check(
    ctx: &Ctx,
    channel: Result<ChannelParam, ProtocolError>,
    granted: Result<Granted, ProtocolError>,
    peer: Option<Peer>,
    query: Result<Query<PollQuery>, QueryRejection>,
    raw: Option<&str>,
) -> Result<Poll, ProtocolError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let ChannelParam(channel) = channel?;
    let Granted(grant) = granted?;
    grant.can_subscribe(&channel)?;
    let pos = parse_position(q.since.as_deref(), q.epoch.as_deref())?;
    let limit = parse_limit(q.limit.as_deref())?;
    let presence = poll_presence(ctx, &grant, &channel, &q, raw)?;
    let Some(w) = q.wait.as_deref() else {
        ensure_enabled(ctx, Transport::Poll)?;
        return Ok(Poll {
            channel,
            pos,
            limit,
            wait: None,
            presence,
        });
    };
    ensure_enabled(ctx, Transport::LongPoll)?;
    let mut wait = parse_wait(w)?;
    // A waiting poll must not outlive the token that allowed it.
    if let Some(left) = grant.remaining() {
        wait = wait.min(left);
    }
    let slot = match peer {
        Some(Peer(addr)) => Some(ctx.limits.long_polls.acquire(addr.ip()).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::RateLimited,
                "too many long polls waiting from this address",
            )
        })?),
        None => None,
    };
    Ok(Poll {
        channel,
        pos,
        limit,
        wait: Some((wait, slot)),
        presence,
    })
}

/// Checks a poll's presence parameters.
fn poll_presence(
    ctx: &Ctx,
    grant: &crate::auth::Grant,
    channel: &ChannelName,
    q: &PollQuery,
    raw: Option<&str>,
) -> Result<Option<Box<PollPresence>>, ProtocolError> {
    let tabs = wire::tabs_of(raw);
    let who = wire::tab_members(ctx, grant, q.client.as_deref(), q.info.as_deref(), &tabs)?;
    let after = q
        .presence
        .as_deref()
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                bad(format!(
                    "`presence` must be a version from an earlier answer, or 0, got {v:?}"
                ))
            })
        })
        .transpose()?;
    if after.is_some() {
        grant.can_read_presence(channel)?;
    }
    Ok((!who.is_empty() || after.is_some()).then(|| Box::new(PollPresence { who, after })))
}

/// `{"channel","epoch","messages":[…],"next","truncated"?}` from the
/// messages' shared encodings.
fn encode_page(channel: &ChannelName, page: &Page, tail: &str) -> BytesMut {
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
    out.put_slice(tail.as_bytes());
    out.put_u8(b'}');
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::{Hub, HubConfig};

    /// A long poll holds its handler's future for its whole wait, so its
    /// size is memory per waiting client: 2 088 bytes before the request
    /// was checked outside the future and the shutdown read moved out of
    /// `select!`, 984 after (rustc 1.95). The bound leaves room for other
    /// compilers, not for either mistake again.
    #[tokio::test]
    async fn a_long_polls_future_stays_small() {
        let ctx = Ctx::new(
            crate::config::Config::default(),
            Hub::new(HubConfig::default()),
            Arc::new(crate::stats::Stats::new()),
            "127.0.0.1:1".parse().unwrap(),
            crate::auth::Auth::disabled(),
        );
        let q = PollQuery {
            since: None,
            epoch: None,
            limit: None,
            wait: Some("1".into()),
            client: None,
            info: None,
            presence: None,
        };
        let poll = get(
            State(ctx),
            Ok(ChannelParam(ChannelName::parse("a").unwrap())),
            Ok(Granted(crate::auth::Grant::all())),
            None,
            None,
            Ok(Query(q)),
            RawQuery(None),
        );
        let size = std::mem::size_of_val(&poll);
        assert!(size <= 1400, "{size} bytes");
    }
}
