//! The lease hand-over: a connection's socket lent to a direct writer (a
//! WebSocket's [`crate::transport::websocket::outlet::Outlet`]) comes back
//! before the stream writes to it, so the two never interleave.
//!
//! The stream knows the writer only through [`Borrower`], which the adapter
//! that lends the socket implements; the meter holds it, and the stream
//! asks it for the socket back on every write (`Handover::exclusive`).

use std::fmt::Debug;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;

use crate::socket::Socket;

/// What a stream needs from the direct writer its socket is lent to.
pub(crate) trait Borrower: Debug + Send + Sync {
    /// The socket is about to close: no direct write may happen once this
    /// returns.
    fn close(&self);

    /// Ends any lease and runs `write` while no direct write can happen.
    /// `write` is given the unsent end of a partial direct write, which it
    /// must send before anything else and trims as it goes.
    fn exclusive(&self, write: &mut dyn FnMut(&mut Option<Bytes>));
}

/// A connection's socket as it can be lent: a share of it while the
/// connection is open (TCP connections only), and the one borrower it was
/// lent to, if any.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    socket: Mutex<Option<Socket>>,
    borrower: OnceLock<Arc<dyn Borrower>>,
}

impl Handover {
    /// `socket`, which can be lent.
    pub(super) fn open(socket: Socket) -> Self {
        Self {
            socket: Mutex::new(Some(socket)),
            borrower: OnceLock::new(),
        }
    }

    /// Lends the socket to the borrower `make` builds from a share of it.
    /// `None` when the connection is not a TCP socket, is already closing,
    /// or has already been lent.
    pub(crate) fn lend<B: Borrower + 'static>(
        &self,
        make: impl FnOnce(Socket) -> Arc<B>,
    ) -> Option<Arc<B>> {
        // Under the socket lock, which the stream's drop also takes: a
        // borrower is never made for a connection already closing.
        let socket = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        let socket = socket.as_ref()?;
        if self.borrower.get().is_some() {
            return None;
        }
        let made = make(socket.clone());
        self.borrower.set(made.clone()).ok()?;
        Some(made)
    }

    /// The connection is closing: no direct write may follow, and the
    /// socket closes once its last holder lets go.
    pub(super) fn closing(&self) {
        let mut socket = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        socket.take();
        if let Some(b) = self.borrower.get() {
            b.close();
        }
    }

    /// Runs a write to `io` while no direct writer can touch the socket. If
    /// the socket was lent, the lease ends and whatever a direct write left
    /// unsent goes out first (counted by `wrote`), so frames never
    /// interleave.
    pub(super) fn exclusive<S, T>(
        &self,
        io: &mut S,
        cx: &mut Context<'_>,
        wrote: impl Fn(usize),
        write: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: AsyncWrite + Unpin,
    {
        let Some(borrower) = self.borrower.get() else {
            return write(io, cx);
        };
        let mut write = Some(write);
        let mut res = Poll::Pending;
        borrower.exclusive(&mut |leftover| {
            res = match write_leftover(io, cx, &wrote, leftover) {
                Poll::Ready(Ok(())) => match write.take() {
                    Some(write) => write(io, cx),
                    None => Poll::Pending,
                },
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        });
        res
    }
}

/// Writes the leftover of a partial direct write, trimming it as it goes.
fn write_leftover<S: AsyncWrite + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    wrote: impl Fn(usize),
    leftover: &mut Option<Bytes>,
) -> Poll<io::Result<()>> {
    while let Some(left) = leftover.as_mut().filter(|b| !b.is_empty()) {
        match Pin::new(&mut *io).poll_write(cx, left) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                wrote(n);
                let _ = left.split_to(n.min(left.len()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    *leftover = None;
    Poll::Ready(Ok(()))
}
