//! The QUIC listener: the HTTP/3 + WebTransport endpoint (wtransport on
//! quinn), twin of [`crate::http`]. It binds the UDP socket, accepts
//! sessions at `/wt`, keeps the development certificate fresh while it
//! runs, and shuts the endpoint down cleanly.
//!
//! Entry points: [`Listener::bind`] (from [`crate::server::Server::bind`])
//! then [`Listener::run`]. Each accepted session is handed to
//! [`crate::transport::webtransport::run_session`].
//!
//! # Refusals
//!
//! - a path other than `/wt` (the query is ignored): HTTP 404;
//! - an `Origin` not in the allowlist ([`Ctx::origin_allowed`]): HTTP 403;
//! - more than `--wt-max-sessions` sessions open: HTTP 429;
//! - a QUIC client without the `h3` ALPN, or junk UDP: the handshake fails
//!   inside quinn and only that connection attempt is affected.
//!
//! Session close codes belong to the WebTransport adapter
//! ([`crate::transport::webtransport`]); this listener sends
//! [`CLOSE_SHUTDOWN`] when it shuts the endpoint down.
//!
//! # Certificate rotation
//!
//! A development certificate lives at most 14 days (browser rule), so a
//! long-running server checks hourly whether it has a day or less left; if
//! so it generates a new one (blocking file I/O, off the runtime), hands the
//! endpoint a new config (new handshakes use it; existing sessions keep their
//! keys) and publishes the new hash for `/api/info` in the same step.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, debug_span, info, warn};
use wtransport::endpoint::IncomingSession;
use wtransport::endpoint::endpoint_side::Server;
use wtransport::quinn::VarInt as QuicVarInt;
use wtransport::{Connection, Endpoint, ServerConfig, VarInt};

use crate::auth::token_from;
use crate::config::Config;
use crate::context::{Ctx, WebTransportInfo};
use crate::limits::PerIpGuard;
use crate::tls::{CertSource, CertStore, TlsError, TlsMaterial};
use crate::transport::fanout::Fanouts;
use crate::transport::session::Credentials;
use crate::transport::webtransport::{CLOSE_SHUTDOWN, CLOSE_SHUTDOWN_REASON};

/// The one path sessions are accepted on.
pub(crate) const WT_PATH: &str = "/wt";

/// Unidirectional streams the client may open at once. Ladder uses none;
/// a few are allowed so that opening one is a protocol error we can name
/// instead of a silent flow-control stall.
const MAX_UNI_STREAMS: u32 = 4;
/// Bytes a client may send on one stream ahead of Ladder reading them:
/// quinn's default (100 Mbit/s over a 100 ms round trip).
const STREAM_WINDOW: u32 = 1_250_000;
/// The same for the whole session, all streams together.
const SESSION_WINDOW: u32 = 4 * STREAM_WINDOW;
/// How often the development certificate's remaining validity is checked.
const ROTATION_CHECK: Duration = Duration::from_secs(3600);
/// Longest time a QUIC + HTTP/3 handshake may take before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for peers to acknowledge the close on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the QUIC endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The UDP socket could not be bound.
    #[error("cannot listen for HTTP/3 on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The idle timeout is out of QUIC's range.
    #[error("invalid webtransport idle timeout: {0} s")]
    IdleTimeout(u64),
    /// The certificate could not be turned into a TLS identity.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A bound, not yet running QUIC endpoint and the certificate it presents.
pub(crate) struct Listener {
    endpoint: Endpoint<Server>,
    addr: SocketAddr,
    /// The certificate in use; replaced on rotation.
    tls: TlsMaterial,
    /// Where a rotated certificate comes from.
    source: CertSource,
    /// The TLS listeners' certificate, replaced on rotation too.
    certs: Option<CertStore>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Binds the UDP socket (port 0 picks a free one) with the limits from
    /// `cfg` and the identity of `tls`. Must run inside a Tokio runtime.
    pub(crate) fn bind(
        cfg: &Config,
        tls: TlsMaterial,
        source: CertSource,
    ) -> Result<Self, QuicError> {
        let bind_err = |source| QuicError::Bind {
            addr: cfg.h3,
            source,
        };
        let socket = udp_socket(cfg.h3, cfg.wt_udp_buffer).map_err(bind_err)?;
        let config = server_config(cfg, Bind::Socket(socket), &tls)?;
        let endpoint = Endpoint::server(config).map_err(bind_err)?;
        let addr = endpoint.local_addr().map_err(bind_err)?;
        Ok(Self {
            endpoint,
            addr,
            tls,
            source,
            certs: None,
        })
    }

