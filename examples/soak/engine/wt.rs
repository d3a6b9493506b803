//! A WebTransport client: sessions pinning the served certificate, and
//! line-framed streams.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::time::timeout;

use super::STEP;
use super::subscribers::Endpoints;

pub(crate) type WtClient = (
    wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
    wtransport::Connection,
);

/// A WebTransport session to the server, pinning `/api/info`'s hash.
pub(crate) async fn wt_connect(ep: &Endpoints, http: &reqwest::Client) -> Result<WtClient> {
    let info: Value = timeout(STEP, async {
        http.get(format!("{}/api/info", ep.http))
            .send()
            .await?
            .json()
            .await
    })
    .await??;
    let url = info["webtransport"]["url"]
        .as_str()
        .context("webtransport.url")?;
    let hex = info["webtransport"]["cert_sha256"]
        .as_str()
        .context("cert_sha256")?;
    let mut hash = [0u8; 32];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).context("hash")?, 16)?;
    }
    // A killed server sends nothing; without keep-alives and a short idle
    // timeout the client would wait out QUIC's default idle period before
    // noticing, and fall out of the history meanwhile.
    let cfg = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        .keep_alive_interval(Some(Duration::from_millis(500)))
        .max_idle_timeout(Some(Duration::from_secs(2)))?
        .build();
    let endpoint = wtransport::Endpoint::client(cfg)?;
    let conn = timeout(STEP, endpoint.connect(url)).await??;
    Ok((endpoint, conn))
}

/// Reads `\n`-terminated JSON lines off a WebTransport stream.
pub(crate) struct WtLines {
    pub(crate) send: wtransport::SendStream,
    pub(crate) recv: wtransport::RecvStream,
    pub(crate) buf: Vec<u8>,
}

impl WtLines {
    pub(crate) async fn open(conn: &wtransport::Connection) -> Result<Self> {
        let (send, recv) =
            timeout(STEP, async { anyhow::Ok(conn.open_bi().await?.await?) }).await??;
        Ok(Self {
            send,
            recv,
            buf: Vec::new(),
        })
    }

    pub(crate) async fn send(&mut self, op: &Value) -> Result<()> {
        timeout(STEP, self.send.write_all(format!("{op}\n").as_bytes())).await??;
        Ok(())
    }

    pub(crate) async fn next(&mut self) -> Result<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(serde_json::from_slice(&line)?);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.recv.read(&mut chunk).await? {
                Some(n) => self.buf.extend_from_slice(&chunk[..n]),
                None => bail!("stream finished"),
            }
        }
    }
}
