//! What every adapter receives: the hub, the counters, the configuration and
//! the shutdown signal. Built once by the server and shared (cloning is
//! shallow).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::stats::Stats;

/// Where browsers reach the WebTransport endpoint and which certificate hash
/// they must pin. Changes when the development certificate rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebTransportInfo {
    /// `https://HOST:PORT/wt`.
    pub url: String,
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    pub cert_sha256: String,
}

/// Where the TLS listeners (`--https`) are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsListeners {
    /// HTTP/1.1 + HTTP/2 over TLS, TCP.
    pub https: SocketAddr,
    /// HTTP/3, UDP (same port number as `https`).
    pub h3: SocketAddr,
}

/// Shared server state.
#[derive(Debug, Clone)]
pub struct Ctx(Arc<Inner>);

/// The fields behind [`Ctx`].
#[derive(Debug)]
pub struct Inner {
    /// The configuration the server started with.
    pub cfg: Config,
    /// The one hub.
    pub hub: Hub,
    /// Every counter.
    pub stats: Arc<Stats>,
    /// Cancelled when the server begins shutting down; every long-lived loop
    /// selects on it.
    pub shutdown: CancellationToken,
    /// Tracks tasks that outlive the request that started them (upgraded
    /// WebSockets, QUIC sessions), so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Token verification (disabled unless a JWT secret is configured).
    pub auth: Auth,
    /// Per-client limits.
    pub limits: Limits,
    /// The bound HTTP address (for the default origin allowlist).
    pub http_addr: SocketAddr,
    webtransport: RwLock<Option<WebTransportInfo>>,
    allowed_origins: Vec<String>,
    /// The network lab beside the server (`--lab`), set once at start.
    lab: std::sync::OnceLock<ladder_lab::Lab>,
    /// Set once the TLS listeners are bound.
    tls_listeners: OnceLock<TlsListeners>,
    /// The TLS listeners' own origins, allowed when the allowlist is the
    /// default one.
    tls_origins: OnceLock<Vec<String>>,
}

impl Deref for Ctx {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Ctx {
    /// Builds the shared state.
    pub fn new(
        cfg: Config,
        hub: Hub,
        stats: Arc<Stats>,
        http_addr: SocketAddr,
        auth: Auth,
    ) -> Self {
        let allowed_origins = if cfg.allowed_origins.is_empty() {
            let port = http_addr.port();
            let mut own = vec![
                format!("http://127.0.0.1:{port}"),
                format!("http://localhost:{port}"),
                format!("http://[::1]:{port}"),
            ];
            let bound = format!("http://{http_addr}");
            if !own.contains(&bound) {
                own.push(bound);
            }
            own
        } else {
            cfg.allowed_origins.clone()
        };
        let limits = Limits::new(
            cfg.max_connections_per_ip,
            cfg.max_long_polls_per_ip,
            cfg.wt_max_sessions_per_ip,
            cfg.publish_rate,
        );
        Self(Arc::new(Inner {
            auth,
            limits,
            cfg,
            hub,
            stats,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            http_addr,
            webtransport: RwLock::new(None),
            allowed_origins,
            lab: std::sync::OnceLock::new(),
            tls_listeners: OnceLock::new(),
            tls_origins: OnceLock::new(),
        }))
    }

    /// Whether a browser page from `origin` may open a WebSocket or
    /// WebTransport session. Clients that send no `Origin` (not browsers)
    /// are not subject to the check.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(o) => {
                self.allowed_origins.iter().any(|a| a == "*" || a == o)
                    // The page opened through a lab condition: the relay's
                    // origin stands for this server's own.
                    || (self.cfg.allowed_origins.is_empty()
                        && self.lab().is_some_and(|lab| crate::lab::origins(lab).any(|l| l == o)))
                    || self
                        .tls_origins
                        .get()
                        .is_some_and(|own| own.iter().any(|a| a == o))
            }
        }
    }

    /// The network lab, when running.
    pub fn lab(&self) -> Option<&ladder_lab::Lab> {
        self.lab.get()
    }

    /// Installs the network lab (once; a second call is ignored).
    pub fn set_lab(&self, lab: ladder_lab::Lab) {
        let _ = self.lab.set(lab);
    }

    /// Records where the TLS listeners are bound; with the default
    /// allowlist, pages they serve may open WebSockets and WebTransport
    /// sessions too. Only the first call counts.
    pub fn set_tls_listeners(&self, l: TlsListeners) {
        if self.cfg.allowed_origins.is_empty() {
            let port = l.https.port();
            let own = ["127.0.0.1", "localhost", "[::1]"]
                .map(|host| format!("https://{host}:{port}"))
                .into_iter()
                .chain([format!("https://{}", l.https)])
                .collect();
            let _ = self.tls_origins.set(own);
        }
        let _ = self.tls_listeners.set(l);
    }

    /// Where the TLS listeners are, when running.
    pub fn tls_listeners(&self) -> Option<TlsListeners> {
        self.tls_listeners.get().copied()
    }

    /// The WebTransport endpoint as browsers should use it now, if running.
    pub fn webtransport(&self) -> Option<WebTransportInfo> {
        self.webtransport
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes a new WebTransport URL / certificate hash.
    pub fn set_webtransport(&self, info: Option<WebTransportInfo>) {
        *self
            .webtransport
            .write()
            .unwrap_or_else(PoisonError::into_inner) = info;
    }
}
