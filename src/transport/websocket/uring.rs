//! A fan-out round's sends in one system call: the non-blocking `send()`s
//! to many lent sockets are queued on an `io_uring` and submitted together,
//! which saves a kernel entry and exit per socket (measured with
//! `ladder-bench fanout`, see BENCHMARKS.md).
//!
//! One ring per worker thread, used only inside one synchronous call. Where
//! `io_uring` is unavailable (an old kernel, a seccomp profile that refuses
//! it) the sends are made one by one.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

use io_uring::{IoUring, opcode, types};
use tracing::{info, warn};

/// Most sends submitted at once (the caller holds that many outlet locks
/// for the duration of one submission).
pub(crate) const CHUNK: usize = 64;
/// Room for a chunk and as many cancellations.
const ENTRIES: u32 = 2 * CHUNK as u32;
/// `user_data` of cancellation requests (sends use their index).
const CANCEL: u64 = u64::MAX;

enum Ring {
    Untried,
    Ready(Box<IoUring>),
    Unavailable,
}

thread_local! {
    static RING: RefCell<Ring> = const { RefCell::new(Ring::Untried) };
}

/// Sends each `(fd, bytes)` without blocking and returns the outcomes in
/// order. At most [`CHUNK`] at once. Every descriptor must stay open until
/// this returns.
pub(crate) fn send_all(sends: &[(RawFd, &[u8])], use_ring: bool, out: &mut Vec<io::Result<usize>>) {
    debug_assert!(sends.len() <= CHUNK);
    out.clear();
    let done = use_ring
        && RING.with_borrow_mut(|ring| {
            if let Ring::Untried = ring {
                *ring = match IoUring::new(ENTRIES) {
                    Ok(r) => Ring::Ready(Box::new(r)),
                    Err(e) => {
                        info!(error = %e, "io_uring unavailable; fan-out sends one by one");
                        Ring::Unavailable
                    }
                };
            }
            let Ring::Ready(r) = ring else {
                return false;
            };
            match submit(r, sends, out) {
                Outcome::Done => true,
                Outcome::NotSubmitted(e) => {
                    // Nothing reached the kernel; the queued entries go with
                    // the ring, and this thread sends one by one from now.
                    warn!(error = %e, "io_uring submission failed; fan-out sends one by one");
                    *ring = Ring::Unavailable;
                    false
                }
                Outcome::Lost(e) => {
                    warn!(error = %e, "io_uring failed mid-round; fan-out sends one by one");
                    *ring = Ring::Unavailable;
                    true
                }
            }
        });
    if !done {
        out.clear();
        out.extend(sends.iter().map(|&(fd, b)| super::outlet::send_now(fd, b)));
    }
}

/// How a round through the ring ended.
enum Outcome {
    /// Every send has its result in `out`.
    Done,
    /// The kernel took none of them: send them another way.
    NotSubmitted(io::Error),
    /// The ring failed after taking some: the sends without a completion
    /// have an error in `out` (their sockets go back to their tasks). Not
    /// seen in practice; the only errors left at that point are resource
    /// exhaustion and bugs.
    Lost(io::Error),
}

fn submit(
    ring: &mut IoUring,
    sends: &[(RawFd, &[u8])],
    out: &mut Vec<io::Result<usize>>,
) -> Outcome {
    // Every completion must be reaped before returning: the kernel may touch
    // the buffers and descriptors until then.
    out.resize_with(sends.len(), || Err(io::ErrorKind::Other.into()));
    let mut pending = vec![true; sends.len()];
    {
        let mut sq = ring.submission();
        for (i, &(fd, bytes)) in sends.iter().enumerate() {
            // MSG_DONTWAIT: a full socket completes with EAGAIN at once
            // rather than waiting for room.
            let e = opcode::Send::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(i as u64);
            // SAFETY: the buffers and descriptors outlive the operation:
            // this function reaps every completion before it returns (or
            // the ring is dropped with them unsubmitted). The queue is
            // empty on entry and holds `ENTRIES` ≥ 2 × `CHUNK`.
            if unsafe { sq.push(&e) }.is_err() {
                return Outcome::NotSubmitted(io::Error::other("submission queue full"));
            }
        }
    }
    let mut left = sends.len();
    // An error means no entry was consumed (the kernel reports a partial
    // submission as a count, and the rest go with the next enter below).
    if let Err(e) = ring.submit() {
        return Outcome::NotSubmitted(e);
    }
    reap(ring, out, &mut pending, &mut left);
    if left > 0 {
        // Not done inline (the kernel went asynchronous for some): cancel
        // them and wait for their completions.
        {
            let mut sq = ring.submission();
            for (i, _) in pending.iter().enumerate().filter(|(_, p)| **p) {
                let e = opcode::AsyncCancel::new(i as u64).build().user_data(CANCEL);
                // SAFETY: a cancellation refers to no memory.
                let _ = unsafe { sq.push(&e) };
            }
        }
        while left > 0 {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    for (i, p) in pending.iter().enumerate() {
                        if *p {
                            out[i] = Err(io::Error::other("io_uring failed"));
                        }
                    }
                    return Outcome::Lost(e);
                }
            }
            reap(ring, out, &mut pending, &mut left);
        }
    }
    Outcome::Done
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
