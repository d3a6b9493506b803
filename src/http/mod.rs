//! The HTTP/1.1 listener: accepts TCP connections, meters their bytes, and
//! serves the axum router from [`api::router`] on each with hyper.
//!
//! Entry point: [`run`]. It owns the accept loop, the connection limit, the
//! header read timeout and graceful shutdown of every connection, because
//! `axum::serve` exposes none of them. A connection that opens with an
//! event stream or a poll is served by [`lean`] instead of hyper.

pub(crate) mod api;
pub(crate) mod h3;
pub(crate) mod https;
pub(crate) mod lean;
pub(crate) mod routes;
pub(crate) mod stream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1::Builder as Http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::Service;
use tracing::{Instrument, debug, debug_span, warn};

use crate::context::Ctx;
use crate::socket::Socket;
use crate::stats::{Stats, Transport};
use crate::transport::extract::Peer;
use crate::transport::fanout::Fanouts;
use crate::transport::meter::{Meter, MeteredIo};

/// The next accepted connection of either TCP listener, or `None` once
/// shutdown begins. A failed accept (EMFILE and friends) backs off briefly
/// instead of spinning, and is not the caller's concern.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Runs the accept loop until shutdown, then lets every connection finish
/// its current response.
pub(crate) async fn run(listener: TcpListener, ctx: Ctx, fanouts: Fanouts) {
    let router = api::router(ctx.clone(), fanouts);
    let permits = Arc::new(Semaphore::new(ctx.cfg.max_connections));
    let mut builder = Http1::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(ctx.cfg.header_timeout))
        .max_buf_size(64 * 1024);
    // Shared: every connection's state would otherwise hold a copy.
    let http = Arc::new(builder);
    while let Some((stream, peer)) = accept(&listener, &ctx.shutdown).await {
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ctx.tasks.spawn(refuse(stream, ctx.clone(), Refusal::Full));
            continue;
        };
        let Some(per_ip) = ctx.limits.connections.acquire(peer.ip()) else {
            ctx.tasks.spawn(refuse(stream, ctx.clone(), Refusal::PerIp));
            continue;
        };
        // The slot is held by `serve` itself: wrapping its future in another
        // async block would store it twice in the task (rustc keeps both
        // the captured and the awaited copy), doubling every connection.
        let conn = serve(Box::new(Accepted {
            stream,
            peer,
            router: router.clone(),
            http: http.clone(),
            ctx: ctx.clone(),
            slot: (permit, per_ip),
        }));
        // Debug level: entered on every poll of the connection (once per
        // delivery for a busy subscriber), and nothing logged inside it at
        // the default level needs it.
        ctx.tasks.spawn(conn.instrument(debug_span!("http", %peer)));
    }
}

/// An accepted connection and what serving it takes.
struct Accepted<S> {
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    http: Arc<Http1>,
    ctx: Ctx,
    /// Held under the connection limits until the connection ends.
    slot: S,
}

/// Serves one connection until it closes or shutdown completes it.
///
/// One boxed argument: an `async fn` keeps its by-value arguments twice in
/// its state (as passed and as moved into the body), and that state is
/// what every open connection holds. Unboxed with [`unbox`], so that the
/// box is freed at once.
async fn serve(conn: Box<Accepted<impl Send>>) {
    let Accepted {
        stream,
        peer,
        router,
        http,
        ctx,
        slot: _slot,
    } = unbox(conn);
    let opening = if ctx.cfg.lean_http {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            o = Box::pin(lean::sniff(&stream, Duration::from_secs(ctx.cfg.header_timeout))) => o,
        }
    } else {
        lean::Opening::Other
    };
    let io = MeteredIo::tcp(stream, ctx.stats.clone()).with_send_timeout(ctx.cfg.send_timeout());
    match opening {
        lean::Opening::Gone => {}
        lean::Opening::EventStream(head) => {
            let stats = ctx.stats.clone();
            drop((ctx, http));
            let answer = lean::answer(io, head, peer, router, &stats);
            if let Some((io, body)) = Box::pin(answer).await {
                // Boxed too: inline, the pump's state would size every
                // connection's task (WebSockets', polls') for this branch.
                Box::pin(lean::pump(io, body)).await;
            }
        }
        // Boxed, like hyper's connection state below: unboxed, either would
        // size every connection's task. One call each, so that no value
        // handed between the steps is kept in this future's state.
        lean::Opening::Poll(head) => {
            Box::pin(serve_polls(io, head, peer, router, http, ctx)).await;
        }
        lean::Opening::Other => {
            let io = lean::Rewind::new(io, bytes::Bytes::new());
            Box::pin(serve_hyper(io, peer, router, http, ctx)).await;
        }
    }
}

