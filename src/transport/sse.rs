//! Server-Sent Events: `GET /api/channels/{channel}/events`.
//!
//! The body is a stream of pre-encoded events shared with every other
//! subscriber. It ends by itself on shutdown or when the subscriber lags, so
//! the HTTP connection can close gracefully (axum's graceful shutdown alone
//! would wait forever on an open event stream).

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::extract::{ChannelParam, Granted, ensure_enabled};
use super::{parse_position, sleep_until_opt};
use crate::context::Ctx;
use crate::hub::presence::{Change, Held};
use crate::hub::{ChannelName, Event, Position, PresenceEvent, Subscription};
use crate::protocol::{ErrorCode, ProtocolError};
use crate::stats::{ConnGuard, Transport};
use crate::transport::presence as wire;
use tokio::sync::broadcast;

/// The reconnection delay suggested to browsers, in milliseconds.
pub(crate) const RETRY_MS: u64 = 2000;
/// Most bytes coalesced into one chunk when many messages are ready.
const COALESCE_BYTES: usize = 16 * 1024;

/// Query parameters of an event stream.
#[derive(Debug, Deserialize)]
pub(crate) struct SseQuery {
    since: Option<String>,
    epoch: Option<String>,
    /// Presence id (auth off), its `info` (JSON), and `presence=1` to
    /// receive the member list and its joins and leaves. The repeatable
    /// `tab` is read from the raw query (see [`wire::tabs_of`]).
    client: Option<String>,
    info: Option<String>,
    presence: Option<String>,
    /// `event`: heartbeats are also events a browser's `EventSource` sees
    /// (comments are invisible to it), and one comes first, so a client can
    /// tell a stream that flows from one a proxy holds back.
    heartbeat: Option<String>,
}

/// Whether a `presence` query parameter asks for presence events.
pub(crate) fn wants_presence(v: Option<&str>) -> Result<bool, ProtocolError> {
    match v {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(ProtocolError::new(
            ErrorCode::BadRequest,
            format!("`presence` must be 1 or 0, got {other:?}"),
        )),
    }
}

/// An event stream's presence: the member it holds and the events it asked
/// for. Boxed in the stream, which most clients never give one.
struct StreamPresence {
    channel: ChannelName,
    /// The members it joined (one, or one per tab), which leave with it.
    _held: Vec<Held>,
    watch: Option<broadcast::Receiver<Change>>,
    /// Said once, right after `retry:`: the snapshot, or why joining failed.
    first: Bytes,
}

/// A heartbeat as an `EventSource` sees it; the comment line keeps it a
/// `: ping` for every other reader.
const VISIBLE_HEARTBEAT: &[u8] = b": ping\nevent: heartbeat\ndata: {}\n\n";

//= https://html.spec.whatwg.org/multipage/server-sent-events.html#the-last-event-id-header
//# the user agent must ... include a `Last-Event-ID` header whose value is
//# the last event ID string
/// Parses a `Last-Event-ID` we issued (`epoch:offset`); a bare offset is
/// accepted too.
pub fn parse_last_event_id(id: &str) -> Result<Position, ProtocolError> {
    let bad = || {
        ProtocolError::new(
            ErrorCode::BadRequest,
            format!("Last-Event-ID must be `epoch:offset`, got {id:?}"),
        )
    };
    match id.rsplit_once(':') {
        Some((epoch, offset)) => parse_position(Some(offset), Some(epoch)).map_err(|_| bad()),
        None => parse_position(Some(id), None).map_err(|_| bad()),
    }
}

/// `GET /api/channels/{channel}/events`.
pub(crate) async fn get(
    State(ctx): State<Ctx>,
    channel: Result<ChannelParam, ProtocolError>,
    granted: Result<Granted, ProtocolError>,
    headers: HeaderMap,
    query: Result<Query<SseQuery>, QueryRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ProtocolError> {
    ensure_enabled(&ctx, Transport::Sse)?;
    let Query(q) = query.map_err(|e| ProtocolError::new(ErrorCode::BadRequest, e.body_text()))?;
    let ChannelParam(channel) = channel?;
    let Granted(grant) = granted?;
    grant.can_subscribe(&channel)?;
    let pos = match headers.get("last-event-id") {
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                ProtocolError::new(ErrorCode::BadRequest, "Last-Event-ID is not text")
            })?;
            parse_last_event_id(v.trim())?
        }
        None => parse_position(q.since.as_deref(), q.epoch.as_deref())?,
    };
    let visible = match q.heartbeat.as_deref() {
        None => false,
        Some("event") => true,
        Some(other) => {
            return Err(ProtocolError::new(
                ErrorCode::BadRequest,
                format!("heartbeat must be `event`, got {other:?}"),
            ));
        }
    };
    let tabs = wire::tabs_of(raw.as_deref());
    let who = wire::tab_members(&ctx, &grant, q.client.as_deref(), q.info.as_deref(), &tabs)?;
    let events = wants_presence(q.presence.as_deref())?;
    let sub = ctx.hub.subscribe(&channel, &pos).await?;
    let presence = match (who.is_empty(), events) {
        (true, false) => None,
        _ => Some(Box::new(
            Box::pin(join(&ctx, &grant, &channel, who, events)).await,
        )),
    };
    let mut heartbeat = tokio::time::interval(ctx.cfg.heartbeat_period());
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = EventStream {
        sub,
        guard: ctx.stats.open(Transport::Sse),
        heartbeat,
        visible,
        expires: grant.remaining().map(|left| Instant::now() + left),
        ctx: ctx.clone(),
        state: Phase::Start,
        presence,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), s))
    }));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Ask buffering reverse proxies to pass events through at once.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// Joins an event stream's presence and starts its presence events. A
