//! A lean HTTP/1.1 path for connections that open with an event-stream
//! request (`GET /api/channels/{channel}/events`).
//!
//! hyper keeps two 8 KiB buffers for the whole life of every HTTP/1
//! connection (one for response heads, one for reading the next request or
//! noticing the client leave); for an idle Server-Sent Events subscriber that
//! is most of its memory. An event stream needs neither: its request is one
//! small head and its response never ends. So when a new connection's first
//! bytes are a complete event-stream request head, the head is parsed here,
//! answered by the same router as every other request, and the response is
//! written without hyper: the head, then each body chunk as it comes, the
//! end of the body marked by closing the connection (`connection: close`).
//!
//! Everything else — other routes, a head split over several packets or
//! larger than [`PEEK_BYTES`], a request with a body, an event stream asked
//! for on a kept-alive connection — goes to hyper untouched, so the two paths
//! differ only in framing (no chunked encoding here) and never in what a
//! request means.
//!
//! The client of an event stream has nothing more to say once it has asked;
//! any byte it sends afterwards (a pipelined request) ends the stream, so no
//! input is buffered.

use std::future::poll_fn;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, Version};
use futures_util::FutureExt;
use http_body::Body as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::Service;

use super::meter::MeteredIo;
use crate::stats::Stats;

/// Most bytes of a request head this path looks at; longer heads (large
/// tokens in headers) go to hyper.
pub const PEEK_BYTES: usize = 4096;
/// Most header lines this path parses; more go to hyper.
const MAX_HEADERS: usize = 32;
const ROUTE_PREFIX: &[u8] = b"GET /api/channels/";

/// What a new connection's first bytes are.
#[derive(Debug)]
pub enum Opening {
    /// A complete event-stream request, `head_len` bytes long.
    EventStream {
        /// The request, without a body (boxed: it is large and short-lived).
        request: Box<Request>,
        /// Bytes of the head still unread on the socket.
        head_len: usize,
    },
    /// Anything else: hyper serves the connection.
    Other,
    /// The client left or sent nothing within the header timeout.
    Gone,
}

/// Looks at a new connection's first bytes without consuming them.
pub async fn sniff(stream: &TcpStream, header_timeout: Duration) -> Opening {
    let mut buf = vec![0u8; PEEK_BYTES];
    match tokio::time::timeout(header_timeout, stream.peek(&mut buf)).await {
        Ok(Ok(0) | Err(_)) | Err(_) => Opening::Gone,
        Ok(Ok(n)) => parse_head(&buf[..n]).map_or(Opening::Other, |(request, head_len)| {
            Opening::EventStream {
                request: Box::new(request),
                head_len,
            }
        }),
    }
}

/// Parses `bytes` as a complete, bodiless `GET` head whose path ends in
/// `/events`; `None` for anything this path leaves to hyper.
fn parse_head(bytes: &[u8]) -> Option<(Request, usize)> {
    if !bytes.starts_with(ROUTE_PREFIX) {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = head.parse(bytes).ok()? else {
        return None;
    };
    let target = head.path?;
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !path.ends_with("/events") {
        return None;
    }
    let version = match head.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
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
    Some((request, head_len))
}

/// Serves the one request of a connection opened by an event-stream
/// request, then closes the connection.
///
/// Two steps, so that the caller can box the first: only the streaming
/// loop's state then stays in the connection's task for its whole life.
/// `answer` consumes the head, runs the router and writes the response
/// head; `pump` streams the body.
pub async fn pump(mut io: MeteredIo<TcpStream>, mut body: Body) {
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
pub async fn answer(
    mut io: MeteredIo<TcpStream>,
    request: Box<Request>,
    head_len: usize,
    peer: SocketAddr,
    mut router: Router,
    stats: &Stats,
) -> Option<(MeteredIo<TcpStream>, Body)> {
    // The head was only peeked; consume it so it is counted and gone.
    let mut head = vec![0u8; head_len];
    io.read_exact(&mut head).await.ok()?;
    drop(head);
    let mut request = *request;
    super::prepare(&mut request, io.meter(), peer, stats);
    let Ok(response) = router.call(request).await;
    let (parts, mut body) = response.into_parts();
    let mut out = response_head(&parts, &body);
    // Send the head and the body's first chunk (the `retry:` line) together.
    if let Some(Some(Ok(frame))) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).now_or_never()
        && let Ok(data) = frame.into_data()
    {
        out.extend_from_slice(&data);
    }
    io.write_all(&out).await.ok()?;
    Some((io, body))
}

/// The status line and headers of `parts`, for a body delimited by the end
/// of the connection unless its length is known.
fn response_head(parts: &axum::http::response::Parts, body: &Body) -> Vec<u8> {
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
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(len) = body.size_hint().exact() {
        let _ = write!(out, "content-length: {len}\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_complete_bodiless_event_stream_heads() {
        let ok =
            b"GET /api/channels/a/events?since=3 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: e:2\r\n\r\n";
        let (req, len) = parse_head(ok).expect("event stream");
        assert_eq!(len, ok.len());
        assert_eq!(req.uri().query(), Some("since=3"));
        assert_eq!(req.headers()["last-event-id"], "e:2");
        let cases: [&[u8]; 6] = [
            b"GET /api/channels/a/messages HTTP/1.1\r\nHost: x\r\n\r\n",
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
