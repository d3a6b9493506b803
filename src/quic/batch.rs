//! The QUIC endpoint's UDP socket, sending the packets of many sessions in
//! one `sendmmsg` call.
//!
//! quinn drives each connection in its own task, and each task sends its
//! own packets: a publish to N sessions costs N `sendmsg` calls, a kernel
//! entry and exit each. Here a single-packet send is copied into a queue
//! and returns at once; the queue goes out in one call when it holds
//! [`Config::wt_send_batch`](crate::config::Config) packets, or from a task
//! that yields once to the scheduler first, so that the sessions woken by
//! the same publish add their packets before it runs. A packet waits at
//! most one pass over the tasks that were ready when it was queued.
//!
//! Left as quinn does them: receiving (already batched, `recvmmsg`), and a
//! connection's multi-packet (GSO) sends, which go out directly after
//! whatever is queued, so one connection's packets keep their order.
//!
//! # Errors
//!
//! A full socket buffer (`WouldBlock`) keeps the packets queued and makes
//! quinn wait for the socket, as without batching. A packet the kernel
//! refuses otherwise is sent once more alone through quinn's own path
//! (which knows the fallbacks old kernels need) and, failing that, is
//! dropped and logged (at most once a minute): a queued packet's
//! connection has moved on, so QUIC's loss recovery resends what it
//! carried, where quinn would have failed the connection outright.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tracing::warn;
use wtransport::quinn::udp::{EcnCodepoint, RecvMeta, Transmit, UdpSocketState};
use wtransport::quinn::{self, AsyncTimer, AsyncUdpSocket, TokioRuntime, UdpPoller};

/// Most packets one `sendmmsg` call takes (the kernel allows 1 024; the
/// per-call arrays live on the stack).
pub(super) const MAX_BATCH: usize = 64;
/// Room for the control messages of one packet: its ECN bits and its
/// source address.
const CONTROL_LEN: usize = 64;
/// Least time between two logged send failures.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Tokio for quinn's timers and tasks; a batching socket for its UDP.
#[derive(Debug)]
pub(super) struct Runtime {
    /// Most packets sent at once; 1 leaves quinn's own socket in place.
    pub(super) batch: usize,
}

impl quinn::Runtime for Runtime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        TokioRuntime.spawn(future);
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        if self.batch <= 1 {
            return TokioRuntime.wrap_udp_socket(socket);
        }
        Ok(Arc::new(BatchSocket::new(socket, self.batch)?))
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}

/// The socket quinn sees. Its clones of [`Shared`] live in flush tasks.
#[derive(Debug)]
struct BatchSocket(Arc<Shared>);

impl BatchSocket {
    /// Must be called inside a Tokio runtime (quinn does).
    fn new(socket: std::net::UdpSocket, batch: usize) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self(Arc::new(Shared {
            state: UdpSocketState::new((&socket).into())?,
            io: tokio::net::UdpSocket::from_std(socket)?,
            batch: batch.clamp(1, MAX_BATCH),
            tokio: tokio::runtime::Handle::current(),
            queue: Mutex::new(Queue::default()),
            no_ipv4_tos: AtomicBool::new(false),
            counts: Counts::default(),
        })))
    }
}

#[derive(Debug)]
struct Shared {
    io: tokio::net::UdpSocket,
    /// quinn's socket state, for receiving and for sends not batched.
    state: UdpSocketState,
    batch: usize,
    tokio: tokio::runtime::Handle,
    queue: Mutex<Queue>,
    /// The kernel refused an IPv4 ECN marking once (`EINVAL`): leave it out.
    no_ipv4_tos: AtomicBool,
    counts: Counts,
}

/// Sends so far, for the tests and for tuning.
#[derive(Debug, Default)]
struct Counts {
    calls: AtomicU64,
    packets: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    /// The queued packets' bytes, back to back.
    bytes: Vec<u8>,
    packets: Vec<Queued>,
    /// A flush task is spawned and has not yet emptied the queue.
    flush_spawned: bool,
    last_error_logged: Option<Instant>,
}

#[derive(Debug)]
struct Queued {
    to: socket2::SockAddr,
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    src_ip: Option<IpAddr>,
    len: usize,
}

impl Queued {
    fn transmit<'a>(&self, contents: &'a [u8]) -> Transmit<'a> {
        Transmit {
            destination: self.destination,
            ecn: self.ecn,
            contents,
            segment_size: None,
            src_ip: self.src_ip,
        }
    }
}

