//! The HTTP/3 listener: the same router as [`super::run`] over `h3` +
//! `h3-quinn`, on a quinn endpoint of its own bound to the UDP port with
//! the `--https` port's number.
//!
//! Entry points: [`Listener::bind`] then [`Listener::run`].
//!
//! Why its own endpoint: wtransport answers every request that is not a
//! WebTransport CONNECT with a reset, so the router cannot share its
//! endpoint. WebTransport stays where it is (`--h3`); browsers open a
//! connection per WebTransport session anyway, so a second port costs them
//! nothing.
//!
//! Responses stream frame by frame: each body frame the router yields
//! (one SSE event, one long-poll answer) is handed to quinn as one DATA
//! frame at once. Limits are the TCP listeners': connections in all and
//! per address, `--header-timeout` for a request's headers, header size,
//! request bodies through the same handlers (a publish over the limit is
//! 413), and `--send-timeout` for a reader that stops reading. On shutdown
//! every connection gets a GOAWAY, its requests finish, and the endpoint
//! closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::Response;
use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http_body::Body as _;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::{Instrument, debug, debug_span, warn};
use wtransport::quinn;

use super::stream::{DATA_FRAME_OVERHEAD, header_bytes};
use super::{api, classify};
use crate::config::Config;
use crate::context::Ctx;
use crate::stats::TransportStats;
use crate::tls::{ALPN_H3, CertStore, TlsError};
use crate::transport::extract::Peer;
use crate::transport::fanout::Fanouts;

/// Requests one connection may have open at once (as HTTP/2's limit).
const MAX_STREAMS: u32 = super::https::MAX_STREAMS;
/// Largest request header section (RFC 9114, section 4.2.2:
/// `SETTINGS_MAX_FIELD_SECTION_SIZE`).
const MAX_HEADER_BYTES: u64 = super::https::MAX_HEADER_BYTES as u64;
/// Longest a QUIC handshake plus HTTP/3 settings exchange may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for peers to acknowledge the endpoint's close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

//= https://www.rfc-editor.org/rfc/rfc9114#section-8.1
//# H3_NO_ERROR (0x0100):  No error.  This is used when the connection or
//# stream needs to be closed, but there is no error to signal.
const H3_NO_ERROR: u32 = 0x0100;

/// Why a response was not completed.
#[derive(Debug, thiserror::Error)]
enum ResponseError {
    /// The stream failed (the client reset it, the connection closed).
    #[error(transparent)]
    Stream(#[from] h3::error::StreamError),
    /// The client made no room for a frame within `--send-timeout`.
    #[error("the client stopped reading")]
    Stalled,
}

/// Why the HTTP/3 endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum H3Error {
    /// The UDP socket could not be bound.
    #[error("cannot listen for HTTP/3 on udp {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// quinn refused the TLS configuration for QUIC.
    #[error("cannot configure QUIC TLS: {0}")]
    Crypto(String),
}

/// A bound, not yet running HTTP/3 endpoint.
#[derive(Debug)]
pub(crate) struct Listener {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
}

impl Listener {
    /// Binds UDP `addr` with the certificate of `certs` (rotations reach
    /// new connections) and the QUIC settings of the WebTransport endpoint.
    pub(crate) fn bind(cfg: &Config, addr: SocketAddr, certs: &CertStore) -> Result<Self, H3Error> {
        let bind_err = |source| H3Error::Bind { addr, source };
        let tls = certs.server_config(&[ALPN_H3])?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| H3Error::Crypto(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS));
        // The client's control and two QPACK streams, and room for grease.
        transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(8));
        transport.keep_alive_interval(Some(Duration::from_secs(cfg.wt_keep_alive)));
        transport.max_idle_timeout(
            quinn::IdleTimeout::try_from(Duration::from_secs(cfg.wt_idle_timeout)).ok(),
        );
        server.transport_config(Arc::new(transport));
        let socket = crate::quic::udp_socket(addr, cfg.wt_udp_buffer).map_err(bind_err)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let addr = endpoint.local_addr().map_err(bind_err)?;
        Ok(Self { endpoint, addr })
    }

    /// The bound UDP address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts connections until shutdown; then every connection sends
    /// GOAWAY and finishes its requests, and the endpoint closes.
    pub(crate) async fn run(self, ctx: Ctx, fanouts: Fanouts) {
        let router = api::router(ctx.clone(), fanouts);
        let permits = Arc::new(Semaphore::new(ctx.cfg.max_connections));
        let conns = TaskTracker::new();
        loop {
            let incoming = tokio::select! {
                () = ctx.shutdown.cancelled() => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let peer = incoming.remote_address();
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                debug!(%peer, "connection limit reached; refused");
                incoming.refuse();
                continue;
            };
            let Some(per_ip) = ctx.limits.connections.acquire(peer.ip()) else {
                debug!(%peer, "connections per address limit reached; refused");
                incoming.refuse();
                continue;
            };
            let serve = serve_connection(incoming, ctx.clone(), router.clone());
            conns.spawn(
                async move {
                    serve.await;
                    drop((permit, per_ip));
                }
                .instrument(debug_span!("h3", %peer)),
            );
        }
        conns.close();
        let limit = Duration::from_secs(ctx.cfg.shutdown_timeout);
        if tokio::time::timeout(limit, conns.wait()).await.is_err() {
            warn!(
                open = conns.len(),
                "http/3 connections did not finish in time"
            );
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(H3_NO_ERROR),
            b"server shutting down",
        );
        if tokio::time::timeout(DRAIN_TIMEOUT, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            warn!("http/3 endpoint did not drain in time");
        }
    }
}