    /// Rotations replace the certificate of `certs` too (the TLS
    /// listeners'), so one check keeps every listener's certificate fresh.
    pub(crate) fn with_cert_store(mut self, certs: CertStore) -> Self {
        self.certs = Some(certs);
        self
    }

    /// The bound UDP address (the real port when 0 was asked for).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What browsers should use now: the session URL and the hash to pin.
    pub(crate) fn info(&self) -> WebTransportInfo {
        info_for(self.addr, &self.tls)
    }

    /// Accepts sessions until `ctx.shutdown` fires, then closes every
    /// session with [`CLOSE_SHUTDOWN`] and waits (bounded) for peers to
    /// acknowledge.
    pub(crate) async fn run(mut self, ctx: Ctx, fanouts: Fanouts) {
        let permits = Arc::new(Semaphore::new(ctx.cfg.wt_max_sessions));
        let mut rotation = tokio::time::interval(ROTATION_CHECK);
        rotation.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Gotcha: `Endpoint::accept` panics once the endpoint is closed,
            // so the endpoint is closed only after this loop has dropped its
            // `accept` future.
            let incoming = tokio::select! {
                () = ctx.shutdown.cancelled() => break,
                incoming = self.endpoint.accept() => incoming,
                _ = rotation.tick() => {
                    self.rotate_if_due(&ctx, OffsetDateTime::now_utc()).await;
                    continue;
                }
            };
            let remote = incoming.remote_address();
            // Debug level: quinn's connection driver inherits the span it
            // is created in and enters it on every poll (every packet; 2.4 %
            // of the server's CPU in a fan-out profile), and nothing inside
            // a session logs above debug.
            ctx.tasks.spawn(
                accept(incoming, ctx.clone(), fanouts.clone(), permits.clone())
                    .instrument(debug_span!("webtransport", %remote)),
            );
        }
        self.endpoint.close(
            VarInt::from_u32(CLOSE_SHUTDOWN),
            CLOSE_SHUTDOWN_REASON.as_bytes(),
        );
        if tokio::time::timeout(DRAIN_TIMEOUT, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            warn!(
                open = self.endpoint.open_connections(),
                "quic endpoint did not drain in time"
            );
        }
    }

    /// Replaces a development certificate that has a day or less left at
    /// `now`.
    async fn rotate_if_due(&mut self, ctx: &Ctx, now: OffsetDateTime) {
        if !self.tls.needs_rotation(now) {
            return;
        }
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || TlsMaterial::load(&source, now)).await;
        let tls = match loaded {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => return warn!(%error, "certificate rotation failed; will retry"),
            Err(error) => return warn!(%error, "certificate rotation task failed"),
        };
        // With `rebind = false` the address inside the config is not used;
        // the current one is passed for clarity.
        let reloaded = server_config(&ctx.cfg, Bind::Address(self.addr), &tls)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                self.endpoint
                    .reload_config(c, false)
                    .map_err(|e| e.to_string())
            });
        if let Err(error) = reloaded {
            return warn!(%error, "cannot reload the quic config; keeping the old certificate");
        }
        ctx.set_webtransport(Some(info_for(self.addr, &tls)));
        if let Some(Err(error)) = self.certs.as_ref().map(|c| c.set(&tls)) {
            warn!(%error, "the tls listeners keep the old certificate");
        }
        info!(cert_sha256 = tls.sha256_hex(), not_after = %tls.not_after(),
            "development certificate rotated");
        self.tls = tls;
    }
}

/// Completes the handshake of one incoming session, decides whether to
/// accept it, and serves it. Runs in its own task: a handshake takes at
/// least a round trip and a bad client could stall it.
async fn accept(incoming: IncomingSession, ctx: Ctx, fanouts: Fanouts, permits: Arc<Semaphore>) {
    // A task's future is allocated at its largest state for the task's
    // whole life. Boxed, the handshake's state is freed once it is over
    // instead of being carried by every open session.
    let Some(admitted) = Box::pin(admit(incoming, &ctx, &permits)).await else {
        return;
    };
    let Admitted {
        conn,
        creds,
        permit,
        per_ip,
    } = admitted;
    crate::transport::webtransport::run_session(ctx, fanouts, conn, creds).await;
    drop((permit, per_ip));
}

/// An accepted session and the limits it holds until it ends.
struct Admitted {
    conn: Connection,
    creds: Credentials,
    permit: OwnedSemaphorePermit,
    per_ip: PerIpGuard,
}

