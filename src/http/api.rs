//! The router every HTTP connection is served with, built from the route
//! table (`super::routes`), and the small API handlers (publish, info,
//! stats, metrics, the lab's switch).
//! The rungs themselves live in `crate::transport`.

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodFilter, MethodRouter};
use futures_util::StreamExt;
use serde::Serialize;
use std::time::Duration;

use tower_http::services::ServeDir;

use super::routes::{Endpoint, Methods, ROUTES, Route};
use crate::context::Ctx;
use crate::name::IdempotencyKey;
use crate::protocol::{Data, ErrorCode, ProtocolError};
use crate::stats::Transport;
use crate::transport::extract::{ChannelParam, Granted, Peer, json_bytes};
use crate::transport::fanout::Fanouts;
use crate::transport::{polling, presence, sse, websocket};

/// The router's state: the shared state, and the fan-outs the WebSocket
/// adapter lends its sockets to. Handlers take either part
/// (`State<Ctx>`, `State<Fanouts>`).
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// The shared state.
    pub(crate) ctx: Ctx,
    /// The channels' fan-outs.
    pub(crate) fanouts: Fanouts,
}

impl FromRef<AppState> for Ctx {
    fn from_ref(app: &AppState) -> Self {
        app.ctx.clone()
    }
}

impl FromRef<AppState> for Fanouts {
    fn from_ref(app: &AppState) -> Self {
        app.fanouts.clone()
    }
}

/// Builds the router for the HTTP listeners from the route table
/// (`routes::ROUTES`): one `route` per entry, its handler chosen by the
/// entry's endpoint.
pub(crate) fn router(ctx: Ctx, fanouts: Fanouts) -> Router {
    let web = ServeDir::new(&ctx.cfg.web_dir).append_index_html_on_directories(true);
    ROUTES
        .iter()
        .fold(Router::new(), |router, route| {
            router.route(route.path, method_router(route, &web))
        })
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(AppState { ctx, fanouts })
}

/// The handler of one entry, for its methods.
fn method_router(route: &Route, web: &ServeDir) -> MethodRouter<AppState> {
    let m = route.methods;
    match route.endpoint {
        Endpoint::Info => on(m, info),
        Endpoint::Stats => on(m, stats),
        Endpoint::LabSwitch => on(m, lab_switch),
        Endpoint::LabWire => on(m, lab_wire),
        Endpoint::Metrics => on(m, metrics),
        Endpoint::Poll => on(m, polling::get),
        Endpoint::Publish => on(m, publish),
        Endpoint::Events => on(m, sse::get),
        Endpoint::Presence => on(m, presence::get),
        Endpoint::WebSocket => on(m, websocket::upgrade),
        Endpoint::NoSuchApi => on(m, not_found),
        Endpoint::Page => match m {
            Methods::Any => routing::any_service(web.clone()),
            Methods::Only(ms) => routing::on_service(filter(ms), web.clone()),
        },
    }
}

/// `handler` for `methods`.
fn on<H, T>(methods: Methods, handler: H) -> MethodRouter<AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    match methods {
        Methods::Any => routing::any(handler),
        Methods::Only(ms) => routing::on(filter(ms), handler),
    }
}

/// The router's filter for `methods`; the table only names standard ones
/// (the route table's tests build this router).
fn filter(methods: &[Method]) -> MethodFilter {
    methods
        .iter()
        .map(|m| MethodFilter::try_from(m.clone()).expect("a standard method"))
        .reduce(MethodFilter::or)
        .expect("a route has a method")
}

async fn not_found() -> ProtocolError {
    ProtocolError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

async fn publish(
    State(ctx): State<Ctx>,
    channel: Result<ChannelParam, ProtocolError>,
    granted: Result<Granted, ProtocolError>,
    peer: Option<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ProtocolError> {
    let ChannelParam(channel) = channel?;
    granted?.0.can_publish(&channel)?;
    if let Some(Peer(addr)) = peer
        && !ctx.limits.http_publish_allowed(addr.ip())
    {
        return Err(ProtocolError::new(
            ErrorCode::RateLimited,
            format!(
                "more than {} publishes per second from this address",
                ctx.cfg.publish_rate
            ),
        ));
    }
    let key = idempotency_key(&headers)?;
    let body = read_body(&ctx, body).await?;
    let data = Data::parse(&body, ctx.cfg.max_message_bytes())?;
    let published = ctx.hub.publish_with(&channel, &data, key.as_ref()).await?;
    #[derive(Serialize)]
    struct Ack<'a> {
        channel: &'a str,
        epoch: &'a str,
        offset: u64,
    }
    let ack = Ack {
        channel: channel.as_str(),
        epoch: published.epoch.as_str(),
        offset: published.offset,
    };
    Ok(json_bytes(
        StatusCode::CREATED,
        serde_json::to_vec(&ack).unwrap_or_default(),
    ))
}

/// The `Idempotency-Key` header, if sent: a retry with the same key within
/// the window gets the first publish's ack and appends nothing.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ProtocolError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| {
        ProtocolError::new(
            ErrorCode::BadRequest,
            "idempotency key may only contain A-Z a-z 0-9 - _ . : ~ + / =",
        )
    })?;
    Ok(Some(IdempotencyKey::parse(v)?))
}