/// Serves one connection: its handshake, then a task per request.
async fn serve_connection(incoming: quinn::Incoming, ctx: Ctx, router: Router) {
    let peer = incoming.remote_address();
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => return debug!(%error, "quic handshake failed"),
        Err(_) => return debug!("quic handshake timed out"),
    };
    let mut builder = h3::server::builder();
    builder.max_field_section_size(MAX_HEADER_BYTES);
    let built = builder.build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()));
    let mut h3 = match tokio::time::timeout(HANDSHAKE_TIMEOUT, built).await {
        Ok(Ok(h3)) => h3,
        Ok(Err(error)) => return debug!(%error, "http/3 setup failed"),
        Err(_) => return debug!("http/3 setup timed out"),
    };
    let requests = TaskTracker::new();
    loop {
        let resolver = tokio::select! {
            () = ctx.shutdown.cancelled() => {
                // GOAWAY naming the last request taken; those finish below.
                if let Err(error) = h3.shutdown(0).await {
                    debug!(%error, "goaway failed");
                }
                break;
            }
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => resolver,
                Ok(None) => break,
                Err(error) => {
                    debug!(%error, "http/3 connection ended");
                    break;
                }
            },
        };
        let (ctx, router) = (ctx.clone(), router.clone());
        requests.spawn(async move {
            let limit = Duration::from_secs(ctx.cfg.header_timeout);
            match tokio::time::timeout(limit, resolver.resolve_request()).await {
                Ok(Ok((req, stream))) => serve_request(req, stream, peer, ctx, router).await,
                Ok(Err(error)) => debug!(%error, "bad http/3 request"),
                Err(_) => debug!("http/3 request headers timed out"),
            }
        });
    }
    requests.close();
    let limit = Duration::from_secs(ctx.cfg.shutdown_timeout);
    let _ = tokio::time::timeout(limit, requests.wait()).await;
    conn.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"");
}

type Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Answers one request with the router and streams the response body.
async fn serve_request(
    req: Request<()>,
    stream: Stream,
    peer: SocketAddr,
    ctx: Ctx,
    mut router: Router,
) {
    let counters = ctx.stats.of(classify(&req)).clone();
    counters.requests.inc();
    counters.bytes_in.inc_by(header_bytes(req.headers()));
    let (mut send, recv) = stream.split();
    let mut req = req.map(|()| request_body(recv, counters.clone()));
    req.extensions_mut().insert(Peer(peer));
    let Ok(resp) = router.call(req).await;
    let (parts, mut body) = resp.into_parts();
    counters.bytes_out.inc_by(header_bytes(&parts.headers));
    let timeout = ctx.cfg.send_timeout();
    let sent = async {
        send.send_response(Response::from_parts(parts, ())).await?;
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let Ok(frame) = frame else {
                // The body failed midway (e.g. a stream ended by shutdown
                // mid-write): end the response without trailers.
                break;
            };
            match frame.into_data() {
                Ok(data) => {
                    let n = data.len() as u64 + DATA_FRAME_OVERHEAD;
                    send_bounded(&mut send, data, timeout, &counters).await?;
                    counters.bytes_out.inc_by(n);
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.send_trailers(trailers).await?;
                        return Ok(());
                    }
                }
            }
        }
        send.finish().await?;
        Ok::<_, ResponseError>(())
    };
    if let Err(error) = sent.await {
        debug!(%error, "http/3 response not completed");
    }
}

/// Sends one DATA frame, failing the stream when the client has not made
/// room for it within `limit` (a reader that stopped reading).
async fn send_bounded(
    send: &mut RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    data: Bytes,
    limit: Duration,
    counters: &TransportStats,
) -> Result<(), ResponseError> {
    match tokio::time::timeout(limit, send.send_data(data)).await {
        Ok(res) => Ok(res?),
        Err(_) => {
            counters.lagged.inc();
            send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            Err(ResponseError::Stalled)
        }
    }
}

/// The request body as the router reads it, counted as it arrives.
fn request_body(
    recv: RequestStream<h3_quinn::RecvStream, Bytes>,
    counters: TransportStats,
) -> Body {
    let chunks = futures_util::stream::unfold(Some(recv), move |state| {
        let counters = counters.clone();
        async move {
            let mut recv = state?;
            match recv.recv_data().await {
                Ok(Some(mut buf)) => {
                    let chunk = buf.copy_to_bytes(buf.remaining());
                    counters
                        .bytes_in
                        .inc_by(chunk.len() as u64 + DATA_FRAME_OVERHEAD);
                    Some((Ok(chunk), Some(recv)))
                }
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        }
    });
    Body::from_stream(chunks)
}
