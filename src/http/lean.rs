//! A lean HTTP/1.1 path for the subscribers' requests: event streams (`GET
//! /api/channels/{channel}/events`) and polls, short and long (`GET
//! /api/channels/{channel}/messages[?wait=…]`): the routes whose entry in
//! the route table (`super::routes`) says the lean path may serve them.
//!
//! hyper keeps two 8 KiB buffers for the whole life of every HTTP/1
//! connection (one for response heads, one for reading the next request or
//! noticing the client leave); for a waiting subscriber that is most of its
//! memory. A subscriber's request needs neither: it is one small head, and
//! while it waits the client has nothing to say. So when a connection opens
//! with a complete head of such a request, the head is parsed here,
//! answered by the same router as every other request, and the response is
//! written without hyper:
//!
//! - an event stream's head, then each body chunk as it comes, the end of
//!   the body marked by closing the connection (`connection: close`);
//! - a poll's whole response with its `content-length`, after which the
//!   connection stays open for the client's next request (HTTP/1.1
//!   keep-alive): another poll is served here again, anything else by
//!   hyper, which gets the bytes already read of it first ([`Rewind`]).
//!
//! Everything else — other routes, a head split over several packets or
//! larger than [`PEEK_BYTES`], a request with a body, a request in HTTP/1.0
//! (whose keep-alive rules differ, and which hyper answers in HTTP/1.0),
//! an event stream asked for on a kept-alive connection — goes to hyper, so the
//! paths differ only in framing (no chunked encoding here) and never in
//! what a request means.
//!
//! The client of an event stream has nothing more to say once it has asked;
//! any byte it sends afterwards (a pipelined request) ends the stream, so no
//! input is buffered. A long poll's client leaving ends its wait (its slot
//! is released at once); bytes it sends while waiting (a pipelined request)
//! are left on the socket for after the answer.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, Version, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::Service;

use super::routes::{self, Lean};
use crate::context::Ctx;
use crate::socket::Socket;
use crate::stats::Stats;
use crate::transport::meter::{Meter, MeteredIo};

/// Most bytes of a request head this path looks at; longer heads (large
/// tokens in headers) go to hyper.
pub(crate) const PEEK_BYTES: usize = 4096;
/// Most header lines this path parses; more go to hyper.
const MAX_HEADERS: usize = 32;
/// Most bytes of a whole response gathered into one write.
const COALESCE_BYTES: usize = 16 * 1024;

/// What a connection's next bytes are.
#[derive(Debug)]
pub(crate) enum Opening {
    /// A complete event-stream request.
    EventStream(Head),
    /// A complete short- or long-poll request.
    Poll(Head),
    /// Anything else: hyper serves the connection.
    Other,
    /// The client left or sent nothing within the header timeout.
    Gone,
}

/// A request head peeked at on the socket.
#[derive(Debug)]
pub(crate) struct Head {
    /// The request, without a body (boxed: it is large and short-lived).
    pub(crate) request: Box<Request>,
    /// Bytes of the head still unread on the socket.
    pub(crate) len: usize,
}

/// Looks at a connection's next bytes without consuming them, waiting at
/// most `header_timeout` for the first of them.
pub(crate) async fn sniff(stream: &TcpStream, header_timeout: Duration) -> Opening {
    let peek = async {
        // The buffer only once there is something to read: an idle
        // kept-alive connection waits here without it.
        stream.readable().await?;
        let mut buf = vec![0u8; PEEK_BYTES];
        let n = stream.peek(&mut buf).await?;
        buf.truncate(n);
        std::io::Result::Ok(buf)
    };
    match tokio::time::timeout(header_timeout, peek).await {
        Ok(Ok(buf)) if !buf.is_empty() => match parse_head(&buf) {
            Some((kind, request, len)) => {
                let head = Head {
                    request: Box::new(request),
                    len,
                };
                match kind {
                    Lean::EventStream => Opening::EventStream(head),
                    Lean::Poll => Opening::Poll(head),
                }
            }
            None => Opening::Other,
        },
        _ => Opening::Gone,
    }
}

