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

use crate::auth::Auth;
use crate::config::Config;
use crate::context::Ctx;
use crate::hub::{BackendError, Hub, HubConfig, now_ms};
use crate::quic::{self, QuicError};
use crate::stats::{Stats, Transport};
use crate::tls::{CertSource, TlsError, TlsMaterial};

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
    http: TcpListener,
    /// The WebTransport endpoint; `None` when that transport is disabled.
    quic: Option<quic::Listener>,
    tls: Option<TlsMaterial>,
}

impl Server {
    /// Binds the listeners and prepares the certificate.
    pub async fn bind(cfg: Config) -> Result<Self, ServerError> {
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
        let quic = match cfg.enabled(Transport::WebTransport) {
            true => Some(quic::Listener::bind(&cfg, tls.clone(), source)?),
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
        Ok(Self {
            ctx,
            http,
            quic,
            tls: Some(tls),
        })
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.ctx.http_addr
    }

    /// The UDP address of the WebTransport endpoint, unless disabled.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().map(quic::Listener::local_addr)
    }

    /// The shared state (hub, counters, configuration).
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
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
        format!(
            "ladder {} ready http=http://{} webtransport={} cert_sha256={}",
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
        ctx.tasks.spawn(crate::http::run(self.http, ctx.clone()));
        // It closes its endpoint itself once the shutdown token fires,
        // after its accept loop has stopped.
        if let Some(quic) = self.quic {
            ctx.tasks.spawn(quic.run(ctx.clone()));
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
