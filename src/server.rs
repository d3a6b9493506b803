//! The composition root: [`Server::bind`] binds every listener and loads the
//! certificate, reporting the real addresses; [`Server::run`] serves until
//! the shutdown token fires, then shuts down within a bounded time.
//!
//! Tests and `main` start the server the same way, with port 0 in tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use axum::http::HeaderValue;
use tokio_rustls::TlsAcceptor;
use wtransport::tls::rustls;

use crate::auth::Auth;
use crate::config::Config;
use crate::context::{Ctx, TlsListeners};
use crate::http::h3;
use crate::http::https::Https;
use crate::hub::{BackendError, Hub, HubConfig, now_ms};
use crate::quic;
use crate::stats::{Stats, Transport};
use crate::tls::{ALPN_H2, ALPN_HTTP11, CertSource, CertStore, TlsError, TlsMaterial};
use crate::transport::Fanouts;

// The listeners' start-up errors, named by `ServerError`.
pub use crate::http::h3::H3Error;
pub use crate::quic::QuicError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The HTTP listener could not bind.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    BindHttp {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The JWT secret file could not be read, or the secret is empty.
    #[error("cannot use the JWT secret from {path}: {reason}")]
    Secret {
        /// Where the secret was looked for.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The certificate could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS listener could not bind.
    #[error("cannot listen for HTTPS on {addr}: {source}")]
    BindHttps {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The HTTP/3 endpoint could not start.
    #[error(transparent)]
    H3(#[from] H3Error),
    /// The QUIC endpoint could not start.
    #[error(transparent)]
    Quic(#[from] QuicError),
    /// The network lab's relays could not start.
    #[error(transparent)]
    Lab(#[from] ladder_lab::LabError),
    /// The log backend could not be opened: a damaged data file, a data
    /// directory in use, or Redis unreachable.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    ctx: Ctx,
    /// The channels' fan-outs, handed to both listeners for their socket
    /// adapters.
    fanouts: Fanouts,
    http: TcpListener,
    /// The WebTransport endpoint; `None` when that transport is disabled.
    quic: Option<quic::Listener>,
    tls: Option<TlsMaterial>,
    /// The TLS listeners (`--https`), when asked for.
    secure: Option<Secure>,
}

/// The bound TLS listeners: HTTP/1.1 + HTTP/2 on TCP, HTTP/3 on UDP.
#[derive(Debug)]
struct Secure {
    tcp: TcpListener,
    h3: h3::Listener,
    certs: CertStore,
    /// rustls settings of the TCP listener (ALPN `h2`, `http/1.1`).
    tcp_tls: Arc<rustls::ServerConfig>,
    /// Where a rotated certificate comes from.
    source: CertSource,
}

impl Server {
    /// Binds the listeners and prepares the certificate.
    pub async fn bind(mut cfg: Config) -> Result<Self, ServerError> {
        let (http, h3) = (
            crate::lab::listen_addr(&cfg, cfg.http),
            crate::lab::listen_addr(&cfg, cfg.h3),
        );
        if (http, h3) != (cfg.http, cfg.h3) {
            info!(%http, %h3, "inside the lab's namespace: listening on every address, so lossy-link's wire reaches this server");
            (cfg.http, cfg.h3) = (http, h3);
        }
        if cfg.ws_fanout == crate::config::WsFanout::Uring && !cfg!(feature = "uring") {
            warn!(
                "built without the `uring` feature: --ws-fanout uring writes one socket at a time"
            );
        }
        let http = TcpListener::bind(cfg.http)
            .await
            .map_err(|source| ServerError::BindHttp {
                addr: cfg.http,
                source,
            })?;
        let http_addr = http.local_addr().map_err(|source| ServerError::BindHttp {
            addr: cfg.http,
            source,
        })?;
        let source = match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key)) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => CertSource::Dev {
                dir: cfg.certs_dir.clone(),
            },
        };
        let tls = TlsMaterial::load(&source, time::OffsetDateTime::now_utc())?;
        let secure = match cfg.https {
            Some(addr) => Some(bind_secure(&cfg, addr, &tls, source.clone()).await?),
            None => None,
        };
        let quic = match cfg.enabled(Transport::WebTransport) {
            true => {
                let quic = quic::Listener::bind(&cfg, tls.clone(), source)?;
                Some(match &secure {
                    Some(s) => quic.with_cert_store(s.certs.clone()),
                    None => quic,
                })
            }
            false => None,
        };
        let hub = Hub::open(HubConfig {
            history: cfg.history as usize,
            max_channels: cfg.max_channels,
            idle_ttl: Duration::from_secs(cfg.channel_idle_secs),
            backend: cfg.backend(),
            presence: cfg.presence(),
        })
        .await?;
        let auth = auth_from(&cfg)?;
        let ctx = Ctx::new(cfg, hub, Arc::new(Stats::new()), http_addr, auth);
        ctx.set_webtransport(quic.as_ref().map(quic::Listener::info));
        let quic_addr = quic.as_ref().map(quic::Listener::local_addr);
        let lab_stop = ctx.shutdown.child_token();
        if let Some(lab) = crate::lab::start(&ctx.cfg, http_addr, quic_addr, lab_stop).await? {
            for c in &lab.conditions {
                info!(condition = %c.name, http = %c.http, webtransport = %c.webtransport, "lab");
            }
            for u in &lab.unavailable {
                info!(condition = %u.name, reason = %u.reason, "lab condition not offered");
            }
            ctx.set_lab(lab);
        }
        if let Some(s) = &secure {
            ctx.set_tls_listeners(TlsListeners {
                https: s
                    .tcp
                    .local_addr()
                    .map_err(|source| ServerError::BindHttps {
                        addr: ctx.cfg.https.unwrap_or(ctx.cfg.http),
                        source,
                    })?,
                h3: s.h3.local_addr(),
            });
        }
        Ok(Self {
            ctx,
            fanouts: Fanouts::default(),
            http,
            quic,
            tls: Some(tls),
            secure,
        })
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.ctx.http_addr
    }

    /// The TCP address of the TLS listener (HTTP/1.1 + HTTP/2), when on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.ctx.tls_listeners().map(|l| l.https)
    }

    /// The UDP address of the HTTP/3 endpoint, when on.
    pub fn h3_addr(&self) -> Option<SocketAddr> {
        self.ctx.tls_listeners().map(|l| l.h3)
    }

    /// The UDP address of the WebTransport endpoint, unless disabled.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().map(quic::Listener::local_addr)
    }

    /// The shared state (hub, counters, configuration).
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// The channels' fan-outs (for tests and diagnostics).
    pub fn fanouts(&self) -> &Fanouts {
        &self.fanouts
    }

    /// SHA-256 of the certificate, lowercase hex.
    pub fn cert_sha256(&self) -> Option<&str> {
        self.tls.as_ref().map(TlsMaterial::sha256_hex)
    }

    /// The start-up line: bound addresses and the certificate hash.
    pub fn banner(&self) -> String {
        let wt = self
            .ctx
            .webtransport()
            .map_or_else(|| "disabled".to_owned(), |w| w.url);
        let (https, h3) = self.ctx.tls_listeners().map_or_else(
            || ("off".to_owned(), "off".to_owned()),
            |l| (format!("https://{}", l.https), format!("https://{}", l.h3)),
        );
        format!(
            "ladder {} ready http=http://{} https={https} h3={h3} webtransport={} cert_sha256={}",
            env!("CARGO_PKG_VERSION"),
            self.http_addr(),
            wt,
            self.cert_sha256().unwrap_or("none"),
        )
    }

    /// Serves until `shutdown` is cancelled, then closes every connection
    /// cleanly (SSE streams end, WebSockets get 1001, long polls answer) and
    /// returns once all tasks are done or the shutdown timeout passes.
    pub async fn run(self, shutdown: CancellationToken) {
        let ctx = self.ctx;
        let fanouts = self.fanouts;
        ctx.tasks
            .spawn(crate::http::run(self.http, ctx.clone(), fanouts.clone()));
        // It closes its endpoint itself once the shutdown token fires,
        // after its accept loop has stopped.
        if let Some(secure) = self.secure {
            let alt_svc = HeaderValue::try_from(format!(
                "h3=\":{}\"; ma=86400",
                secure.h3.local_addr().port()
            ))
            .ok();
            let https = Https {
                acceptor: TlsAcceptor::from(secure.tcp_tls),
                alt_svc,
            };
            ctx.tasks.spawn(crate::http::https::run(
                secure.tcp,
                ctx.clone(),
                fanouts.clone(),
                https,
            ));
            ctx.tasks.spawn(secure.h3.run(ctx.clone(), fanouts.clone()));
            if let (None, Some(tls)) = (&self.quic, self.tls) {
                // No WebTransport endpoint, whose rotation would cover these.
                ctx.tasks
                    .spawn(rotate(ctx.clone(), secure.certs, tls, secure.source));
            }
        }
        if let Some(quic) = self.quic {
            ctx.tasks.spawn(quic.run(ctx.clone(), fanouts));
        }
        ctx.tasks.spawn(sweep(ctx.clone()));
        ctx.tasks
            .spawn(ctx.hub.presence().clone().run(ctx.shutdown.clone()));
        shutdown.cancelled().await;
        info!("shutting down");
        ctx.shutdown.cancel();
        ctx.tasks.close();
        let limit = Duration::from_secs(ctx.cfg.shutdown_timeout);
        if tokio::time::timeout(limit, ctx.tasks.wait()).await.is_err() {
            warn!(
                remaining = ctx.tasks.len(),
                "shutdown timed out; dropping the remaining connections"
            );
        }
        // Last: publishes still in flight have been answered, so the
        // durable log can be flushed and closed (and Redis let go).
        ctx.hub.close().await;
    }
}

