//! The TLS listener (`--https`): the same router as [`super::run`] over
//! HTTP/1.1 and HTTP/2 (chosen by ALPN), with the server's certificate
//! (`CertStore`, so a rotated development certificate reaches new
//! connections).
//!
//! Entry point: [`run`]. It keeps the plain listener's limits (connections
//! in all and per address, header timeout, request bodies through the same
//! handlers) and adds HTTP/2's own:
//!
//! - streams per connection and header list size are bounded;
//! - a flood of streams the client resets at once (CVE-2023-44487, "rapid
//!   reset") ends in a GOAWAY from hyper's `h2` once the resets it has not
//!   yet accepted pass [`MAX_PENDING_RESETS`];
//! - a client that stops reading is dropped when its keep-alive PING goes
//!   unanswered for `--send-timeout`.
//!
//! Metering: an HTTP/1.1 connection is counted at the socket like the
//! plain listener's (requests follow one another). An HTTP/2 connection
//! carries many transports at once, so its bytes are counted per stream
//! instead (`stream`): body bytes plus the headers' uncompressed size.
//! The lean HTTP/1.1 path and its socket lending stay on the plain
//! listener: over TLS a direct write to the socket would bypass the
//! encryption.
//!
//! Every response carries `Alt-Svc: h3=":PORT"` when the HTTP/3 endpoint
//! runs, so a client that trusts the certificate may move to HTTP/3.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::Service;
use tracing::{Instrument, debug, debug_span};

use super::stream::{Counted, DATA_FRAME_OVERHEAD, header_bytes};
use super::{MeteredBody, api, classify, prepare};
use crate::context::Ctx;
use crate::tls::ALPN_H2;
use crate::transport::extract::Peer;
use crate::transport::fanout::Fanouts;
use crate::transport::meter::{Meter, MeteredIo};
use crate::transport::websocket::PerStream;

/// Streams one HTTP/2 connection may have open at once: a page's SSE
/// panels and polls with room to spare, as hyper's own default.
pub(crate) const MAX_STREAMS: u32 = 200;
/// Largest request header block (uncompressed); a bigger one is refused
/// with 431 (HTTP/1.1) or a stream reset (HTTP/2).
pub(crate) const MAX_HEADER_BYTES: u32 = 16 * 1024;
/// Streams the client may reset before the server has accepted them;
/// beyond it the connection ends with GOAWAY `ENHANCE_YOUR_CALM`.
pub(crate) const MAX_PENDING_RESETS: usize = 20;

/// What the TLS listener needs besides the shared state.
#[derive(Clone)]
pub(crate) struct Https {
    /// The handshake, with the server's certificate and ALPN `h2`,
    /// `http/1.1`.
    pub(crate) acceptor: TlsAcceptor,
    /// `h3=":PORT"` when HTTP/3 is served on the same port number.
    pub(crate) alt_svc: Option<HeaderValue>,
}

/// Runs the accept loop until shutdown, then sends every HTTP/2 connection
/// a GOAWAY and lets every connection finish its current responses.
pub(crate) async fn run(listener: TcpListener, ctx: Ctx, fanouts: Fanouts, https: Https) {
    let router = api::router(ctx.clone(), fanouts);
    let permits = Arc::new(Semaphore::new(ctx.cfg.max_connections));
    let http = Arc::new(builder(&ctx));
    while let Some((stream, peer)) = super::accept(&listener, &ctx.shutdown).await {
        let _ = stream.set_nodelay(true);
        // Over a limit the connection is closed before the handshake: an
        // answer would cost a handshake, which is what the limit saves.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "connection limit reached; closed");
            continue;
        };
        let Some(per_ip) = ctx.limits.connections.acquire(peer.ip()) else {
            debug!(%peer, "connections per address limit reached; closed");
            continue;
        };
        let conn = Conn {
            stream,
            peer,
            router: router.clone(),
            http: http.clone(),
            https: https.clone(),
            ctx: ctx.clone(),
        };
        let serve = async move {
            conn.serve().await;
            drop((permit, per_ip));
        };
        ctx.tasks
            .spawn(Box::pin(serve).instrument(debug_span!("https", %peer)));
    }
}

/// hyper's connection settings for both versions.
fn builder(ctx: &Ctx) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(ctx.cfg.header_timeout))
        .max_buf_size(64 * 1024);
    b.http2()
        .timer(TokioTimer::new())
        // RFC 8441: WebSocket over an HTTP/2 stream (extended CONNECT).
        .enable_connect_protocol()
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .keep_alive_interval(ctx.cfg.heartbeat())
        .keep_alive_timeout(ctx.cfg.send_timeout());
    b
}

/// One accepted TCP connection.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    http: Arc<Builder<TokioExecutor>>,
    https: Https,
    ctx: Ctx,
}

impl Conn {
    /// Completes the handshake within `--header-timeout`, then serves
    /// requests until the connection or the server ends.
    async fn serve(self) {
        let Self {
            stream,
            peer,
            router,
            http,
            https,
            ctx,
        } = self;
        let meter = Arc::new(Meter::new(ctx.stats.clone()));
        let io = MeteredIo::new(stream, meter.clone()).with_send_timeout(ctx.cfg.send_timeout());
        let limit = Duration::from_secs(ctx.cfg.header_timeout);
        let handshake = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            h = tokio::time::timeout(limit, https.acceptor.accept(io)) => h,
        };
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            // Not TLS, a certificate the client refused, a wrong version:
            // the client's problem; only this connection ends.
            Ok(Err(error)) => return debug!(%error, "tls handshake failed"),
            Err(_) => return debug!("tls handshake timed out"),
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
        if h2 {
            meter.count_per_stream();
        }
        let alt_svc = https.alt_svc;
        let stats = ctx.stats.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let mut router = router.clone();
            let alt_svc = alt_svc.clone();
            let counted = if h2 {
                let t = classify(&req);
                let counters = stats.of(t).clone();
                counters.requests.inc();
                counters.bytes_in.inc_by(header_bytes(req.headers()));
                req.extensions_mut().insert(Peer(peer));
                // A WebSocket over this stream (extended CONNECT) escapes
                // the body counting below: it counts its own frames.
                req.extensions_mut().insert(PerStream {
                    data_frame_overhead: DATA_FRAME_OVERHEAD,
                });
                Some(counters)
            } else {
                prepare(&mut req, &meter, peer, &stats);
                None
            };
            let meter = meter.clone();
            async move {
                let req = match &counted {
                    Some(c) => req.map(|b| Body::new(Counted::incoming(b, c.clone()))),
                    None => req.map(Body::new),
                };
                let mut resp = router.call(req).await?;
                if let Some(v) = alt_svc {
                    resp.headers_mut().entry(header::ALT_SVC).or_insert(v);
                }
                let resp = match counted {
                    Some(c) => {
                        c.bytes_out.inc_by(header_bytes(resp.headers()));
                        resp.map(|b| Body::new(Counted::outgoing(b, c)))
                    }
                    None => resp.map(|b| Body::new(MeteredBody { inner: b, meter })),
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = http.serve_connection_with_upgrades(TokioIo::new(tls), service);
        tokio::pin!(conn);
        let res = tokio::select! {
            res = conn.as_mut() => res,
            () = ctx.shutdown.cancelled() => {
                // HTTP/2: GOAWAY, then the open streams finish (SSE streams
                // end on the same token). HTTP/1.1: close after the current
                // response.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(error) = res {
            debug!(%error, h2, "tls connection ended with an error");
        }
    }
}
