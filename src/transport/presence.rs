//! Presence on the wire, shared by every rung: who a client joins as
//! ([`identity`]), how presence events are framed for each transport, and
//! `GET /api/channels/{channel}/presence` ([`get`]).
//!
//! A client joins a channel's presence when it subscribes with an
//! identity: the token's `sub` when auth is on, else the `client` id it
//! chose, with an optional `info` object. Failing to join (a bad id, an
//! oversized `info` are refused outright; a full channel is not) never
//! costs a working subscription: the subscription is made and the reason
//! comes back as `presence_error`.
//!
//! An SSE stream or a poll may instead join as several tabs of its
//! identity ([`tab_members`]): the repeatable `tab` query parameter of a
//! browser's shared connection, one member per tab, as `presence_join`
//! makes them on WebSocket and WebTransport.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;

use super::extract::{ChannelParam, Granted, json_bytes};
use crate::auth::Grant;
use crate::context::Ctx;
use crate::hub::presence::{ClientId, Info, Member, members_json};
use crate::hub::{ChannelName, PresenceEvent};
use crate::protocol::{self, ErrorCode, ProtocolError};

/// Who a subscriber joins presence as, if anyone: with auth on, the
/// token's `sub` (a `client` given as well must equal it); with auth off,
/// the `client` it chose. Bad ids and `info` are refused here, before the
/// subscription is made.
pub(crate) fn identity(
    ctx: &Ctx,
    grant: &Grant,
    client: Option<&str>,
    info: Option<&str>,
) -> Result<Option<(ClientId, Info)>, ProtocolError> {
    let id = if grant.authenticated() {
        match (grant.subject(), client) {
            (Some(sub), Some(c)) if c != sub => {
                return Err(ProtocolError::new(
                    ErrorCode::Forbidden,
                    "`client` must equal the token's `sub` (or be left out)",
                ));
            }
            (Some(sub), _) => Some(sub),
            (None, Some(_)) => {
                return Err(ProtocolError::new(
                    ErrorCode::Forbidden,
                    "the token has no `sub` to join presence as",
                ));
            }
            (None, None) => None,
        }
    } else {
        client
    };
    let presence = ctx.hub.presence();
    match (id, info) {
        (None, Some(_)) => Err(ProtocolError::new(
            ErrorCode::BadRequest,
            "`info` needs a `client` id to belong to",
        )),
        (None, None) => Ok(None),
        (Some(id), info) => {
            let id = ClientId::parse(id)?;
            let info = match info {
                Some(text) => presence.parse_info(text)?,
                None => Info::empty(),
            };
            Ok(Some((id, info)))
        }
    }
}

/// The `tab` query parameters of a request, in order (`tab=a&tab=b`).
pub(crate) fn tabs_of(query: Option<&str>) -> Vec<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "tab")
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// Who an SSE stream or a poll joins as: [`identity`] itself when it names
/// no `tab`, else one member of that identity per tab (as `presence_join`
/// makes them), at most `--max-subscriptions` of them, each named once.
/// Any bad tab refuses the whole request, so nothing is joined.
pub(crate) fn tab_members(
    ctx: &Ctx,
    grant: &Grant,
    client: Option<&str>,
    info: Option<&str>,
    tabs: &[String],
) -> Result<Vec<(ClientId, Info)>, ProtocolError> {
    let who = identity(ctx, grant, client, info)?;
    if tabs.is_empty() {
        return Ok(who.into_iter().collect());
    }
    let Some((id, info)) = who else {
        return Err(ProtocolError::new(
            ErrorCode::BadRequest,
            "`tab` needs a `client` id (or a token with a `sub`) to join as",
        ));
    };
    let limit = ctx.cfg.max_subscriptions;
    if tabs.len() > limit {
        return Err(ProtocolError::new(
            ErrorCode::RateLimited,
            format!("at most {limit} tabs per request, got {}", tabs.len()),
        ));
    }
    let mut out: Vec<(ClientId, Info)> = Vec::with_capacity(tabs.len());
    for tab in tabs {
        let member = id.with_tab(tab)?;
        if out.iter().any(|(m, _)| m == &member) {
            return Err(ProtocolError::new(
                ErrorCode::BadRequest,
                format!("tab {tab:?} is named twice"),
            ));
        }
        out.push((member, info.clone()));
    }
    Ok(out)
}

/// A presence event as a WebSocket frame / WebTransport line.
pub(crate) fn op_frame(channel: &ChannelName, event: &PresenceEvent) -> Bytes {
    match event {
        PresenceEvent::Snapshot(members) => {
            protocol::presence_frame(channel, &members_json(members))
        }
        PresenceEvent::Change(c) => {
            protocol::presence_change_frame(c.kind(), channel, &c.member().json())
        }
    }
}

/// A presence event as a Server-Sent Event: `presence`, `join` or
/// `leave`, with no `id:` line, so `Last-Event-ID` keeps pointing at the
/// last message.
pub(crate) fn sse_event(event: &PresenceEvent) -> Bytes {
    Bytes::from(match event {
        PresenceEvent::Snapshot(members) => format!(
            "event: presence\ndata: {{\"members\":{}}}\n\n",
            members_json(members)
        ),
        PresenceEvent::Change(c) => {
            format!("event: {}\ndata: {}\n\n", c.kind(), c.member().json())
        }
    })
}

/// A refused join as an SSE event: the stream still delivers messages.
pub(crate) fn sse_error(e: &ProtocolError) -> Bytes {
    Bytes::from(format!(
        "event: presence_error\ndata: {}\n\n",
        error_json(e)
    ))
}

/// `{"code","message"}`.
pub(crate) fn error_json(e: &ProtocolError) -> String {
    serde_json::json!({ "code": e.code.as_str(), "message": e.message }).to_string()
}

/// The first member list a watcher gets: every node's with Redis (which
/// may overlap the events that follow; clients apply joins and leaves as
/// set operations), else exactly the list the events continue from.
pub(crate) async fn first_snapshot(
    ctx: &Ctx,
    local: Vec<Member>,
    channel: &ChannelName,
) -> Result<Vec<Member>, ProtocolError> {
    let presence = ctx.hub.presence();
    if presence.is_shared() {
        Ok(presence.members(channel).await?)
    } else {
        Ok(local)
    }
}

/// `GET /api/channels/{channel}/presence`: `{"channel","members":[…]}`.
pub(crate) async fn get(
    State(ctx): State<Ctx>,
    channel: Result<ChannelParam, ProtocolError>,
    granted: Result<Granted, ProtocolError>,
) -> Result<Response, ProtocolError> {
    let ChannelParam(channel) = channel?;
    granted?.0.can_read_presence(&channel)?;
    let members = ctx.hub.presence().members(&channel).await?;
    Ok(json_bytes(
        StatusCode::OK,
        format!(
            r#"{{"channel":"{channel}","members":{}}}"#,
            members_json(&members)
        ),
    ))
}