impl AsyncUdpSocket for BatchSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            shared: self.0.clone(),
            wait: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let shared = &self.0;
        let mut queue = shared.lock();
        if transmit
            .segment_size
            .is_some_and(|size| size < transmit.contents.len())
        {
            shared.flush(&mut queue)?;
            drop(queue);
            return shared.send_alone(transmit);
        }
        if queue.packets.len() >= shared.batch {
            shared.flush(&mut queue)?;
        }
        queue.bytes.extend_from_slice(transmit.contents);
        queue.packets.push(Queued {
            to: transmit.destination.into(),
            destination: transmit.destination,
            ecn: transmit.ecn,
            src_ip: transmit.src_ip,
            len: transmit.contents.len(),
        });
        if !queue.flush_spawned {
            queue.flush_spawned = true;
            shared.tokio.spawn(flush_soon(shared.clone()));
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let shared = &self.0;
        loop {
            ready!(shared.io.poll_recv_ready(cx))?;
            if let Ok(n) = shared.io.try_io(Interest::READABLE, || {
                shared.state.recv((&shared.io).into(), bufs, meta)
            }) {
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.0.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.state.gro_segments()
    }
}

/// Sends the queue after the tasks already woken have run.
async fn flush_soon(shared: Arc<Shared>) {
    tokio::task::yield_now().await;
    loop {
        {
            let mut queue = shared.lock();
            if shared.flush(&mut queue).is_ok() {
                queue.flush_spawned = false;
                return;
            }
        }
        // `flush` only fails with `WouldBlock`; quinn's own sends wait the same way.
        if let Err(error) = shared.io.writable().await {
            warn!(%error, "quic socket failed; dropping queued packets");
            let mut queue = shared.lock();
            queue.packets.clear();
            queue.bytes.clear();
            queue.flush_spawned = false;
            return;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue holds plain data; a panic elsewhere leaves it usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// quinn's own send of one transmit.
    fn send_alone(&self, transmit: &Transmit) -> io::Result<()> {
        self.counts.calls.fetch_add(1, Ordering::Relaxed);
        self.counts.packets.fetch_add(1, Ordering::Relaxed);
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), transmit)
        })
    }

    /// Sends every queued packet. Fails only with `WouldBlock`, leaving the
    /// unsent ones queued.
    fn flush(&self, queue: &mut Queue) -> io::Result<()> {
        let (mut done, mut offset) = (0, 0);
        let result = loop {
            if done == queue.packets.len() {
                break Ok(());
            }
            let packets = &queue.packets[done..];
            let sent = self.io.try_io(Interest::WRITABLE, || {
                send_batch(&self.io, &queue.bytes[offset..], packets, &self.no_ipv4_tos)
            });
            match sent {
                Ok(n) => {
                    self.counts.calls.fetch_add(1, Ordering::Relaxed);
                    self.counts.packets.fetch_add(n as u64, Ordering::Relaxed);
                    offset += packets[..n].iter().map(|p| p.len).sum::<usize>();
                    done += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Err(e),
                Err(error) => {
                    let packet = &packets[0];
                    if error.raw_os_error() == Some(libc::EINVAL) {
                        self.no_ipv4_tos.store(true, Ordering::Relaxed);
                    }
                    let contents = &queue.bytes[offset..offset + packet.len];
                    match self.send_alone(&packet.transmit(contents)) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Err(e),
                        Err(error) => {
                            let now = Instant::now();
                            if queue
                                .last_error_logged
                                .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_INTERVAL)
                            {
                                queue.last_error_logged = Some(now);
                                warn!(%error, to = %packet.destination,
                                    "quic packet refused by the kernel; dropped (QUIC resends its data)");
                            }
                        }
                        Ok(()) => {}
                    }
                    offset += packet.len;
                    done += 1;
                }
            }
        };
        queue.packets.drain(..done);
        queue.bytes.drain(..offset);
        result
    }
}

