//! A connection's TCP socket, owned jointly by the connection (which reads
//! and writes it through hyper, the lean path or the WebSocket layer) and by
//! the WebSocket fan-out while the socket is lent to it
//! ([`crate::transport::websocket::outlet`]).
//!
//! Reference-counted, so the descriptor stays open for as long as either
//! holder has it: a direct write from the fan-out can never reach a closed
//! (or reused) descriptor, whatever order the two let go in. Both sides
//! only ever make non-blocking attempts (`try_read`, `try_write`) and wait
//! through tokio's readiness, so neither blocks the other; which of them may
//! write at a given moment is the lease's business, not the socket's.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An accepted TCP connection's socket; cloning is shallow.
#[derive(Debug, Clone)]
pub(crate) struct Socket(Arc<TcpStream>);

impl Socket {
    /// Takes ownership of `stream`.
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self(Arc::new(stream))
    }

    /// The stream, for peeking, readiness and non-blocking writes.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.0
    }

    /// Shuts down one or both directions (the descriptor stays open until
    /// the last holder lets go).
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        socket2::SockRef::from(&*self.0).shutdown(how)
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // A read into the unfilled part; zeroed first only where the
            // caller had not initialised it.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: tokio has cleared it; wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                res => return Poll::Ready(res),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                res => return Poll::Ready(res),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Reads and writes go through either clone, and the descriptor stays
    /// open until the last clone is dropped.
    #[tokio::test]
    async fn either_holder_keeps_the_socket_open() {
        tokio::time::timeout(std::time::Duration::from_secs(10), run())
            .await
            .expect("loopback I/O finishes");
    }

    async fn run() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut own = Socket::new(accepted);
        let lent = own.clone();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        own.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        drop(own);
        // The lent clone still writes to the live connection.
        lent.stream().writable().await.unwrap();
        assert_eq!(lent.stream().try_write(b"pong").unwrap(), 4);
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(lent);
        // The last holder gone, the connection closes.
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
    }
}
