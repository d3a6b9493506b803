//! The socket under every HTTP connection: [`MeteredIo`] wraps each
//! accepted TCP stream and does three jobs for it, one per module part:
//!
//! - byte attribution (here): [`Meter`] attributes what the stream reads
//!   and writes to a transport;
//! - the send timeout (`timeout`): a write blocked too long fails;
//! - the lease hand-over ([`handover`]): a socket lent to a direct writer
//!   comes back before the stream writes to it.
//!
//! It sits with the adapters, not the listener: the listener wraps its
//! connections in it, and the WebSocket adapter lends the socket through it.
//!
//! HTTP/1.1 serves requests on a connection one after another, so the
//! connection's transport is whatever its current request is. Writes go to
//! the current transport directly. Reads are held as pending until the bytes'
//! owner is known: the headers of a request arrive before it is classified,
//! so pending bytes are flushed into a transport when a request begins, when
//! its response body is dropped, when a WebSocket frame has been read, and
//! when the connection closes.

pub(crate) mod handover;
mod timeout;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use self::handover::Handover;
use self::timeout::SendTimeout;
use crate::socket::Socket;
use crate::stats::{Stats, Transport};

/// Per-connection attribution of bytes to a transport, and the
/// connection's number (which poll answers name).
#[derive(Debug)]
pub(crate) struct Meter {
    stats: Arc<Stats>,
    /// Index into `Transport::ALL` of the current request's transport.
    current: AtomicU8,
    pending_in: AtomicU64,
    /// The connection's socket as it can be lent (TCP connections only).
    handover: Handover,
    /// Set for HTTP/2 connections, whose streams are counted one by one
    /// (`crate::http::https`): the socket's bytes then belong to no single
    /// transport.
    per_stream: AtomicBool,
    /// The connection's number in accept order ([`Stats::connections`]).
    number: u64,
}

impl Meter {
    /// A meter for a new connection, attributing to `Api` until a request
    /// says otherwise.
    pub(crate) fn new(stats: Arc<Stats>) -> Self {
        Self {
            number: stats.connections.next(),
            stats,
            current: AtomicU8::new(Transport::Api as u8),
            pending_in: AtomicU64::new(0),
            handover: Handover::default(),
            per_stream: AtomicBool::new(false),
        }
    }

    /// From now on this connection's bytes are counted per stream by its
    /// HTTP/2 layer, not here; what was counted so far (the TLS handshake)
    /// stays where it went.
    pub(crate) fn count_per_stream(&self) {
        self.flush_in();
        self.per_stream.store(true, Ordering::Relaxed);
    }

    /// The connection's number in accept order.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// The connection's socket, to lend to a direct writer.
    pub(crate) fn handover(&self) -> &Handover {
        &self.handover
    }

    fn current(&self) -> Transport {
        Transport::ALL[self.current.load(Ordering::Relaxed) as usize]
    }

    /// A request of transport `t` begins on this connection: its header bytes
    /// (read while pending) and everything written from now on are `t`'s.
    pub(crate) fn begin(&self, t: Transport) {
        self.current.store(t as u8, Ordering::Relaxed);
        self.flush_in();
    }

    /// Attributes pending read bytes to the current transport.
    pub(crate) fn flush_in(&self) {
        let n = self.pending_in.swap(0, Ordering::Relaxed);
        if n > 0 {
            self.stats.of(self.current()).bytes_in.inc_by(n);
        }
    }

    fn read(&self, n: usize) {
        if self.per_stream.load(Ordering::Relaxed) {
            return;
        }
        self.pending_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn wrote(&self, n: usize) {
        if self.per_stream.load(Ordering::Relaxed) {
            return;
        }
        self.stats.of(self.current()).bytes_out.inc_by(n as u64);
    }
}

/// A stream whose traffic is counted by a [`Meter`], and whose writes fail
/// once they have been blocked for the send timeout.
#[derive(Debug)]
pub(crate) struct MeteredIo<S> {
    inner: S,
    meter: Arc<Meter>,
    send_timeout: SendTimeout,
}

impl<S> MeteredIo<S> {
    /// Wraps `inner`, counting into `meter`.
    pub(crate) fn new(inner: S, meter: Arc<Meter>) -> Self {
        Self {
            inner,
            meter,
            send_timeout: SendTimeout::default(),
        }
    }