/// One `sendmmsg` call for the first [`MAX_BATCH`] of `packets`, whose
/// bytes lie back to back at the start of `bytes`. Returns how many the
/// kernel took (at least one) or the error of the first.
fn send_batch(
    socket: &impl AsRawFd,
    bytes: &[u8],
    packets: &[Queued],
    no_ipv4_tos: &AtomicBool,
) -> io::Result<usize> {
    #[repr(C, align(8))]
    struct Control([u8; CONTROL_LEN]);

    let packets = &packets[..packets.len().min(MAX_BATCH)];
    let skip_tos = no_ipv4_tos.load(Ordering::Relaxed);
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut controls: [Control; MAX_BATCH] = std::array::from_fn(|_| Control([0; CONTROL_LEN]));
    let mut offset = 0;
    for (i, packet) in packets.iter().enumerate() {
        let contents = &bytes[offset..offset + packet.len];
        offset += packet.len;
        iovecs[i] = libc::iovec {
            iov_base: contents.as_ptr().cast_mut().cast(),
            iov_len: contents.len(),
        };
        let header = &mut headers[i].msg_hdr;
        // The kernel only reads through these pointers (`sendmmsg` takes
        // them mutable because `recvmmsg` shares the struct).
        header.msg_name = packet.to.as_ptr().cast_mut().cast();
        header.msg_namelen = packet.to.len();
        header.msg_iov = &mut iovecs[i];
        header.msg_iovlen = 1;
        header.msg_control = controls[i].0.as_mut_ptr().cast();
        header.msg_controllen = CONTROL_LEN;
        // SAFETY: `header` points at `controls[i]`, aligned for `cmsghdr`
        // and large enough for the two messages written (checked by
        // `control_len_fits`); each is written inside the buffer, as
        // `CMSG_NXTHDR` returns null when the next would not fit.
        let used = unsafe { write_controls(header, packet, skip_tos) };
        if used == 0 {
            header.msg_control = std::ptr::null_mut();
        }
        header.msg_controllen = used;
    }
    loop {
        // SAFETY: `headers[..n]` are initialised above and point at
        // `iovecs`, `controls`, the packets' addresses and `bytes`, all of
        // which outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                packets.len() as libc::c_uint,
                0,
            )
        };
        match n {
            n if n > 0 => return Ok(n as usize),
            0 => return Err(io::ErrorKind::WriteZero.into()),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

/// Writes `packet`'s ECN marking and source address as control messages of
/// `header` and returns the bytes used.
///
/// # Safety
///
/// `header.msg_control` must point at `header.msg_controllen` writable
/// bytes aligned for `cmsghdr`, at least [`CONTROL_LEN`] of them.
unsafe fn write_controls(header: &mut libc::msghdr, packet: &Queued, skip_ipv4_tos: bool) -> usize {
    let mut used = 0;
    let mut next = unsafe { libc::CMSG_FIRSTHDR(header) };
    let mut push = |level: libc::c_int, kind: libc::c_int, data: &[u8]| {
        if next.is_null() {
            return;
        }
        let len = data.len() as libc::c_uint;
        // SAFETY (of the block): `next` is a `cmsghdr` inside the buffer
        // with room for `data` (`CMSG_NXTHDR` checked it against
        // `msg_controllen`, which covers the whole buffer).
        unsafe {
            (*next).cmsg_level = level;
            (*next).cmsg_type = kind;
            (*next).cmsg_len = libc::CMSG_LEN(len) as _;
            std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(next), data.len());
            used += libc::CMSG_SPACE(len) as usize;
            next = libc::CMSG_NXTHDR(header, next);
        }
    };
    let ipv4 = match packet.destination.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(ip) => ip.to_ipv4_mapped().is_some(),
    };
    if let Some(ecn) = packet.ecn {
        let bits = (ecn as u8 as libc::c_int).to_ne_bytes();
        if !ipv4 {
            push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &bits);
        } else if !skip_ipv4_tos {
            push(libc::IPPROTO_IP, libc::IP_TOS, &bits);
        }
    }
    match packet.src_ip {
        Some(IpAddr::V4(ip)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            // SAFETY: a plain C struct without padding, read as bytes.
            push(libc::IPPROTO_IP, libc::IP_PKTINFO, unsafe {
                as_bytes(&info)
            });
        }
        Some(IpAddr::V6(ip)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            // SAFETY: as above.
            push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, unsafe {
                as_bytes(&info)
            });
        }
        None => {}
    }
    used
}

/// # Safety
///
/// `T` must have no padding bytes.
unsafe fn as_bytes<T>(value: &T) -> &[u8] {
    unsafe { std::slice::from_raw_parts((value as *const T).cast(), size_of::<T>()) }
}

/// quinn's wait for a writable socket, after a send that would block.
struct Writable {
    shared: Arc<Shared>,
    wait: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>>,
}

