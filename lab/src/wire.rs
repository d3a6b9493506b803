//! An emulated wire with real kernel packet loss and a fixed delay each
//! way, between two endpoints in one user and network namespace: the path
//! of the lab's `lossy-link` condition and of the head-of-line blocking
//! bench. It only works inside a namespace [`netns::in_namespace`] made,
//! where this process has `CAP_NET_ADMIN` over a network stack of its own.
//! Entry point: [`Wire::start`].
//!
//! # Why a TUN device
//!
//! The loss must be the kernel's, so that TCP really retransmits: an
//! nftables rule drops packets at random (`numgen random`). The delay must
//! be *between the endpoints*, so that TCP's and QUIC's round-trip times,
//! and with them their loss recovery, include it. A byte relay that delays
//! what it copies would not do: it ends the TCP connection, so TCP would
//! recover a loss on the relay's loopback hop in microseconds and the delay
//! would be added after the recovery, which favours TCP over QUIC (whose
//! datagrams a UDP relay forwards, delay included, end to end). The
//! kernel's delay queue (netem) is not available on these machines.
//!
//! So the wire is a TUN device, `ladder0`, with address [`NEAR`] on a /24.
//! A client connects to [`FAR`]; the kernel routes the packet into the TUN
//! device; this module reads it, swaps its source and destination
//! addresses, holds it for the delay and writes it back. The kernel then
//! receives a packet from [`FAR`] to [`NEAR`], which the server (listening
//! on every address, or on [`NEAR`]) accepts; its answers take the same
//! way back. Swapping the two addresses leaves every checksum valid (a
//! one's-complement sum does not depend on the order of its words). Every
//! packet is delayed once per crossing, so the round trip is twice the
//! delay, and every packet meets the loss rule once, on input from
//! `ladder0`, both ways.
//!
//! Loopback (127.0.0.1) does not cross the wire: a client that must not be
//! delayed or lose packets (the bench's publisher, a browser's hop to the
//! lab's relays) uses it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::netns::{self, NetnsError};

/// The TUN device's name.
pub const DEVICE: &str = "ladder0";
/// This host's address on the wire (servers listen on every address).
pub const NEAR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The address clients connect to: packets to it cross the wire.
pub const FAR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The nftables table this module owns.
const TABLE: &str = "ladder_wire";
/// Packets waiting out their delay. At the bench's rates a few hundred are
/// in flight; a full queue drops the packet and counts it
/// ([`WireCounters::overflow`]), so a run can tell the wire was not clean.
const QUEUE: usize = 16_384;

/// Why the wire cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not in a namespace of its own, `ip` or `nft` missing or refusing,
    /// or a loss share outside 0–100 %: the machine's own firewall and
    /// interfaces are never touched.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The TUN device could not be opened (or its threads not started).
    #[error("cannot open the TUN device {DEVICE}: {0}")]
    Tun(std::io::Error),
    /// A server does not answer across the wire.
    #[error(
        "the server's port {port} does not answer on the wire's address {NEAR} ({reason}): it must listen on every address (0.0.0.0), as `ladder --lab` does inside `ladder-lab netns`"
    )]
    Unreachable {
        /// The server's port.
        port: u16,
        /// What the connection attempt met.
        reason: String,
    },
}

/// How long the wire may take to carry a test connection to a server.
const PROBE: Duration = Duration::from_secs(10);

/// What crossed the wire since the last [`Wire::set_loss`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireCounters {
    /// TCP packets that crossed (before the loss rule).
    pub tcp: u64,
    /// UDP packets that crossed.
    pub udp: u64,
    /// TCP packets the kernel dropped.
    pub tcp_dropped: u64,
    /// UDP packets the kernel dropped.
    pub udp_dropped: u64,
    /// Packets dropped because the delay queue was full (should be 0).
    pub overflow: u64,
}

#[derive(Default)]
struct Counts {
    tcp: AtomicU64,
    udp: AtomicU64,
    overflow: AtomicU64,
}

/// The running wire. Dropping it stops its two threads within 100 ms (the
/// device goes with the namespace).
pub struct Wire {
    delay: Duration,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("device", &DEVICE)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

/// Where a client reaches, across the wire, a server listening on `port`
/// on every address (or on [`NEAR`]).
pub fn across(port: u16) -> std::net::SocketAddr {
    (FAR, port).into()
}

impl Wire {
    /// Creates the device, routes [`FAR`] through it and starts the delay
    /// line, with no loss yet.
    pub fn start(delay: Duration) -> Result<Self, WireError> {
        if !netns::inside() {
            return Err(NetnsError::NotInNamespace.into());
        }
        let tun = open_tun(DEVICE)?;
        netns::run("ip", &["addr", "add", &format!("{NEAR}/24"), "dev", DEVICE])?;
        netns::run("ip", &["link", "set", DEVICE, "mtu", "1500", "up"])?;
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tun = Arc::new(tun);
        let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUE);
        {
            let (tun, counts, stop) = (tun.clone(), counts.clone(), stop.clone());
            std::thread::Builder::new()
                .name("wire-in".into())
                .spawn(move || reflect(&tun, delay, &tx, &counts, &stop))
                .map_err(WireError::Tun)?;
        }
        {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("wire-out".into())
                .spawn(move || deliver(&tun, &rx, &stop))
                .map_err(WireError::Tun)?;
        }
        let wire = Self {
            delay,
            counts,
            stop,
        };
        wire.set_loss(0.0)?;
        Ok(wire)
    }