    /// The meter this stream counts into.
    pub(crate) fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    /// Fails writes that stay blocked for `limit`: a client that stops
    /// reading (an SSE subscriber, a big response) is cut off and counted
    /// as lagged instead of holding its connection forever.
    pub(crate) fn with_send_timeout(mut self, limit: Duration) -> Self {
        self.send_timeout = SendTimeout::new(limit);
        self
    }

    /// Runs a write while no direct writer can touch the socket (see
    /// [`Handover::exclusive`]), failing it once it has been blocked for
    /// the send timeout.
    fn write<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: AsyncWrite + Unpin,
    {
        let meter = &self.meter;
        let res = meter
            .handover
            .exclusive(&mut self.inner, cx, |n| meter.wrote(n), write);
        self.send_timeout.check(cx, res, || {
            meter.stats.of(meter.current()).lagged.inc();
        })
    }
}

impl MeteredIo<Socket> {
    /// Wraps an accepted TCP connection, counting into a new meter; its
    /// socket can be lent to direct writers ([`Meter::handover`]).
    pub(crate) fn tcp(stream: TcpStream, stats: Arc<Stats>) -> Self {
        let socket = Socket::new(stream);
        let mut meter = Meter::new(stats);
        meter.handover = Handover::open(socket.clone());
        Self::new(socket, Arc::new(meter))
    }

    /// The socket, for peeking at or waiting for what the client sends
    /// next without reading (and so counting) it.
    pub(crate) fn get_ref(&self) -> &TcpStream {
        self.inner.stream()
    }

    /// Waits until the client closes its side (`true`) or sends something,
    /// which stays unread (`false`).
    pub(crate) async fn hangup(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.get_ref().peek(&mut byte).await, Ok(0) | Err(_))
    }

    /// Waits for input from a client that has nothing more to say (an
    /// event stream's), counts it and discards it: `Ok(0)` when the client
    /// has closed its side, else how many bytes were discarded.
    pub(crate) async fn input(&self) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        loop {
            self.get_ref().readable().await?;
            match self.get_ref().try_read(&mut buf) {
                Ok(n) => {
                    self.meter.read(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S> Drop for MeteredIo<S> {
    fn drop(&mut self) {
        // Runs before `inner` (the connection's hold on the socket) goes.
        self.meter.handover.closing();
        self.meter.flush_in();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MeteredIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.meter.read(n);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MeteredIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = self.write(cx, |io, cx| Pin::new(io).poll_write(cx, buf));
        if let Poll::Ready(Ok(n)) = res {
            self.meter.wrote(n);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = self.write(cx, |io, cx| Pin::new(io).poll_write_vectored(cx, bufs));
        if let Poll::Ready(Ok(n)) = res {
            self.meter.wrote(n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write(cx, |io, cx| Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_wait_for_their_request_and_writes_follow_it() {
        let stats = Arc::new(Stats::new());
        let meter = Arc::new(Meter::new(stats.clone()));
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = MeteredIo::new(a, meter.clone());
        b.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 18];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(
            stats.of(Transport::Api).bytes_in.get(),
            0,
            "held until classified"
        );
        meter.begin(Transport::Sse);
        assert_eq!(stats.of(Transport::Sse).bytes_in.get(), 18);
        io.write_all(b"hello").await.unwrap();
        assert_eq!(stats.of(Transport::Sse).bytes_out.get(), 5);
        b.write_all(b"xyz").await.unwrap();
        io.read_exact(&mut buf[..3]).await.unwrap();
        drop(io);
        assert_eq!(
            stats.of(Transport::Sse).bytes_in.get(),
            21,
            "flushed at close"
        );
    }
}
