//! The certificate the TCP TLS listener and the HTTP/3 endpoint present,
//! swappable while they run.
//!
//! Entry point: [`CertStore`]. Each listener builds its rustls config once
//! with [`CertStore::server_config`]; rustls asks the store for the
//! certificate on every handshake, so [`CertStore::set`] (called when the
//! development certificate rotates) reaches every new connection, and open
//! connections keep the keys they agreed on.

use std::sync::{Arc, PoisonError, RwLock};

use wtransport::tls::rustls;
use wtransport::tls::rustls::server::{ClientHello, ResolvesServerCert};
use wtransport::tls::rustls::sign::CertifiedKey;

use super::{TlsError, TlsMaterial};

/// ALPN id of HTTP/2 (RFC 9113, section 3.2).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// ALPN id of HTTP/3 (RFC 9114, section 3.1).
pub const ALPN_H3: &[u8] = b"h3";

/// The current certificate, shared by the listeners (cloning is shallow).
#[derive(Debug, Clone)]
pub struct CertStore(Arc<Resolver>);

/// What rustls consults on each handshake.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

impl CertStore {
    /// A store presenting `tls`.
    pub fn new(tls: &TlsMaterial) -> Result<Self, TlsError> {
        Ok(Self(Arc::new(Resolver {
            current: RwLock::new(Arc::new(tls.certified_key()?)),
        })))
    }

    /// Presents `tls` from the next handshake on.
    pub fn set(&self, tls: &TlsMaterial) -> Result<(), TlsError> {
        let key = Arc::new(tls.certified_key()?);
        *self
            .0
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }

    /// The leaf certificate presented now, DER.
    pub fn leaf(&self) -> Vec<u8> {
        let key = self
            .0
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        key.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }

    /// A rustls server config (ring provider, as wtransport's) offering
    /// `alpn` in order of preference. TLS 1.3 only for HTTP/3, which
    /// requires it (RFC 9001, section 4.2); TLS 1.2 too over TCP.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if alpn.contains(&ALPN_H3) {
            &[&rustls::version::TLS13]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.0.clone());
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(Arc::new(config))
    }
}