/// The handshake and the refusals; `None` once a refused client has its
/// answer (or the handshake failed).
async fn admit(incoming: IncomingSession, ctx: &Ctx, permits: &Arc<Semaphore>) -> Option<Admitted> {
    let request = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(request)) => request,
        // Wrong ALPN, bad TLS, timeouts: the client's problem, not ours.
        Ok(Err(error)) => {
            debug!(%error, "handshake failed");
            return None;
        }
        Err(_) => {
            debug!("handshake timed out");
            return None;
        }
    };
    let path = request.path();
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != WT_PATH {
        debug!(path, "unknown path; 404");
        request.not_found().await;
        return None;
    }
    if !ctx.origin_allowed(request.origin()) {
        debug!(origin = request.origin(), "origin not allowed; 403");
        request.forbidden().await;
        return None;
    }
    // wtransport can answer 403 but not 401, so every token failure on this
    // transport is a 403 (browsers do not expose the status anyway).
    let token = token_from(
        request.headers().get("authorization").map(String::as_str),
        request.path().split_once('?').map(|(_, q)| q),
    );
    let grant = match ctx.auth.check(token.as_deref()) {
        Ok(grant) => grant,
        Err(error) => {
            debug!(%error, "session refused; 403");
            request.forbidden().await;
            return None;
        }
    };
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        debug!("session limit reached; 429");
        request.too_many_requests().await;
        return None;
    };
    let Some(per_ip) = ctx.limits.sessions.acquire(request.remote_address().ip()) else {
        debug!("sessions per address limit reached; 429");
        request.too_many_requests().await;
        return None;
    };
    let origin = request.origin().map(str::to_owned);
    let conn = match request.accept().await {
        Ok(conn) => conn,
        Err(error) => {
            debug!(%error, "session accept failed");
            return None;
        }
    };
    debug!(origin, "session accepted");
    Some(Admitted {
        conn,
        creds: Credentials::new(ctx, grant),
        permit,
        per_ip,
    })
}

/// Where an endpoint config binds: a socket prepared by [`udp_socket`], or
/// (on reload, which keeps the socket) just the address.
enum Bind {
    Socket(std::net::UdpSocket),
    Address(SocketAddr),
}

