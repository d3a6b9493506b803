//! A fan-out round's sends in one system call (cargo feature `uring`): the
//! non-blocking sends to many lent sockets are queued on an `io_uring` and
//! submitted together, which saves a kernel entry and exit per socket
//! (measured with `ladder-bench fanout`, see BENCHMARKS.md).
//!
//! One ring per worker thread, used only inside one synchronous call, which
//! never waits: the sends carry `MSG_DONTWAIT`, so a full socket completes
//! at once with `EAGAIN`. The kernel reads the frames from a copy the ring
//! owns, and the sockets stay open because the fan-out holds a share of each
//! ([`Socket`]). Should a send still be in flight when the call returns (the
//! kernel queued it and could not cancel it at once; not seen in practice),
//! its socket is shut down and the ring, its copy and those sockets go to a
//! thread of their own that waits for the kernel to let go of them; this
//! thread makes a new ring. Where `io_uring` is unavailable (an old kernel,
//! a seccomp profile that refuses it) the sends are made one by one.

use std::cell::RefCell;
use std::io;
use std::mem::ManuallyDrop;
use std::net::Shutdown;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, types};
use tracing::{info, warn};

use crate::socket::Socket;

/// Most sends submitted at once (the caller holds that many outlet locks
/// for the duration of one submission).
pub(crate) const CHUNK: usize = 64;
/// Room for a chunk and as many cancellations.
const ENTRIES: u32 = 2 * CHUNK as u32;
/// `user_data` of cancellation requests (sends use their index).
const CANCEL: u64 = u64::MAX;
/// How long a stranded ring's thread waits for its sends, in seconds.
const DRAIN_SECS: u64 = 30;

/// A ring and the bytes its sends read.
struct Ring {
    ring: IoUring,
    /// The frames of the current round, copied: the kernel reads them from
    /// here, so the buffer goes wherever the ring goes.
    frames: Vec<u8>,
}

enum State {
    Untried,
    Ready(Box<Ring>),
    Unavailable,
}

thread_local! {
    static RING: RefCell<State> = const { RefCell::new(State::Untried) };
}

/// Sends each `(socket, bytes)` without blocking and puts the outcomes in
/// `out`, in order. At most [`CHUNK`] at once. Every `bytes` is a suffix of
/// `frames` (the batch); with `use_ring` false, or no ring to be had, each
/// is a plain non-blocking write.
pub(crate) fn send_all(
    frames: &[u8],
    sends: &[(&Socket, &[u8])],
    use_ring: bool,
    out: &mut Vec<io::Result<usize>>,
) {
    debug_assert!(sends.len() <= CHUNK);
    out.clear();
    let done = use_ring
        && RING.with_borrow_mut(|state| {
            if let State::Untried = state {
                *state = match IoUring::new(ENTRIES) {
                    Ok(ring) => State::Ready(Box::new(Ring {
                        ring,
                        frames: Vec::new(),
                    })),
                    Err(e) => {
                        info!(error = %e, "io_uring unavailable; fan-out sends one by one");
                        State::Unavailable
                    }
                };
            }
            let State::Ready(ring) = state else {
                return false;
            };
            match submit(ring, frames, sends, out) {
                Outcome::Done => true,
                Outcome::NotSubmitted(e) => {
                    // Nothing reached the kernel; the queued entries go with
                    // the ring, and this thread sends one by one from now.
                    warn!(error = %e, "io_uring submission failed; fan-out sends one by one");
                    *state = State::Unavailable;
                    false
                }
                Outcome::Stranded(sockets) => {
                    if let State::Ready(ring) = std::mem::replace(state, State::Untried) {
                        drain_elsewhere(ring, sockets);
                    }
                    true
                }
            }
        });
    if !done {
        out.clear();
        out.extend(sends.iter().map(|(s, b)| s.stream().try_write(b)));
    }
}

/// How a round through the ring ended.
enum Outcome {
    /// Every send has its result in `out`.
    Done,
    /// The kernel took none of them: send them another way.
    NotSubmitted(io::Error),
    /// Some sends are still in flight: their sockets (shut down, their
    /// sends failed in `out`) must stay open until the ring is drained.
    Stranded(Vec<Socket>),
}