/// Reads a request body of at most twice the message limit (pretty-printed
/// JSON compacts to within it), within 3 × `--header-timeout` in all, so a
/// body trickled a byte at a time is cut off rather than holding a
/// connection and a buffer.
async fn read_body(ctx: &Ctx, body: Body) -> Result<Bytes, ProtocolError> {
    let limit = ctx.cfg.max_message_bytes() * 2 + 1024;
    let too_large = || ProtocolError::new(ErrorCode::TooLarge, "request body is too large");
    let total = Duration::from_secs(ctx.cfg.header_timeout.max(1) * 3);
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ProtocolError::new(ErrorCode::BadRequest, format!("reading the body: {e}"))
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(total, read).await.map_err(|_| {
        ProtocolError::new(
            ErrorCode::BadRequest,
            format!("request body not received within {} s", total.as_secs()),
        )
    })?
}

async fn info(State(ctx): State<Ctx>) -> Response {
    let transports: Vec<&str> = Transport::RUNGS
        .into_iter()
        .filter(|t| ctx.cfg.enabled(*t))
        .filter(|t| *t != Transport::WebTransport || ctx.webtransport().is_some())
        .map(Transport::name)
        .collect();
    let wt = ctx
        .webtransport()
        .map(|w| serde_json::json!({ "url": w.url, "cert_sha256": w.cert_sha256 }));
    let tls = ctx.tls_listeners();
    let listeners = serde_json::json!({
        "http": format!("http://{}", ctx.http_addr),
        "https": tls.map(|l| format!("https://{}", l.https)),
        "h3": tls.map(|l| format!("https://{}", l.h3)),
        "webtransport": ctx.webtransport().map(|w| w.url),
    });
    let mut body = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "transports": transports,
        "webtransport": wt,
        "heartbeat_ms": ctx.cfg.heartbeat().map(|h| h.as_millis() as u64),
        "listeners": listeners,
    });
    if let Some(lab) = ctx.lab() {
        body["lab"] = crate::lab::info(lab, ctx.http_addr);
    }
    json_bytes(StatusCode::OK, body.to_string())
}

/// `POST /api/lab/switch`: every connection through the lab moves to
/// another network at once (TCP cut, UDP from a new port).
async fn lab_switch(State(ctx): State<Ctx>) -> Response {
    match ctx.lab() {
        Some(lab) => {
            lab.switch_network();
            let generation = lab.network_switch().generation();
            json_bytes(
                StatusCode::OK,
                serde_json::json!({ "switched": generation }).to_string(),
            )
        }
        None => ProtocolError::new(
            ErrorCode::NotFound,
            "the network lab is not running (start with --lab)",
        )
        .into_response(),
    }
}

/// `GET /api/lab/wire`: the packets that crossed `lossy-link`'s wire since
/// the lab started and how many of them the kernel dropped, so a run can
/// show its loss was real.
async fn lab_wire(State(ctx): State<Ctx>) -> Response {
    // The kernel's drop counters come from `nft`, a process: off the
    // async workers.
    let counted =
        tokio::task::spawn_blocking(move || ctx.lab().and_then(|lab| lab.wire_counters())).await;
    match counted {
        Ok(Some(Ok(c))) => json_bytes(
            StatusCode::OK,
            serde_json::json!({
                "tcp": c.tcp, "tcp_dropped": c.tcp_dropped,
                "udp": c.udp, "udp_dropped": c.udp_dropped,
                "overflow": c.overflow,
            })
            .to_string(),
        ),
        Ok(None) => ProtocolError::new(
            ErrorCode::NotFound,
            "no lossy-link wire here (start with --lab inside `ladder-lab netns -- …`)",
        )
        .into_response(),
        Ok(Some(Err(e))) => {
            ProtocolError::new(ErrorCode::Unavailable, format!("cannot read the wire: {e}"))
                .into_response()
        }
        Err(_) => {
            ProtocolError::new(ErrorCode::Unavailable, "cannot read the wire").into_response()
        }
    }
}

async fn stats(State(ctx): State<Ctx>) -> Response {
    let mut snap = ctx.stats.snapshot();
    snap["channels"] = ctx.hub.channel_count().into();
    json_bytes(StatusCode::OK, snap.to_string())
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.stats.prometheus(),
    )
        .into_response()
}