/// failure is told in the stream (`presence_error`), which still delivers.
async fn join(
    ctx: &Ctx,
    grant: &crate::auth::Grant,
    channel: &ChannelName,
    who: Vec<(crate::hub::presence::ClientId, crate::hub::presence::Info)>,
    events: bool,
) -> StreamPresence {
    let mut out = StreamPresence {
        channel: channel.clone(),
        _held: Vec::with_capacity(who.len()),
        watch: None,
        first: Bytes::new(),
    };
    let mut first = BytesMut::new();
    // Held first, so a stream that joins sees itself in its list. Every
    // tab is tried; the first refusal (a full channel) is what it is told.
    let mut refused = None;
    for (id, info) in who {
        match ctx.hub.presence().hold(channel, id, info).await {
            Ok(h) => out._held.push(h),
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    if let Some(e) = refused {
        first.extend_from_slice(&wire::sse_error(&e.into()));
    }
    if events {
        let watched = match grant.can_read_presence(channel) {
            Ok(()) => {
                let (rx, local) = ctx.hub.presence().watch_from(channel);
                wire::first_snapshot(ctx, local, channel)
                    .await
                    .map(|m| (rx, m))
            }
            Err(e) => Err(e.into()),
        };
        match watched {
            Ok((rx, members)) => {
                out.watch = Some(rx);
                first.extend_from_slice(&wire::sse_event(&PresenceEvent::Snapshot(members)));
            }
            Err(e) => first.extend_from_slice(&wire::sse_error(&e)),
        }
    }
    out.first = first.freeze();
    out
}

/// The next presence change of a stream that watches, or never.
async fn next_change(p: Option<&mut StreamPresence>, ctx: &Ctx) -> Bytes {
    let Some((rx, channel)) = p.and_then(|p| Some((p.watch.as_mut()?, &p.channel))) else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(c) => wire::sse_event(&PresenceEvent::Change(c)),
        // Fell behind: the list as it is now.
        Err(broadcast::error::RecvError::Lagged(_)) => {
            let members = ctx.hub.presence().resync(channel).await;
            wire::sse_event(&PresenceEvent::Snapshot(members))
        }
        Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Start,
    Live,
    Done,
}

struct EventStream {
    sub: Subscription,
    guard: ConnGuard,
    heartbeat: Interval,
    /// Heartbeats are events too (`?heartbeat=event`).
    visible: bool,
    /// When the token that opened the stream expires, the stream ends.
    expires: Option<Instant>,
    ctx: Ctx,
    state: Phase,
    presence: Option<Box<StreamPresence>>,
}

impl EventStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        match self.state {
            Phase::Done => return None,
            Phase::Start => {
                self.state = Phase::Live;
                // Consume the interval's immediate first tick.
                self.heartbeat.reset();
                let mut first = format!("retry: {RETRY_MS}\n\n").into_bytes();
                if let Some(p) = &self.presence {
                    first.extend_from_slice(&p.first);
                }
                if self.visible {
                    first.extend_from_slice(VISIBLE_HEARTBEAT);
                }
                return Some(Bytes::from(first));
            }
            Phase::Live => {}
        }
        let event = tokio::select! {
            () = self.ctx.shutdown.cancelled() => {
                self.state = Phase::Done;
                return None;
            }
            _ = self.heartbeat.tick() => return Some(Bytes::from_static(match self.visible {
                true => VISIBLE_HEARTBEAT,
                false => b": ping\n\n",
            })),
            () = sleep_until_opt(self.expires) => {
                self.state = Phase::Done;
                return Some(Bytes::from_static(
                    b"event: error\ndata: {\"code\":\"unauthorized\",\"message\":\"token expired\"}\n\n",
                ));
            }
            ev = self.sub.next() => ev,
            change = next_change(self.presence.as_deref_mut(), &self.ctx) => {
                self.heartbeat.reset();
                return Some(change);
            }
        };
        let first = self.encode(event);
        if self.state == Phase::Done {
            return Some(first);
        }
        // Coalesce whatever else is ready into the same chunk.
        let mut more: Option<BytesMut> = None;
        while more.as_ref().map_or(first.len(), BytesMut::len) < COALESCE_BYTES {
            let Some(ev) = self.sub.try_next() else { break };
            let chunk = self.encode(ev);
            more.get_or_insert_with(|| BytesMut::from(&first[..]))
                .extend_from_slice(&chunk);
            if self.state == Phase::Done {
                break;
            }
        }
        self.heartbeat.reset();
        Some(more.map_or(first, BytesMut::freeze))
    }

    fn encode(&mut self, event: Event) -> Bytes {
        match event {
            Event::Message(m) => {
                self.guard.stats().messages_out.inc();
                m.sse_event().clone()
            }
            Event::Truncated(t) => Bytes::from(format!(
                "event: truncated\ndata: {{\"oldest\":{},\"epoch\":\"{}\"}}\n\n",
                t.oldest, t.epoch
            )),
            Event::Presence(p) => wire::sse_event(&p),
            Event::Lagged { last } => {
                self.guard.stats().lagged.inc();
                self.state = Phase::Done;
                Bytes::from(format!("event: lagged\ndata: {{\"offset\":{last}}}\n\n"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_forms() {
        let p = parse_last_event_id("abc:12").unwrap();
        assert_eq!((p.since, p.epoch.as_deref()), (Some(12), Some("abc")));
        assert_eq!(parse_last_event_id("7").unwrap().since, Some(7));
        assert!(parse_last_event_id("abc:x").is_err());
        assert!(parse_last_event_id(":5").is_err());
    }
}
