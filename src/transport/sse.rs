//! Server-Sent Events: `GET /api/channels/{channel}/events`.
//!
//! The body is a stream of pre-encoded events shared with every other
//! subscriber. It ends by itself on shutdown or when the subscriber lags, so
//! the HTTP connection can close gracefully (axum's graceful shutdown alone
//! would wait forever on an open event stream).

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::extract::{ChannelParam, Granted, ensure_enabled};
use super::{parse_position, sleep_until_opt};
use crate::context::Ctx;
use crate::hub::{Event, Position, Subscription};
use crate::protocol::{ErrorCode, ProtocolError};
use crate::stats::{ConnGuard, Transport};

/// The reconnection delay suggested to browsers, in milliseconds.
pub const RETRY_MS: u64 = 2000;
/// Most bytes coalesced into one chunk when many messages are ready.
const COALESCE_BYTES: usize = 16 * 1024;

/// Query parameters of an event stream.
#[derive(Debug, Deserialize)]
pub struct SseQuery {
    since: Option<String>,
    epoch: Option<String>,
}

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
pub async fn get(
    State(ctx): State<Ctx>,
    channel: Result<ChannelParam, ProtocolError>,
    granted: Result<Granted, ProtocolError>,
    headers: HeaderMap,
    query: Result<Query<SseQuery>, QueryRejection>,
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
    let sub = ctx.hub.subscribe(&channel, &pos).await?;
    let mut heartbeat = tokio::time::interval(ctx.cfg.heartbeat());
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = EventStream {
        sub,
        guard: ctx.stats.open(Transport::Sse),
        heartbeat,
        expires: grant.remaining().map(|left| Instant::now() + left),
        ctx: ctx.clone(),
        state: Phase::Start,
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
    /// When the token that opened the stream expires, the stream ends.
    expires: Option<Instant>,
    ctx: Ctx,
    state: Phase,
}

impl EventStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        match self.state {
            Phase::Done => return None,
            Phase::Start => {
                self.state = Phase::Live;
                // Consume the interval's immediate first tick.
                self.heartbeat.reset();
                return Some(Bytes::from(format!("retry: {RETRY_MS}\n\n")));
            }
            Phase::Live => {}
        }
        let event = tokio::select! {
            () = self.ctx.shutdown.cancelled() => {
                self.state = Phase::Done;
                return None;
            }
            _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": ping\n\n")),
            () = sleep_until_opt(self.expires) => {
                self.state = Phase::Done;
                return Some(Bytes::from_static(
                    b"event: error\ndata: {\"code\":\"unauthorized\",\"message\":\"token expired\"}\n\n",
                ));
            }
            ev = self.sub.next() => ev,
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