fn submit(
    r: &mut Ring,
    frames: &[u8],
    sends: &[(&Socket, &[u8])],
    out: &mut Vec<io::Result<usize>>,
) -> Outcome {
    // The round's frames into the ring's own buffer, from the earliest
    // any socket still lacks.
    let suffix = |b: &[u8]| {
        let at = frames.len().checked_sub(b.len())?;
        std::ptr::eq(frames[at..].as_ptr(), b.as_ptr()).then_some(at)
    };
    let mut from = frames.len();
    for &(_, b) in sends {
        match suffix(b) {
            Some(at) => from = from.min(at),
            None => return Outcome::NotSubmitted(io::Error::other("a send outside the batch")),
        }
    }
    r.frames.clear();
    r.frames.extend_from_slice(&frames[from..]);
    out.resize_with(sends.len(), || Err(io::ErrorKind::Other.into()));
    let mut pending = vec![true; sends.len()];
    {
        let mut sq = r.ring.submission();
        for (i, &(socket, bytes)) in sends.iter().enumerate() {
            let copy = &r.frames[frames.len() - bytes.len() - from..];
            let fd = types::Fd(socket.stream().as_raw_fd());
            // MSG_DONTWAIT: a full socket completes with EAGAIN at once
            // rather than waiting for room.
            let e = opcode::Send::new(fd, copy.as_ptr(), copy.len() as u32)
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(i as u64);
            // SAFETY: the buffer (`r.frames`) and the descriptors (held
            // open by `sends`' sockets) outlive the operation: this function
            // reaps every completion before it returns, or hands the ring
            // with its buffer and a share of each socket still in flight to
            // `drain_elsewhere` (or the ring is dropped with them
            // unsubmitted). The queue is empty on entry and holds
            // `ENTRIES` ≥ 2 × `CHUNK`.
            if unsafe { sq.push(&e) }.is_err() {
                return Outcome::NotSubmitted(io::Error::other("submission queue full"));
            }
        }
    }
    let mut left = sends.len();
    // An error means no entry was consumed (the kernel reports a partial
    // submission as a count, and the rest go with the next enter below).
    if let Err(e) = r.ring.submit() {
        return Outcome::NotSubmitted(e);
    }
    reap(&mut r.ring, out, &mut pending, &mut left);
    if left > 0 {
        // Not done inline (the kernel went asynchronous for some): cancel
        // them. A send still waiting for room is cancelled at once; one
        // already under way is not, and is not waited for.
        {
            let mut sq = r.ring.submission();
            for (i, _) in pending.iter().enumerate().filter(|(_, p)| **p) {
                let e = opcode::AsyncCancel::new(i as u64).build().user_data(CANCEL);
                // SAFETY: a cancellation refers to no memory.
                let _ = unsafe { sq.push(&e) };
            }
        }
        let _ = r.ring.submit();
        reap(&mut r.ring, out, &mut pending, &mut left);
    }
    if left == 0 {
        return Outcome::Done;
    }
    let mut stranded = Vec::with_capacity(left);
    for (i, &(socket, _)) in sends.iter().enumerate() {
        if pending[i] {
            // What reached the client is unknown, so the connection cannot
            // go on; shut down, the socket also ends the send sooner.
            let _ = socket.shutdown(Shutdown::Both);
            out[i] = Err(io::Error::other("io_uring send still in flight"));
            stranded.push(socket.clone());
        }
    }
    Outcome::Stranded(stranded)
}

fn reap(ring: &mut IoUring, out: &mut [io::Result<usize>], pending: &mut [bool], left: &mut usize) {
    for cqe in ring.completion() {
        let i = cqe.user_data();
        if i == CANCEL {
            continue;
        }
        let i = i as usize;
        if let Some(p) = pending.get_mut(i).filter(|p| **p) {
            *p = false;
            *left -= 1;
            let r = cqe.result();
            out[i] = if r < 0 {
                Err(io::Error::from_raw_os_error(-r))
            } else {
                Ok(r as usize)
            };
        }
    }
}

/// Waits, on a thread of its own (never a runtime worker), until the kernel
/// has completed every send still in `ring`, then frees the ring, its buffer
/// and `sockets`. If the sends do not complete within [`DRAIN_SECS`], or no
/// thread can be had, all of it is leaked rather than freed under the
/// kernel.
fn drain_elsewhere(ring: Box<Ring>, sockets: Vec<Socket>) {
    warn!(
        sends = sockets.len(),
        "io_uring sends still in flight; their connections are closed"
    );
    // Not dropped if the thread cannot be spawned (the closure is dropped
    // then, with what it holds).
    let parcel = ManuallyDrop::new((ring, sockets));
    let spawned = std::thread::Builder::new()
        .name("uring-drain".into())
        .spawn(move || {
            let (mut ring, sockets) = ManuallyDrop::into_inner(parcel);
            let mut left = sockets.len();
            let wait = types::Timespec::new().sec(1);
            for _ in 0..DRAIN_SECS {
                let args = types::SubmitArgs::new().timespec(&wait);
                let _ = ring.ring.submitter().submit_with_args(1, &args);
                left -= ring
                    .ring
                    .completion()
                    .filter(|c| c.user_data() != CANCEL)
                    .count()
                    .min(left);
                if left == 0 {
                    return;
                }
            }
            warn!("io_uring sends never completed; their ring is leaked");
            std::mem::forget((ring, sockets));
        });
    if let Err(e) = spawned {
        warn!(error = %e, "no thread to drain an io_uring; it is leaked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// Through the ring, each socket gets its own suffix of the batch.
    #[tokio::test]
    async fn each_socket_gets_its_suffix_of_the_batch() {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut clients = Vec::new();
            let mut sockets = Vec::new();
            for _ in 0..3 {
                clients.push(TcpStream::connect(addr).await.unwrap());
                sockets.push(Socket::new(listener.accept().await.unwrap().0));
            }
            let frames = b"0123456789";
            let sends: Vec<(&Socket, &[u8])> = sockets
                .iter()
                .zip([0, 4, 9])
                .map(|(s, from)| (s, &frames[from..]))
                .collect();
            let mut out = Vec::new();
            send_all(frames, &sends, true, &mut out);
            for ((client, res), from) in clients.iter_mut().zip(out).zip([0, 4, 9]) {
                assert_eq!(res.unwrap(), 10 - from);
                let mut got = vec![0u8; 10 - from];
                client.read_exact(&mut got).await.unwrap();
                assert_eq!(got, &frames[from..]);
            }
        })
        .await
        .expect("loopback I/O finishes");
    }
}