/// Parses `bytes` as a complete, bodiless HTTP/1.1 `GET` head of a route
/// the route table lets this path serve (event streams and polls); `None`
/// for anything this path leaves to hyper.
pub(crate) fn parse_head(bytes: &[u8]) -> Option<(Lean, Request, usize)> {
    if !bytes.starts_with(routes::LEAN_PREFIX) {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = head.parse(bytes).ok()? else {
        return None;
    };
    let target = head.path?;
    // A fragment has no place in a request target (RFC 9112 3.2); the URI
    // parser would drop it and route on what precedes it, so the route
    // below would not be the router's (found by fuzzing).
    if target.contains('#') {
        return None;
    }
    let (path, _) = target.split_once('?').unwrap_or((target, ""));
    // HTTP/1.0 (other keep-alive rules, and hyper answers it in HTTP/1.0)
    // is hyper's.
    if head.version? != 1 {
        return None;
    }
    let version = Version::HTTP_11;
    let kind = routes::find(&Method::GET, path)?.lean?;
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(version)
        .body(Body::empty())
        .ok()?;
    let map = request.headers_mut();
    for h in head.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A body, or a protocol switch, is hyper's business.
        if ["content-length", "transfer-encoding", "upgrade", "expect"].contains(&name.as_str()) {
            return None;
        }
        map.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    Some((kind, request, head_len))
}

/// Serves the one request of a connection opened by an event-stream
/// request, then closes the connection.
///
/// Two steps, so that the caller can box the first: only the streaming
/// loop's state then stays in the connection's task for its whole life.
/// `answer` consumes the head, runs the router and writes the response
/// head; `pump` streams the body.
pub(crate) async fn pump(mut io: MeteredIo<Socket>, mut body: Body) {
    loop {
        let frame = tokio::select! {
            frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => frame,
            // Any input, or the client leaving, ends the stream.
            _ = io.input() => break,
        };
        let Some(Ok(frame)) = frame else { break };
        if let Ok(data) = frame.into_data()
            && io.write_all(&data).await.is_err()
        {
            return;
        }
    }
    let _ = io.shutdown().await;
}

/// Consumes the request head, runs the router and writes the response head
/// with whatever the body has ready; the stream and the body to [`pump`]
/// next are returned unless the client is gone.
pub(crate) async fn answer(
    mut io: MeteredIo<Socket>,
    head: Head,
    peer: SocketAddr,
    mut router: Router,
    stats: &Stats,
) -> Option<(MeteredIo<Socket>, Body)> {
    take(&mut io, head.len).await?;
    let mut request = super::unbox(head.request);
    super::prepare(&mut request, io.meter(), peer, stats);
    let Ok(response) = router.call(request).await;
    let (parts, mut body) = response.into_parts();
    let mut out = response_head(&parts, &body, false);
    // Send the head and the body's first chunk (the `retry:` line) together.
    if let Some(Some(Ok(frame))) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).now_or_never()
        && let Ok(data) = frame.into_data()
    {
        out.extend_from_slice(&data);
    }
    io.write_all(&out).await.ok()?;
    Some((io, body))
}

/// Serves polls on a connection, one after another, for as long as its
/// client keeps asking for them (HTTP/1.1 keep-alive).
///
/// Returns the connection when its next request is one for hyper, with
/// the bytes already read of it; `None` once the connection is closed: by
/// the client, by a request or response asking for it, by a next request
/// not starting within the header timeout, or by shutdown.
pub(crate) async fn polls(
    mut io: MeteredIo<Socket>,
    first: Head,
    peer: SocketAddr,
    router: &Router,
    ctx: &Ctx,
) -> Option<Rewind> {
    take(&mut io, first.len).await?;
    let mut request = first.request;
    // Bytes read past the current request's head (pipelined requests).
    let mut unread = BytesMut::new();
    loop {
        let close = asks_to_close(&request);
        let mut current = super::unbox(request);
        super::prepare(&mut current, io.meter(), peer, &ctx.stats);
        // Boxed: the handler's future is large and lives only while it waits.
        let call = Box::pin(router.clone().call(current));
        let response = wait_answer(&io, call, unread.is_empty()).await?;
        let (parts, body) = response.into_parts();
        let keep = !close && !ctx.shutdown.is_cancelled() && body.size_hint().exact().is_some();
        write_whole(&mut io, &parts, body, keep).await?;
        if !keep {
            let _ = io.shutdown().await;
            return None;
        }
        if unread.is_empty() && !Box::pin(next_head(&mut io, &mut unread, ctx)).await {
            return None;
        }
        match parse_head(&unread) {
            Some((Lean::Poll, next, len)) => {
                request = Box::new(next);
                if len == unread.len() {
                    // Not `split_to`: an empty split keeps the whole buffer
                    // allocated while the next poll waits.
                    unread = BytesMut::new();
                } else {
                    let _ = unread.split_to(len);
                }
            }
            _ => return Some(Rewind::new(io, unread.freeze())),
        }
    }
}

/// Reads the start of a kept-alive connection's next request into
/// `unread`; `false` if the connection is to close instead: the client
/// left, sent nothing within the header timeout, or the server shuts down.
///
/// A call of its own, boxed by the caller: its timer and reads would
/// otherwise size the poll loop's future, which a long poll holds while it
/// waits.
async fn next_head(io: &mut MeteredIo<Socket>, unread: &mut BytesMut, ctx: &Ctx) -> bool {
    // Read, not peek: one system call per request, as hyper does.
    let next = async {
        io.get_ref().readable().await?;
        unread.reserve(PEEK_BYTES);
        io.read_buf(unread).await
    };
    tokio::select! {
        () = ctx.shutdown.cancelled() => false,
        read = tokio::time::timeout(Duration::from_secs(ctx.cfg.header_timeout), next) => {
            matches!(read, Ok(Ok(n)) if n > 0)
        }
    }
}

