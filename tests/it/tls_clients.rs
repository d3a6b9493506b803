//! Real clients for the TLS listeners (`--https`): HTTP/2 and HTTP/1.1
//! with hyper over tokio-rustls, HTTP/3 with `h3` + `h3-quinn`. Both pin
//! the server's development certificate as their only trusted root, so the
//! handshake verifies it fully (name, validity, signature); nothing here
//! turns verification off.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use axum::body::Body;
use bytes::{Buf, Bytes};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ladder::config::Config;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wtransport::quinn;
use wtransport::tls::rustls;
use wtransport::tls::rustls::pki_types::pem::PemObject;
use wtransport::tls::rustls::pki_types::{CertificateDer, ServerName};

use crate::helpers::*;

/// A server with the TLS listeners on OS-chosen ports.
pub async fn spawn_https() -> Result<TestServer> {
    spawn_https_with(|_| {}).await
}

/// The same, with the configuration adjusted by `f`.
pub async fn spawn_https_with(f: impl FnOnce(&mut Config)) -> Result<TestServer> {
    TestServer::spawn_with(|c| {
        c.https = Some("127.0.0.1:0".parse().expect("address"));
        f(c);
    })
    .await
}

/// The TCP address of the HTTP/1.1 + HTTP/2 listener.
pub fn https_addr(s: &TestServer) -> SocketAddr {
    s.ctx.tls_listeners().expect("--https is on").https
}

/// The UDP address of the HTTP/3 endpoint.
pub fn h3_addr(s: &TestServer) -> SocketAddr {
    s.ctx.tls_listeners().expect("--https is on").h3
}

/// Trust exactly the server's development certificate.
pub fn pinned_roots(s: &TestServer) -> Result<rustls::RootCertStore> {
    let pem = std::fs::read(s.ctx.cfg.certs_dir.join("dev-cert.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    Ok(roots)
}

/// A rustls client config (ring) trusting `roots`, offering `alpn`.
pub fn client_tls(roots: rustls::RootCertStore, alpn: &[&[u8]]) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

/// A TLS connection to `addr` for the name `localhost` (a SAN of the
/// development certificate).
pub async fn tls_connect(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(client_tls(roots, alpn)?));
    let tcp = within("tcp connect", TcpStream::connect(addr)).await??;
    let name = ServerName::try_from("localhost")?;
    Ok(within("tls handshake", connector.connect(name, tcp)).await??)
}

/// An HTTP/2 connection to the TLS listener.
pub struct H2 {
    pub send: hyper::client::conn::http2::SendRequest<Body>,
    /// `https://localhost:PORT`.
    pub origin: String,
    /// Ends with the connection (GOAWAY, close).
    pub driver: tokio::task::JoinHandle<hyper::Result<()>>,
}

impl H2 {
    /// Connects with ALPN `h2` and checks the server chose it.
    pub async fn connect(s: &TestServer) -> Result<Self> {
        let addr = https_addr(s);
        let tls = tls_connect(addr, pinned_roots(s)?, &[b"h2"]).await?;
        ensure!(
            tls.get_ref().1.alpn_protocol() == Some(b"h2"),
            "server did not choose h2"
        );
        let (send, conn) = within(
            "h2 handshake",
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(tls)),
        )
        .await??;
        Ok(Self {
            send,
            origin: format!("https://localhost:{}", addr.port()),
            driver: tokio::spawn(conn),
        })
    }

    /// Sends `method path` with `body`; returns the response head and body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Body,
    ) -> Result<Response<Incoming>> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.origin))
            .header("content-type", "application/json")
            .body(body)?;
        within("h2 ready", self.send.ready()).await??;
        Ok(within("h2 response", self.send.send_request(req)).await??)
    }

    /// GET `path`, the whole body as JSON.
    pub async fn get_json(&mut self, path: &str) -> Result<(u16, Value)> {
        let resp = self.request("GET", path, Body::empty()).await?;
        let status = resp.status().as_u16();
        let body = read_all(resp.into_body()).await?;
        Ok((status, serde_json::from_slice(&body)?))
    }

    /// POST a JSON value to a channel; returns status and body.
    pub async fn publish(&mut self, channel: &str, data: &Value) -> Result<(u16, Value)> {
        let path = format!("/api/channels/{channel}/messages");
        let resp = self
            .request("POST", &path, Body::from(data.to_string()))
            .await?;
        let status = resp.status().as_u16();
        let body = read_all(resp.into_body()).await?;
        Ok((status, serde_json::from_slice(&body)?))
    }
}