/// Serves a connection opened by a poll: on the lean path while it polls,
/// then with hyper.
async fn serve_polls(
    io: MeteredIo<Socket>,
    head: lean::Head,
    peer: SocketAddr,
    router: Router,
    http: Arc<Http1>,
    ctx: Ctx,
) {
    if let Some(io) = lean::polls(io, head, peer, &router, &ctx).await {
        // Boxed: hyper's state would size this future, held while polls wait.
        Box::pin(serve_hyper(io, peer, router, http, ctx)).await;
    }
}

/// Serves a connection with hyper: from its first request unless that is
/// an event stream or a poll, else from its first request of another kind
/// after polls.
async fn serve_hyper(
    io: lean::Rewind,
    peer: SocketAddr,
    router: Router,
    http: Arc<Http1>,
    ctx: Ctx,
) {
    let meter = io.meter().clone();
    let shutdown = ctx.shutdown.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        prepare(&mut req, &meter, peer, &ctx.stats);
        let meter = meter.clone();
        let mut router = router.clone();
        async move {
            let resp = router.call(req.map(Body::new)).await?;
            Ok::<_, Infallible>(resp.map(|b| Body::new(MeteredBody { inner: b, meter })))
        }
    });
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        debug!(error = %e, "connection ended with an error");
    }
}

/// Starts a request on its connection: attributes the connection's bytes
/// to the request's transport, counts it, and hands handlers the meter and
/// the client's address.
fn prepare<B>(req: &mut Request<B>, meter: &Arc<Meter>, peer: SocketAddr, stats: &Stats) {
    let t = classify(req);
    meter.begin(t);
    stats.of(t).requests.inc();
    req.extensions_mut().insert(meter.clone());
    req.extensions_mut().insert(Peer(peer));
}

/// Which transport a request belongs to, for counting: its route's rung
/// in the route table; a request no route answers (a 405) is API traffic.
fn classify<B>(req: &Request<B>) -> Transport {
    routes::find(req.method(), req.uri().path())
        .map_or(Transport::Api, |route| route.rung.of(req.uri().query()))
}

/// Moves a value out of its box and frees the box. Moving out of a `Box`
/// in place (`let x = *boxed;`) keeps its allocation until the variable
/// goes out of scope, which in a connection's future is its whole life.
#[expect(clippy::boxed_local, reason = "taking the box is the point")]
pub(crate) fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Why a connection is refused before it is served.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// `--max-connections` reached.
    Full,
    /// `--max-connections-per-ip` reached for this client.
    PerIp,
}

/// Answers a connection over a limit with a JSON error and closes it.
async fn refuse(mut stream: TcpStream, ctx: Ctx, why: Refusal) {
    let (status, body) = match why {
        Refusal::Full => (
            "503 Service Unavailable",
            r#"{"error":{"code":"unavailable","message":"too many connections"}}"#,
        ),
        Refusal::PerIp => (
            "429 Too Many Requests",
            r#"{"error":{"code":"rate_limited","message":"too many connections from this address"}}"#,
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        // Read the request head first (bounded), so the client is not
        // answered before it has finished asking, which HTTP clients treat
        // as a broken connection.
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(2), write)
        .await
        .is_ok()
    {
        ctx.stats
            .of(Transport::Api)
            .bytes_out
            .inc_by(resp.len() as u64);
    }
}

/// A response body that settles its connection's read bytes when dropped,
/// i.e. once the response is complete.
struct MeteredBody {
    inner: Body,
    meter: Arc<Meter>,
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.meter.flush_in();
    }
}

impl http_body::Body for MeteredBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hub::{Hub, HubConfig};

    /// Every HTTP connection's task holds `serve`'s future for its whole
    /// life, so its size is memory per connection of every TCP rung. With
    /// every path's state boxed and hyper's builder shared it is 328 bytes
    /// (rustc 1.95); an event stream's pump inline made it 752, and the
    /// poll path inline 960. The bound leaves room for other compilers,
    /// not for those again.
    #[tokio::test]
    async fn a_connections_future_stays_small() {
        let ctx = Ctx::new(
            Config::default(),
            Hub::new(HubConfig::default()),
            Arc::new(Stats::new()),
            "127.0.0.1:1".parse().unwrap(),
            crate::auth::Auth::disabled(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let conn = serve(Box::new(Accepted {
            stream,
            peer,
            router: api::router(ctx.clone(), Fanouts::default()),
            http: Arc::new(Http1::new()),
            ctx,
            slot: (),
        }));
        let size = std::mem::size_of_val(&conn);
        assert!(size <= 400, "{size} bytes");
    }
}