/// The endpoint's UDP socket, bound to `addr` with `buffer`-byte kernel
/// buffers where the kernel allows them (0: the system's default). The
/// common 208 KiB default holds about a thousand packets: a burst of
/// handshakes or a publish to tens of thousands of sessions overflows it.
pub(crate) fn udp_socket(addr: SocketAddr, buffer: u32) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if buffer > 0 {
        let buffer = buffer as usize;
        // A smaller buffer only costs recovery time under bursts, so a
        // refusal is reported, not fatal.
        let recv = socket
            .set_recv_buffer_size(buffer)
            .and_then(|()| socket.recv_buffer_size());
        let send = socket
            .set_send_buffer_size(buffer)
            .and_then(|()| socket.send_buffer_size());
        match (recv, send) {
            // Linux reports twice the size asked for (bookkeeping included).
            (Ok(r), Ok(s)) if r >= buffer && s >= buffer => {}
            (recv, send) => info!(
                asked = buffer,
                recv = ?recv.ok(),
                send = ?send.ok(),
                "smaller UDP buffers than asked for; bursts to many sessions may be \
                 dropped and resent (raise net.core.rmem_max / wmem_max)"
            ),
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The full endpoint config for `tls`. Rotation rebuilds it whole, since
/// wtransport takes identity and transport settings together.
fn server_config(cfg: &Config, bind: Bind, tls: &TlsMaterial) -> Result<ServerConfig, QuicError> {
    let mut transport = wtransport::config::QuicTransportConfig::default();
    // quinn's `VarInt`, not wtransport's: the two are distinct types.
    transport.max_concurrent_bidi_streams(QuicVarInt::from_u32(cfg.wt_max_streams));
    transport.max_concurrent_uni_streams(QuicVarInt::from_u32(MAX_UNI_STREAMS));
    // Windows are limits, not allocations (quinn buffers lazily), so they
    // cost an idle session nothing. quinn leaves the session-wide one
    // unbounded, which would let a client park up to `--wt-max-streams`
    // stream windows (80 MB at 64) of unread data on a session whose
    // streams are busy writing; a few streams' worth keeps uploads at full
    // speed.
    transport.stream_receive_window(QuicVarInt::from_u32(STREAM_WINDOW));
    transport.receive_window(QuicVarInt::from_u32(SESSION_WINDOW));
    let builder = match bind {
        Bind::Socket(socket) => ServerConfig::builder().with_bind_socket(socket),
        Bind::Address(addr) => ServerConfig::builder().with_bind_address(addr),
    };
    Ok(builder
        .with_custom_transport(tls.identity()?, transport)
        // Without keep-alive an idle browser subscription would hit the idle
        // timeout and be dropped.
        .keep_alive_interval(
            (cfg.wt_keep_alive > 0).then(|| Duration::from_secs(cfg.wt_keep_alive)),
        )
        .max_idle_timeout(Some(Duration::from_secs(cfg.wt_idle_timeout)))
        .map_err(|_| QuicError::IdleTimeout(cfg.wt_idle_timeout))?
        .build())
}

/// The session URL for a bound address: the literal IP (browsers resolve
/// `localhost` to `::1` first), with `127.0.0.1` for an unspecified bind.
fn info_for(addr: SocketAddr, tls: &TlsMaterial) -> WebTransportInfo {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    WebTransportInfo {
        url: format!("https://{}{WT_PATH}", SocketAddr::new(ip, addr.port())),
        cert_sha256: tls.sha256_hex().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubConfig};
    use crate::stats::Stats;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("ladder-quic-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
        fn source(&self) -> CertSource {
            CertSource::Dev {
                dir: self.0.clone(),
            }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn url_uses_a_literal_reachable_ip() {
        let dir = Dir::new("url");
        let tls = TlsMaterial::load(&dir.source(), OffsetDateTime::now_utc()).unwrap();
        let url = |a: &str| info_for(a.parse().unwrap(), &tls).url;
        assert_eq!(url("127.0.0.1:4433"), "https://127.0.0.1:4433/wt");
        assert_eq!(url("0.0.0.0:9"), "https://127.0.0.1:9/wt");
        assert_eq!(url("[::]:9"), "https://127.0.0.1:9/wt");
        assert_eq!(url("[::1]:9"), "https://[::1]:9/wt");
        let info = info_for("127.0.0.1:1".parse().unwrap(), &tls);
        assert_eq!(info.cert_sha256, tls.sha256_hex());
    }

    #[tokio::test]
    async fn rotation_reloads_the_endpoint_and_publishes_the_new_hash() {
        let dir = Dir::new("rotate");
        let now = OffsetDateTime::now_utc();
        let cfg = Config {
            h3: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        let tls = TlsMaterial::load(&dir.source(), now).unwrap();
        let certs = CertStore::new(&tls).unwrap();
        let mut listener = Listener::bind(&cfg, tls, dir.source())
            .unwrap()
            .with_cert_store(certs.clone());
        let hub = Hub::new(HubConfig::default());
        let ctx = Ctx::new(
            cfg,
            hub,
            Arc::new(Stats::new()),
            "127.0.0.1:1".parse().unwrap(),
            crate::auth::Auth::disabled(),
        );
        ctx.set_webtransport(Some(listener.info()));
        let before = listener.info();

        // Not due yet: nothing changes.
        listener.rotate_if_due(&ctx, now).await;
        assert_eq!(ctx.webtransport(), Some(before.clone()));

        // Twelve and a half days on, less than a day is left: a new
        // certificate is made, the endpoint takes it and /api/info says so.
        let later = now + time::Duration::hours(12 * 24 + 12);
        listener.rotate_if_due(&ctx, later).await;
        let after = ctx.webtransport().unwrap();
        assert_ne!(after.cert_sha256, before.cert_sha256);
        assert_eq!(after, listener.info());
        assert_eq!(after.url, before.url);
        assert!(!listener.tls.needs_rotation(later));
        // The TLS listeners present the new certificate from now on.
        assert_eq!(certs.leaf(), listener.tls.leaf_der());
    }

    #[test]
    fn the_udp_socket_gets_the_largest_buffers_the_kernel_allows() {
        let sysctl = |f: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{f}"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let asked = Config::default().wt_udp_buffer;
        let socket = udp_socket("127.0.0.1:0".parse().unwrap(), asked).unwrap();
        let socket = socket2::SockRef::from(&socket);
        let asked = asked as usize;
        // Linux doubles what it grants, for its own bookkeeping.
        assert!(socket.recv_buffer_size().unwrap() >= 2 * asked.min(sysctl("rmem_max")));
        assert!(socket.send_buffer_size().unwrap() >= 2 * asked.min(sysctl("wmem_max")));

        // 0 leaves the system's defaults alone.
        let socket = udp_socket("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let socket = socket2::SockRef::from(&socket);
        assert_eq!(socket.recv_buffer_size().unwrap(), sysctl("rmem_default"));
        assert_eq!(socket.send_buffer_size().unwrap(), sysctl("wmem_default"));
    }
}