/// One frame of a hyper body (`None` at its end).
pub async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>> {
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
        match within("body frame", frame).await? {
            None => return Ok(None),
            Some(frame) => match frame?.into_data() {
                Ok(data) => return Ok(Some(data)),
                Err(_trailers) => continue,
            },
        }
    }
}

/// A whole hyper body.
pub async fn read_all(mut body: Incoming) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await? {
        all.extend_from_slice(&chunk);
    }
    Ok(all)
}

/// Splits an SSE text buffer into the `data:` of complete `message`
/// events, leaving an incomplete tail in `buf`.
pub fn take_sse_messages(buf: &mut String) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let event: String = buf.drain(..end + 2).collect();
        if event.lines().any(|l| l == "event: message") {
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .context("event without data")?;
            out.push(serde_json::from_str(data)?);
        }
    }
    Ok(out)
}

/// An HTTP/3 connection (quinn client endpoint, `h3` client).
pub struct H3 {
    pub send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    pub origin: String,
    /// Ends with the connection; yields why it closed.
    pub driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
    pub endpoint: quinn::Endpoint,
    /// The QUIC connection under it, for streams `h3` would not send.
    pub conn: quinn::Connection,
}

/// One HTTP/3 request stream.
pub type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

impl H3 {
    /// Connects to the HTTP/3 endpoint with ALPN `h3`.
    pub async fn connect(s: &TestServer) -> Result<Self> {
        let addr = h3_addr(s);
        let tls = client_tls(pinned_roots(s)?, &[b"h3"])?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = within("quic handshake", endpoint.connect(addr, "localhost")?).await??;
        let (mut driver, send) = within(
            "h3 setup",
            h3::client::new(h3_quinn::Connection::new(conn.clone())),
        )
        .await??;
        let driver =
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        Ok(Self {
            send,
            origin: format!("https://localhost:{}", addr.port()),
            driver,
            endpoint,
            conn,
        })
    }

    /// Sends a request with `body` (finished); returns the status and the
    /// stream to read the body from.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, H3Stream)> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.origin))
            .header("content-type", "application/json")
            .body(())?;
        let mut stream = within("h3 request", self.send.send_request(req)).await??;
        if let Some(body) = body {
            within("h3 request body", stream.send_data(body)).await??;
        }
        within("h3 finish", stream.finish()).await??;
        let resp = within("h3 response", stream.recv_response()).await??;
        Ok((resp.status().as_u16(), stream))
    }

    /// A whole request: status and JSON body.
    pub async fn json(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, Value)> {
        let (status, mut stream) = self.request(method, path, body).await?;
        let body = h3_read_all(&mut stream).await?;
        Ok((status, serde_json::from_slice(&body)?))
    }
}

/// One DATA frame of an HTTP/3 response (`None` at its end).
pub async fn h3_chunk(stream: &mut H3Stream) -> Result<Option<Bytes>> {
    match within("h3 data", stream.recv_data()).await? {
        Ok(Some(mut buf)) => Ok(Some(buf.copy_to_bytes(buf.remaining()))),
        Ok(None) => Ok(None),
        Err(e) => bail!("h3 stream failed: {e}"),
    }
}

/// A whole HTTP/3 response body.
pub async fn h3_read_all(stream: &mut H3Stream) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    while let Some(chunk) = h3_chunk(stream).await? {
        all.extend_from_slice(&chunk);
    }
    Ok(all)
}
