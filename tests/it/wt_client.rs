//! The WebTransport test client: a session to the server's `/wt` pinning
//! the certificate hash `/api/info` serves (validation stays on), and
//! bidirectional streams of `\n`-terminated JSON lines that report how they
//! ended.

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use wtransport::endpoint::endpoint_side::Client;
use wtransport::error::StreamReadError;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

use crate::helpers::*;

/// The URL and pinned hash `/api/info` serves.
pub async fn info(s: &TestServer) -> Result<(String, String)> {
    let (status, body) = s.get_json("/api/info").await?;
    ensure!(status == 200, "/api/info answered {status}");
    let wt = &body["webtransport"];
    let url = wt["url"].as_str().context("webtransport.url")?.to_owned();
    let hash = wt["cert_sha256"]
        .as_str()
        .context("cert_sha256")?
        .to_owned();
    Ok((url, hash))
}

pub fn digest(hex: &str) -> Result<Sha256Digest> {
    ensure!(hex.len() == 64, "hash {hex:?} is not 64 hex digits");
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(Sha256Digest::new(bytes))
}

pub fn hex(d: &Sha256Digest) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A client endpoint that trusts exactly the certificate with `hash`.
pub fn client(hash: &str) -> Result<Endpoint<Client>> {
    let cfg = ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([digest(hash)?])
        .build();
    Ok(Endpoint::client(cfg)?)
}

/// A WebTransport session to the server's `/wt`, trusting `/api/info`'s hash.
pub struct Wt {
    pub conn: Connection,
    /// The session URL, query included.
    pub url: String,
    /// Kept so the client socket outlives the session.
    _endpoint: Endpoint<Client>,
}

impl Wt {
    pub async fn connect(s: &TestServer) -> Result<Self> {
        Self::connect_with_query(s, "").await
    }

    /// Connects to the session URL with `query` (e.g. `?token=…`) appended.
    pub async fn connect_with_query(s: &TestServer, query: &str) -> Result<Self> {
        let (url, hash) = info(s).await?;
        let url = format!("{url}{query}");
        let endpoint = client(&hash)?;
        let conn = within("wt connect", endpoint.connect(&url)).await??;
        Ok(Self {
            conn,
            url,
            _endpoint: endpoint,
        })
    }

    pub async fn stream(&self) -> Result<Lines> {
        Lines::open(&self.conn).await
    }
}

/// One bidirectional stream speaking `\n`-terminated JSON lines.
pub struct Lines {
    send: SendStream,
    recv: RecvStream,
    buf: Vec<u8>,
}

/// How reading a stream ended when no line came.
#[derive(Debug, PartialEq)]
pub enum End {
    Finished,
    Reset(u64),
    Gone,
}

impl Lines {
    pub async fn open(conn: &Connection) -> Result<Self> {
        let (send, recv) = within("open_bi", async {
            anyhow::Ok(conn.open_bi().await?.await?)
        })
        .await??;
        Ok(Self {
            send,
            recv,
            buf: Vec::new(),
        })
    }

    pub async fn send(&mut self, op: Value) -> Result<()> {
        self.send_raw(format!("{op}\n").as_bytes()).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        within("stream write", self.send.write_all(bytes)).await??;
        Ok(())
    }

    /// Finishes the client's send side.
    pub async fn finish(&mut self) -> Result<()> {
        within("stream finish", self.send.finish()).await??;
        Ok(())
    }

    /// Resets the client's send side with `code`.
    pub fn reset(&mut self, code: u32) -> Result<()> {
        self.send.reset(wtransport::VarInt::from_u32(code))?;
        Ok(())
    }

    /// The next line as JSON, or how the stream ended.
    pub async fn next(&mut self) -> Result<Result<Value, End>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Ok(serde_json::from_slice(&line)?));
            }
            let mut chunk = [0u8; 16 * 1024];
            match within("stream read", self.recv.read(&mut chunk)).await? {
                Ok(Some(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(None) => return Ok(Err(End::Finished)),
                Err(StreamReadError::Reset(code)) => return Ok(Err(End::Reset(code.into_inner()))),
                Err(_) => return Ok(Err(End::Gone)),
            }
        }
    }

    pub async fn recv(&mut self) -> Result<Value> {
        match self.next().await? {
            Ok(v) => Ok(v),
            Err(end) => bail!("stream ended: {end:?}"),
        }
    }

    pub async fn subscribe(&mut self, op: Value) -> Result<Value> {
        self.send(op).await?;
        let reply = self.recv().await?;
        ensure!(
            reply["op"] == "subscribed",
            "expected subscribed, got {reply}"
        );
        Ok(reply)
    }

    pub async fn echo(&mut self, data: Value) -> Result<()> {
        self.send(json!({"op": "echo", "data": data})).await?;
        let reply = self.recv().await?;
        ensure!(
            reply == json!({"op": "echo", "data": data}),
            "echo got {reply}"
        );
        Ok(())
    }

    /// Collects `message` lines until offset `last`.
    pub async fn messages_until(&mut self, last: u64) -> Result<Vec<Value>> {
        let mut out: Vec<Value> = Vec::new();
        while out.last().and_then(|m| m["offset"].as_u64()) != Some(last) {
            let line = self.recv().await?;
            ensure!(
                line["op"] == "message",
                "expected a message, got {line} after {:?}",
                offsets(&out)
            );
            out.push(line);
        }
        Ok(out)
    }
}

/// Sends `payload` as a datagram and returns the reply datagram as JSON.
/// Datagrams may be lost, so it retries a bounded number of times.
pub async fn datagram_exchange(conn: &Connection, payload: &[u8]) -> Result<Value> {
    for _ in 0..10 {
        conn.send_datagram(payload)?;
        let wait = std::time::Duration::from_secs(1);
        if let Ok(d) = tokio::time::timeout(wait, conn.receive_datagram()).await {
            return Ok(serde_json::from_slice(&d?.payload())?);
        }
    }
    bail!(
        "no datagram reply to {:?}",
        String::from_utf8_lossy(payload)
    )
}

/// The server's QUIC (UDP) address, from the session URL `/api/info` gives.
pub fn quic_addr(url: &str) -> Result<std::net::SocketAddr> {
    Ok(url
        .trim_start_matches("https://")
        .trim_end_matches("/wt")
        .parse()?)
}
