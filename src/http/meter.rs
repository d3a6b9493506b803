//! Byte counting at the socket: [`MeteredIo`] wraps each accepted TCP
//! stream and [`Meter`] attributes what it reads and writes to a transport.
//!
//! HTTP/1.1 serves requests on a connection one after another, so the
//! connection's transport is whatever its current request is. Writes go to
//! the current transport directly. Reads are held as pending until the bytes'
//! owner is known: the headers of a request arrive before it is classified,
//! so pending bytes are flushed into a transport when a request begins, when
//! its response body is dropped, when a WebSocket frame has been read, and
//! when the connection closes.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::stats::{Stats, Transport};
use crate::transport::websocket::outlet::Outlet;

/// Per-connection attribution of bytes to a transport.
#[derive(Debug)]
pub struct Meter {
    stats: Arc<Stats>,
    /// Index into `Transport::ALL` of the current request's transport.
    current: AtomicU8,
    pending_in: AtomicU64,
    /// The connection's socket while it is open (TCP connections only).
    socket: Mutex<Option<RawFd>>,
    /// Set once the connection's WebSocket lends its socket.
    outlet: OnceLock<Arc<Outlet>>,
}

impl Meter {
    /// A meter for a new connection, attributing to `Api` until a request
    /// says otherwise.
    pub fn new(stats: Arc<Stats>) -> Self {
        Self {
            stats,
            current: AtomicU8::new(Transport::Api as u8),
            pending_in: AtomicU64::new(0),
            socket: Mutex::new(None),
            outlet: OnceLock::new(),
        }
    }

    /// The connection's [`Outlet`], made on first use; `None` when the
    /// connection is not a TCP socket or is already closed.
    pub fn outlet(&self) -> Option<&Arc<Outlet>> {
        // Under the socket lock, which the stream's drop also takes: an
        // outlet is never made for a descriptor already closed.
        let socket = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        let fd = (*socket)?;
        Some(self.outlet.get_or_init(|| {
            let stats = self.stats.of(Transport::WebSocket).clone();
            Arc::new(Outlet::new(fd, stats))
        }))
    }

    /// The socket is about to close: no direct write may follow.
    fn closing(&self) {
        let mut socket = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        *socket = None;
        if let Some(o) = self.outlet.get() {
            o.close();
        }
    }

    fn current(&self) -> Transport {
        Transport::ALL[self.current.load(Ordering::Relaxed) as usize]
    }

    /// A request of transport `t` begins on this connection: its header bytes
    /// (read while pending) and everything written from now on are `t`'s.
    pub fn begin(&self, t: Transport) {
        self.current.store(t as u8, Ordering::Relaxed);
        self.flush_in();
    }

    /// Attributes pending read bytes to the current transport.
    pub fn flush_in(&self) {
        let n = self.pending_in.swap(0, Ordering::Relaxed);
        if n > 0 {
            self.stats.of(self.current()).bytes_in.inc_by(n);
        }
    }

    fn read(&self, n: usize) {
        self.pending_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn wrote(&self, n: usize) {
        self.stats.of(self.current()).bytes_out.inc_by(n as u64);
    }
}

/// A stream whose traffic is counted by a [`Meter`], and whose writes fail
/// once they have been blocked for the send timeout.
#[derive(Debug)]
pub struct MeteredIo<S> {
    inner: S,
    meter: Arc<Meter>,
    /// How long a write may stay blocked; `None` = forever.
    send_timeout: Option<Duration>,
    /// Armed when a write first blocks, disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> MeteredIo<S> {
    /// Wraps `inner`, counting into `meter`.
    pub fn new(inner: S, meter: Arc<Meter>) -> Self {
        Self {
            inner,
            meter,
            send_timeout: None,
            stalled: None,
        }
    }

    /// The meter this stream counts into.
    pub fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    /// Fails writes that stay blocked for `limit`: a client that stops
    /// reading (an SSE subscriber, a big response) is cut off and counted
    /// as lagged instead of holding its connection forever.
    pub fn with_send_timeout(mut self, limit: Duration) -> Self {
        self.send_timeout = Some(limit);
        self
    }

    /// Runs a write while no direct writer can touch the socket. If the
    /// socket was lent ([`Outlet`]), the lease ends and whatever a direct
    /// write left unsent goes out first, so frames never interleave.
    fn exclusive<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: AsyncWrite + Unpin,
    {
        let Some(outlet) = self.meter.outlet.get() else {
            return write(&mut self.inner, cx);
        };
        let mut st = outlet.take();
        while let Some(left) = st.leftover() {
            match Pin::new(&mut self.inner).poll_write(cx, left) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.meter.wrote(n);
                    st.wrote_leftover(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        write(&mut self.inner, cx)
    }

    /// Tracks a write's outcome against the send timeout.
    fn check_stall<T>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Poll::Pending = res else {
            self.stalled = None;
            return res;
        };
        let Some(limit) = self.send_timeout else {
            return res;
        };
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            self.meter.stats.of(self.meter.current()).lagged.inc();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "send timeout: the client stopped reading",
            )));
        }
        res
    }
}

impl MeteredIo<TcpStream> {
    /// Wraps an accepted TCP connection, counting into a new meter; its
    /// socket can be lent to direct writers ([`Meter::outlet`]).
    pub fn tcp(stream: TcpStream, stats: Arc<Stats>) -> Self {
        let mut meter = Meter::new(stats);
        *meter
            .socket
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = Some(stream.as_raw_fd());
        Self::new(stream, Arc::new(meter))
    }

    /// The socket, for peeking at or waiting for what the client sends
    /// next without reading (and so counting) it.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    /// Waits until the client closes its side (`true`) or sends something,
    /// which stays unread (`false`).
    pub async fn hangup(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.inner.peek(&mut byte).await, Ok(0) | Err(_))
    }

    /// Waits for input from a client that has nothing more to say (an
    /// event stream's), counts it and discards it: `Ok(0)` when the client
    /// has closed its side, else how many bytes were discarded.
    pub async fn input(&self) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        loop {
            self.inner.readable().await?;
            match self.inner.try_read(&mut buf) {
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
        // Runs before `inner` (the socket) is dropped and closed.
        self.meter.closing();
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
        let res = self.exclusive(cx, |io, cx| Pin::new(io).poll_write(cx, buf));
        if let Poll::Ready(Ok(n)) = res {
            self.meter.wrote(n);
        }
        self.check_stall(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = self.exclusive(cx, |io, cx| Pin::new(io).poll_write_vectored(cx, bufs));
        if let Poll::Ready(Ok(n)) = res {
            self.meter.wrote(n);
        }
        self.check_stall(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = self.exclusive(cx, |io, cx| Pin::new(io).poll_flush(cx));
        self.check_stall(cx, res)
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