/// Runs a poll's handler until it answers; `None` if the client
/// leaves first (dropping the handler ends its wait and releases its slot
/// at once). With `watch` false (a pipelined request is already read) the
/// client is not watched.
async fn wait_answer(
    io: &MeteredIo<Socket>,
    mut call: Pin<Box<impl Future<Output = Result<Response, Infallible>>>>,
    mut watch: bool,
) -> Option<Response> {
    loop {
        tokio::select! {
            // An answer ready at once costs no look at the socket.
            biased;
            res = &mut call => {
                let Ok(response) = res;
                return Some(response);
            }
            left = io.hangup(), if watch => {
                if left {
                    return None;
                }
                // A pipelined request: it waits on the socket.
                watch = false;
            }
        }
    }
}

/// A connection handed from this path to hyper, with the bytes this path
/// read but did not serve, which hyper reads first.
#[derive(Debug)]
pub(crate) struct Rewind {
    /// Boxed: usually there are none, and an upgraded WebSocket keeps this
    /// wrapper for its whole life.
    unread: Option<Box<Bytes>>,
    io: MeteredIo<Socket>,
}

impl Rewind {
    /// `io`, whose next bytes are `unread` and then the socket's.
    pub(crate) fn new(io: MeteredIo<Socket>, unread: Bytes) -> Self {
        let unread = (!unread.is_empty()).then(|| Box::new(unread));
        Self { unread, io }
    }

    /// The meter the connection counts into.
    pub(crate) fn meter(&self) -> &Arc<Meter> {
        self.io.meter()
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(unread) = self.unread.as_mut() else {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        };
        let n = unread.len().min(buf.remaining());
        buf.put_slice(&unread.split_to(n));
        if unread.is_empty() {
            self.unread = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Whether the client asked for the connection to close after this request.
pub(crate) fn asks_to_close(request: &Request) -> bool {
    request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// Reads (and so counts) the `len` bytes of a head that was only peeked at.
async fn take(io: &mut MeteredIo<Socket>, len: usize) -> Option<()> {
    let mut head = vec![0u8; len];
    io.read_exact(&mut head).await.ok()?;
    Some(())
}

/// Writes a whole response: its head, then its body, coalesced into as few
/// writes as fit [`COALESCE_BYTES`]. `None` if the client is gone or the
/// body failed (the connection must then close: its length was promised).
async fn write_whole(
    io: &mut MeteredIo<Socket>,
    parts: &axum::http::response::Parts,
    mut body: Body,
    keep_alive: bool,
) -> Option<()> {
    let mut out = response_head(parts, &body, keep_alive);
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(data) = frame.ok()?.into_data() else {
            continue; // trailers: HTTP/1.1 without chunking has no place for them
        };
        if out.len() + data.len() > COALESCE_BYTES {
            io.write_all(&out).await.ok()?;
            out.clear();
            io.write_all(&data).await.ok()?;
        } else {
            out.extend_from_slice(&data);
        }
    }
    io.write_all(&out).await.ok()
}

/// The status line and headers of `parts`, with the body's length when it
/// is known, and `connection: close` (the body then ends with the
/// connection) unless `keep_alive`.
fn response_head(parts: &axum::http::response::Parts, body: &Body, keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let status = parts.status;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ndate: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        httpdate::fmt_http_date(SystemTime::now()),
    );
    for (name, value) in &parts.headers {
        // Framing is this writer's business.
        if [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
        ]
        .contains(name)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(len) = body.size_hint().exact() {
        let _ = write!(out, "content-length: {len}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_complete_bodiless_heads_of_subscribers_requests() {
        let ok =
            b"GET /api/channels/a/events?since=3 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: e:2\r\n\r\n";
        let (kind, req, len) = parse_head(ok).expect("event stream");
        assert_eq!(kind, Lean::EventStream);
        assert_eq!(len, ok.len());
        assert_eq!(req.uri().query(), Some("since=3"));
        assert_eq!(req.headers()["last-event-id"], "e:2");
        let poll =
            b"GET /api/channels/a/messages?since=1&wait=30 HTTP/1.1\r\nConnection: close\r\n\r\n";
        let (kind, req, len) = parse_head(poll).expect("poll");
        assert_eq!(kind, Lean::Poll);
        assert_eq!(len, poll.len());
        assert!(asks_to_close(&req));
        assert!(parse_head(b"GET /api/channels/a/messages HTTP/1.1\r\n\r\n").is_some());
        let cases: [&[u8]; 10] = [
            b"GET /api/channels/a/#ml/a/messages?since=2 HTTP/1.1\r\n\r\n",
            b"GET /api/channels/a/info HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /api/channels/a/messages?wait=1 HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /api/channels/a/events HTTP/1.0\r\n\r\n",
            b"POST /api/channels/a/messages HTTP/1.1\r\nContent-Length: 1\r\n\r\n1",
            b"GET /api/channels/a/events HTTP/1.1\r\nHost: x\r\n",
            b"POST /api/channels/a/events HTTP/1.1\r\n\r\n",
            b"GET /api/channels/a/events HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
            b"GET /api/channels/a/events HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /api/channels/a/events HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ];
        for bytes in cases {
            assert!(
                parse_head(bytes).is_none(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