/// Tries to find a port free on both TCP and UDP when port 0 is asked for.
const PORT_TRIES: usize = 16;

/// Binds the TLS listener on TCP `addr` and HTTP/3 on the UDP port with
/// the same number. With port 0 the OS picks the TCP port, and another is
/// tried while that number is taken on UDP.
async fn bind_secure(
    cfg: &Config,
    addr: SocketAddr,
    tls: &TlsMaterial,
    source: CertSource,
) -> Result<Secure, ServerError> {
    let certs = CertStore::new(tls)?;
    let tcp_tls = certs.server_config(&[ALPN_H2, ALPN_HTTP11])?;
    let bind_err = |source| ServerError::BindHttps { addr, source };
    let mut tries = 0;
    loop {
        let tcp = TcpListener::bind(addr).await.map_err(bind_err)?;
        let port = tcp.local_addr().map_err(bind_err)?.port();
        match h3::Listener::bind(cfg, SocketAddr::new(addr.ip(), port), &certs) {
            Ok(h3) => {
                return Ok(Secure {
                    tcp,
                    h3,
                    certs,
                    tcp_tls,
                    source,
                });
            }
            Err(H3Error::Bind { .. }) if addr.port() == 0 && tries < PORT_TRIES => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Keeps the TLS listeners' development certificate fresh when no
/// WebTransport endpoint does it (see [`quic`]'s rotation).
async fn rotate(ctx: Ctx, certs: CertStore, mut tls: TlsMaterial, source: CertSource) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = time::OffsetDateTime::now_utc();
        if !tls.needs_rotation(now) {
            continue;
        }
        let source = source.clone();
        match tokio::task::spawn_blocking(move || TlsMaterial::load(&source, now)).await {
            Ok(Ok(fresh)) => match certs.set(&fresh) {
                Ok(()) => {
                    info!(
                        cert_sha256 = fresh.sha256_hex(),
                        "development certificate rotated"
                    );
                    tls = fresh;
                }
                Err(error) => warn!(%error, "certificate rotation failed; will retry"),
            },
            Ok(Err(error)) => warn!(%error, "certificate rotation failed; will retry"),
            Err(error) => warn!(%error, "certificate rotation task failed"),
        }
    }
}

/// Builds the token verifier from `--jwt-secret` / `--jwt-secret-file`.
fn auth_from(cfg: &Config) -> Result<Auth, ServerError> {
    let (secret, path) = match (&cfg.jwt_secret, &cfg.jwt_secret_file) {
        (Some(s), _) => (s.clone(), "--jwt-secret".to_owned()),
        (None, Some(file)) => {
            let path = file.display().to_string();
            let s = std::fs::read_to_string(file).map_err(|e| ServerError::Secret {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            (s.trim_end_matches(['\n', '\r']).to_owned(), path)
        }
        (None, None) => return Ok(Auth::disabled()),
    };
    if secret.is_empty() {
        return Err(ServerError::Secret {
            path,
            reason: "the secret is empty".into(),
        });
    }
    Ok(Auth::hs256(secret.as_bytes()))
}

/// Evicts idle channels now and then, so names used once do not hold
/// memory forever.
async fn sweep(ctx: Ctx) {
    let period = Duration::from_secs(ctx.cfg.channel_idle_secs.clamp(1, 60));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {
                let n = ctx.hub.sweep(now_ms());
                if n > 0 {
                    tracing::debug!(evicted = n, "idle channels evicted");
                }
            }
        }
    }
}
