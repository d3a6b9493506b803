//! What the HTTP rungs' handlers share: axum extractors for the parts of a
//! request every rung reads the same way, and the JSON answers they give.
//!
//! It sits below the adapters and the listener both: [`crate::http`] puts
//! [`Peer`] on each request and serves the routes, the adapters read it,
//! and neither reaches into the other for these.
//!
//! - [`ChannelParam`]: the `{channel}` path segment, parsed;
//! - [`Granted`]: what the request's token allows;
//! - [`Peer`]: the client's address (absent on requests not from a socket);
//! - [`ensure_enabled`], [`json_bytes`], and [`ProtocolError`] as a response.
//!
//! The extractors reject with a [`ProtocolError`], so a handler that takes
//! `Result<ChannelParam, ProtocolError>` decides itself which check answers
//! first (the contract's error precedence), instead of the order of its
//! arguments deciding it.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequestParts, OptionalFromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::{Grant, token_from};
use crate::context::Ctx;
use crate::hub::ChannelName;
use crate::protocol::{self, ErrorCode, ProtocolError};
use crate::stats::Transport;

/// The `{channel}` path segment as a valid [`ChannelName`]. A segment that
/// is not even UTF-8 after percent-decoding is a `bad_channel` too (not
/// axum's plain-text 400).
#[derive(Debug, Clone)]
pub(crate) struct ChannelParam(pub ChannelName);

impl<S: Send + Sync> FromRequestParts<S> for ChannelParam {
    type Rejection = ProtocolError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ProtocolError> {
        let Path(raw) = <Path<String> as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ProtocolError::new(ErrorCode::BadChannel, e.body_text()))?;
        Ok(Self(ChannelName::parse(&raw)?))
    }
}

/// What the request's token (`Authorization` header or `token` query
/// parameter) allows; everything when auth is off.
#[derive(Debug, Clone)]
pub(crate) struct Granted(pub Grant);

impl<S> FromRequestParts<S> for Granted
where
    Ctx: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ProtocolError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ProtocolError> {
        let ctx = Ctx::from_ref(state);
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = token_from(authorization, parts.uri.query());
        Ok(Self(ctx.auth.check(token.as_deref())?))
    }
}

/// The client's address, put on each request by the listener that accepted
/// its connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

impl<S: Send + Sync> OptionalFromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().copied())
    }
}

/// Refuses a request for a transport switched off with `--disable`.
pub(crate) fn ensure_enabled(ctx: &Ctx, t: Transport) -> Result<(), ProtocolError> {
    if ctx.cfg.enabled(t) {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::NotFound,
            format!("the {t} transport is disabled on this server"),
        ))
    }
}

/// A JSON response from pre-encoded bytes.
pub(crate) fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.into(),
    )
        .into_response()
}

impl IntoResponse for ProtocolError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            protocol::error_body(&self),
        )
            .into_response()
    }
}
