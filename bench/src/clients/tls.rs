//! SSE over the TLS listeners (`--https`): HTTP/2 (hyper over tokio-rustls)
//! and HTTP/3 (`h3` + `h3-quinn`), so one run can compare SSE over all
//! three HTTP versions. As with HTTP/1.1, every subscriber has a connection
//! of its own from its own source address: a browser tab per subscriber,
//! not many streams of one connection (that would measure multiplexing, not
//! the cost of a subscriber).
//!
//! Both pin the server's certificate by its SHA-256 from `/api/info`, as a
//! browser's `serverCertificateHashes` does; the handshake's signature is
//! still checked against that certificate's key.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::{Buf, Bytes};
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::TlsConnector;
use wtransport::quinn;
use wtransport::tls::rustls;

use self::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use self::rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use self::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use self::rustls::{DigitallySignedStruct, SignatureScheme};
use super::http::{Events, read_events};
use super::{Ready, SubCtx, complete, set_ready};
use crate::probe::TlsTarget;
use crate::sys::{src_ip, tcp_connect};
use crate::track::Tracker;

/// The name the development certificate is issued for.
const SERVER_NAME: &str = "localhost";

/// Client configurations for one run, pinned to the server's certificate.
pub struct Pinned {
    /// The server's TLS listeners.
    pub target: TlsTarget,
    h2: TlsConnector,
    h3: quinn::ClientConfig,
}

impl Pinned {
    /// Configurations trusting only the certificate whose SHA-256 is
    /// `target.cert_sha256`.
    pub fn new(target: TlsTarget) -> Result<Self> {
        let h2 = TlsConnector::from(Arc::new(config(&target.cert_sha256, b"h2")?));
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(config(&target.cert_sha256, b"h3")?)?;
        let h3 = quinn::ClientConfig::new(Arc::new(crypto));
        Ok(Self { target, h2, h3 })
    }
}

fn config(sha256_hex: &str, alpn: &[u8]) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let sha256 = (0..sha256_hex.len())
        .step_by(2)
        .map(|k| u8::from_str_radix(sha256_hex.get(k..k + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .context("certificate hash is not hex")?;
    let verifier = Arc::new(HashPinned {
        sha256,
        provider: provider.clone(),
    });
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    Ok(c)
}

/// Accepts exactly the certificate with this SHA-256, and handshakes signed
/// by its key.
#[derive(Debug)]
struct HashPinned {
    sha256: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for HashPinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if digest.as_ref() == self.sha256.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate does not match the pinned SHA-256".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pinned(ctx: &SubCtx) -> Result<&Pinned> {
    ctx.tls
        .as_ref()
        .context("the server has no TLS listeners (--https)")
}

fn events_url(addr: SocketAddr, ctx: &SubCtx) -> String {
    format!(
        "https://{SERVER_NAME}:{}/api/channels/{}/events?since=0",
        addr.port(),
        ctx.channel
    )
}

/// SSE over HTTP/2: one TLS connection, one stream.
pub(super) async fn sse_h2(
    ctx: &SubCtx,
    i: usize,
    ready: &mut Option<Ready>,
    t: &mut Tracker,
) -> Result<()> {
    let p = pinned(ctx)?;
    let addr = p.target.https;
    let tcp = tcp_connect(src_ip(i, ctx.src_ips), addr).await?;
    let tls =
        p.h2.connect(ServerName::try_from(SERVER_NAME)?, tcp)
            .await?;
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await?;
    tokio::spawn(conn);
    let req = Request::get(events_url(addr, ctx)).body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    if resp.status() != 200 {
        bail!("sse over h2 answered {}", resp.status());
    }
    set_ready(ready);
    read_events(ctx, i, t, resp.into_body()).await
}

/// SSE over HTTP/3: one QUIC connection (on its own UDP socket), one
/// request stream.
pub(super) async fn sse_h3(
    ctx: &SubCtx,
    i: usize,
    ready: &mut Option<Ready>,
    t: &mut Tracker,
) -> Result<()> {
    let p = pinned(ctx)?;
    let addr = p.target.h3;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(src_ip(i, ctx.src_ips), 0))?;
    endpoint.set_default_client_config(p.h3.clone());
    let conn = endpoint.connect(addr, SERVER_NAME)?.await?;
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
    let drive = tokio::spawn(async move {
        std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let req = Request::get(events_url(addr, ctx)).body(())?;
    let mut stream = send.send_request(req).await?;
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    if resp.status() != 200 {
        bail!("sse over h3 answered {}", resp.status());
    }
    set_ready(ready);
    let mut events = Events::default();
    let mut stop = ctx.stop.clone();
    let r = loop {
        if complete(ctx, t) {
            break Ok(());
        }
        let chunk = tokio::select! {
            _ = stop.changed() => break Ok(()),
            c = stream.recv_data() => c,
        };
        match chunk {
            Ok(Some(mut buf)) => {
                let data = buf.copy_to_bytes(buf.remaining());
                if events.feed(ctx, i, t, &data) {
                    break Ok(());
                }
            }
            Ok(None) => break Err(anyhow::anyhow!("sse stream over h3 ended")),
            Err(e) => break Err(e.into()),
        }
    };
    drive.abort();
    endpoint.close(0u32.into(), b"done");
    r
}