    /// Starts the wire ([`start`](Self::start)), checks that a TCP
    /// connection across it reaches each of `servers` (at [`FAR`], on its
    /// port: a server listening on loopback only does not answer there),
    /// then sets the loss to `percent`.
    pub async fn reaching(
        delay: Duration,
        percent: f64,
        servers: &[std::net::SocketAddr],
    ) -> Result<Self, WireError> {
        let wire = Self::start(delay)?;
        for s in servers {
            // Before the loss is on, so one refused answer means what it says.
            let port = s.port();
            let reason =
                match tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(across(port)))
                    .await
                {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {PROBE:?}"),
                };
            return Err(WireError::Unreachable { port, reason });
        }
        wire.set_loss(percent)?;
        Ok(wire)
    }

    /// The delay each way.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Drops `percent` of the packets arriving from the wire, TCP and UDP
    /// alike, both ways; resets the counters.
    pub fn set_loss(&self, percent: f64) -> Result<(), WireError> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(NetnsError::Bad(format!("{percent} % is not a loss share")).into());
        }
        // Per hundred thousand, so fractions of a percent are exact enough.
        let per_100k = (percent * 1000.0).round() as u32;
        let rule = |proto: &str| {
            format!(
                "    iifname \"{DEVICE}\" meta l4proto {proto} numgen random mod 100000 < {per_100k} counter drop comment \"{proto}\"\n"
            )
        };
        let script = format!(
            "table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{}{}  }}\n}}\n",
            rule("tcp"),
            rule("udp")
        );
        // Deleting first makes this repeatable; a missing table is fine.
        let _ = netns::nft(&format!("delete table inet {TABLE}\n"));
        netns::nft(&script)?;
        self.counts.tcp.store(0, Ordering::Relaxed);
        self.counts.udp.store(0, Ordering::Relaxed);
        self.counts.overflow.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Packets that crossed and were dropped since the last
    /// [`set_loss`](Self::set_loss).
    pub fn counters(&self) -> Result<WireCounters, WireError> {
        let listing = netns::run("nft", &["list", "table", "inet", TABLE])?;
        let dropped = |proto: &str| {
            listing
                .lines()
                .find(|l| l.contains(&format!("comment \"{proto}\"")))
                .and_then(|l| l.split("packets ").nth(1))
                .and_then(|s| s.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok(WireCounters {
            tcp: self.counts.tcp.load(Ordering::Relaxed),
            udp: self.counts.udp.load(Ordering::Relaxed),
            tcp_dropped: dropped("tcp"),
            udp_dropped: dropped("udp"),
            overflow: self.counts.overflow.load(Ordering::Relaxed),
        })
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads packets from the device, swaps their addresses and queues them
/// with the moment they are due.
fn reflect(
    tun: &File,
    delay: Duration,
    tx: &mpsc::SyncSender<(Instant, Vec<u8>)>,
    counts: &Counts,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        if !readable(tun, 100) {
            continue;
        }
        let n = match (&*tun).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        let p = &mut buf[..n];
        // IPv4 only (the wire's addresses are); anything else, such as the
        // kernel's own IPv6 chatter on a new device, is not forwarded.
        if n < 20 || p[0] >> 4 != 4 {
            continue;
        }
        match p[9] {
            6 => counts.tcp.fetch_add(1, Ordering::Relaxed),
            17 => counts.udp.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let (src, dst) = p[12..20].split_at_mut(4);
        src.swap_with_slice(dst);
        if tx.try_send((Instant::now() + delay, p.to_vec())).is_err() {
            counts.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes each queued packet back into the device when it is due. Every
/// packet waits the same delay, so the queue is already in due order.
fn deliver(tun: &File, rx: &mpsc::Receiver<(Instant, Vec<u8>)>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((due, packet)) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // A refused write is a lost packet, as on a real link.
        let _ = (&*tun).write(&packet);
    }
}

/// Whether `f` has data within `ms` milliseconds.
fn readable(f: &File, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0 && p.revents & libc::POLLIN != 0
}

/// Creates (or attaches to) TUN device `name`: IP packets without the
/// packet-information header, non-blocking.
fn open_tun(name: &str) -> Result<File, WireError> {
    /// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(WireError::Tun)?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is, laid
    // out as the kernel's (16-byte name, flags, padding to 40 bytes).
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if r < 0 {
        return Err(WireError::Tun(std::io::Error::last_os_error()));
    }
    // SAFETY: F_SETFL on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    Ok(f)
}