impl std::fmt::Debug for Writable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writable")
            .field("waiting", &self.wait.is_some())
            .finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let wait = this.wait.get_or_insert_with(|| {
            let shared = this.shared.clone();
            Box::pin(async move { shared.io.writable().await })
        });
        let result = ready!(wait.as_mut().poll(cx));
        this.wait = None;
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};

    use super::*;

    /// A receiving socket on loopback; reads give up after a while, so a
    /// missing packet fails the test instead of hanging it.
    fn receiver() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket
    }

    /// A batching socket whose writability the runtime has seen, as it
    /// has for a socket quinn has been using (a send before that is
    /// refused with `WouldBlock`, and quinn waits).
    async fn sender(batch: usize) -> BatchSocket {
        let socket = BatchSocket::new(UdpSocket::bind("127.0.0.1:0").unwrap(), batch).unwrap();
        socket.0.io.writable().await.unwrap();
        socket
    }

    fn single(to: SocketAddr, contents: &[u8]) -> Transmit<'_> {
        Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: None,
        }
    }

    /// Reads `n` datagrams off a blocking socket, on a blocking thread.
    async fn read(socket: &Arc<UdpSocket>, n: usize) -> Vec<Vec<u8>> {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = [0; 2048];
            (0..n)
                .map(|_| {
                    let len = socket.recv(&mut buf).expect("a datagram");
                    buf[..len].to_vec()
                })
                .collect()
        })
        .await
        .unwrap()
    }

    fn counts(socket: &BatchSocket) -> (u64, u64) {
        let c = &socket.0.counts;
        (
            c.calls.load(Ordering::Relaxed),
            c.packets.load(Ordering::Relaxed),
        )
    }

    fn numbered(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("packet {i}").into_bytes()).collect()
    }

    #[tokio::test]
    async fn packets_queued_in_one_turn_go_out_in_one_call_in_order() {
        let rx = Arc::new(receiver());
        let to = rx.local_addr().unwrap();
        let socket = sender(MAX_BATCH).await;
        let packets = numbered(10);
        for p in &packets {
            socket.try_send(&single(to, p)).unwrap();
        }
        assert_eq!(
            counts(&socket),
            (0, 0),
            "nothing sent before the task yields"
        );
        assert_eq!(read(&rx, 10).await, packets);
        assert_eq!(counts(&socket), (1, 10));
    }

    #[tokio::test]
    async fn a_full_queue_is_sent_by_the_next_send() {
        let rx = Arc::new(receiver());
        let to = rx.local_addr().unwrap();
        let socket = sender(4).await;
        let packets = numbered(10);
        for p in &packets {
            socket.try_send(&single(to, p)).unwrap();
        }
        // The 5th and 9th sends found four queued and sent them first.
        assert_eq!(counts(&socket), (2, 8));
        assert_eq!(read(&rx, 10).await, packets);
        assert_eq!(counts(&socket), (3, 10));
    }

    #[tokio::test]
    async fn a_multi_packet_send_goes_out_after_the_queued_packets() {
        let rx = Arc::new(receiver());
        let to = rx.local_addr().unwrap();
        let socket = sender(MAX_BATCH).await;
        let packets = numbered(2);
        for p in &packets {
            socket.try_send(&single(to, p)).unwrap();
        }
        let segments = [[b'a'; 100], [b'b'; 100], [b'c'; 100]].concat();
        let gso = Transmit {
            segment_size: Some(100),
            ..single(to, &segments)
        };
        socket.try_send(&gso).unwrap();
        let mut expected = packets;
        expected.extend(segments.chunks(100).map(<[u8]>::to_vec));
        assert_eq!(read(&rx, 5).await, expected);
    }

    #[tokio::test]
    async fn ecn_bits_and_the_source_address_reach_the_peer() {
        let rx = receiver();
        let to = rx.local_addr().unwrap();
        let state = UdpSocketState::new((&rx).into()).unwrap();
        // Bound to every address, the source is chosen per packet.
        let socket = BatchSocket::new(UdpSocket::bind("0.0.0.0:0").unwrap(), MAX_BATCH).unwrap();
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let transmit = Transmit {
            ecn: Some(EcnCodepoint::Ect0),
            src_ip: Some(from),
            ..single(to, b"marked")
        };
        socket.try_send(&transmit).unwrap();
        let (len, meta) = tokio::task::spawn_blocking(move || {
            let mut buf = [0; 2048];
            let mut meta = [RecvMeta::default()];
            let n = state
                .recv((&rx).into(), &mut [IoSliceMut::new(&mut buf)], &mut meta)
                .expect("a datagram");
            assert_eq!(n, 1);
            (meta[0].len, meta[0])
        })
        .await
        .unwrap();
        assert_eq!(len, b"marked".len());
        assert_eq!(meta.ecn, Some(EcnCodepoint::Ect0));
        assert_eq!(meta.addr.ip(), from);
    }

    #[tokio::test]
    async fn a_packet_the_kernel_refuses_is_dropped_and_the_rest_are_sent() {
        let rx = Arc::new(receiver());
        let to = rx.local_addr().unwrap();
        let socket = sender(MAX_BATCH).await;
        // An IPv6 destination cannot be reached from an IPv4 socket.
        let nowhere = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), to.port());
        socket.try_send(&single(to, b"first")).unwrap();
        socket.try_send(&single(nowhere, b"refused")).unwrap();
        socket.try_send(&single(to, b"last")).unwrap();
        assert_eq!(read(&rx, 2).await, [b"first".to_vec(), b"last".to_vec()]);
        let queue = socket.0.lock();
        assert!(queue.packets.is_empty() && queue.bytes.is_empty());
        assert!(!queue.flush_spawned);
    }
}
