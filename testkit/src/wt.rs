//! The WebTransport client: sessions to the server's `/wt` that pin the
//! certificate hash `/api/info` serves (validation stays on), and
//! [`Lines`], one bidirectional stream of `\n`-terminated JSON lines that
//! reports how it ended.
//!
//! [`EndpointOptions`] carries what the soak and the bench need on top:
//! keep-alives and a short idle timeout (to notice a killed server fast),
//! or a socket bound to a chosen address with large kernel buffers (one
//! client socket carrying thousands of sessions).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use wtransport::endpoint::endpoint_side::Client;
use wtransport::error::StreamReadError;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

use crate::{Base, WAIT, offsets, within, within_for};

/// The session URL and pinned hash `/api/info` serves.
pub async fn info<B: Base + ?Sized>(server: &B) -> Result<(String, String)> {
    let url = format!("{}/api/info", server.base());
    let resp = within("/api/info", reqwest::get(url)).await??;
    ensure!(resp.status() == 200, "/api/info answered {}", resp.status());
    let body: Value = within("/api/info body", resp.json()).await??;
    let wt = &body["webtransport"];
    let url = wt["url"].as_str().context("webtransport.url")?.to_owned();
    let hash = wt["cert_sha256"]
        .as_str()
        .context("cert_sha256")?
        .to_owned();
    Ok((url, hash))
}

/// Parses a SHA-256 written as 64 hex digits.
pub fn digest(hex: &str) -> Result<Sha256Digest> {
    ensure!(
        hex.len() == 64 && hex.is_ascii(),
        "hash {hex:?} is not 64 hex digits"
    );
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(Sha256Digest::new(bytes))
}

/// A digest as lowercase hex.
pub fn hex(d: &Sha256Digest) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The server's QUIC (UDP) address, from the session URL `/api/info` gives.
pub fn quic_addr(url: &str) -> Result<SocketAddr> {
    Ok(url
        .trim_start_matches("https://")
        .trim_end_matches("/wt")
        .parse()?)
}

/// How a client endpoint is set up.
#[derive(Debug, Clone, Default)]
pub struct EndpointOptions {
    /// Bind this address with `udp_buffer`-sized kernel buffers (default:
    /// any port, system buffers).
    pub bind: Option<SocketAddr>,
    /// Kernel buffer asked for each way when `bind` is set (capped by
    /// `net.core.rmem_max` / `wmem_max`); 0 keeps the system default.
    pub udp_buffer: usize,
    /// QUIC keep-alive period.
    pub keep_alive: Option<Duration>,
    /// QUIC idle timeout (default quinn's).
    pub idle_timeout: Option<Duration>,
}

fn udp_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if buffer > 0 {
        s.set_recv_buffer_size(buffer)?;
        s.set_send_buffer_size(buffer)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A client endpoint that trusts exactly the certificate with `hash`.
pub fn endpoint(hash: &str, opts: &EndpointOptions) -> Result<Endpoint<Client>> {
    let builder = ClientConfig::builder();
    let builder = match opts.bind {
        Some(addr) => builder.with_bind_socket(udp_socket(addr, opts.udp_buffer)?),
        None => builder.with_bind_default(),
    };
    let mut builder = builder
        .with_server_certificate_hashes([digest(hash)?])
        .keep_alive_interval(opts.keep_alive);
    // Only when asked: `None` here would mean "never time out", not
    // "quinn's default".
    if let Some(idle) = opts.idle_timeout {
        builder = builder.max_idle_timeout(Some(idle))?;
    }
    let cfg = builder.build();
    Ok(Endpoint::client(cfg)?)
}

/// A client endpoint with default options trusting exactly `hash`.
pub fn client(hash: &str) -> Result<Endpoint<Client>> {
    endpoint(hash, &EndpointOptions::default())
}

/// A WebTransport session to the server's `/wt`, trusting `/api/info`'s
/// hash.
pub struct Wt {
    /// The session.
    pub conn: Connection,
    /// The session URL, query included.
    pub url: String,
    /// Kept so the client socket outlives the session.
    _endpoint: Endpoint<Client>,
}

impl Wt {
    /// Connects with default options.
    pub async fn connect<B: Base + ?Sized>(server: &B) -> Result<Self> {
        Self::connect_with(server, "", &EndpointOptions::default()).await
    }

    /// Connects to the session URL with `query` (e.g. `?token=…`) appended.
    pub async fn connect_with_query<B: Base + ?Sized>(server: &B, query: &str) -> Result<Self> {
        Self::connect_with(server, query, &EndpointOptions::default()).await
    }

    /// Connects with `query` appended, on an endpoint set up by `opts`.
    pub async fn connect_with<B: Base + ?Sized>(
        server: &B,
        query: &str,
        opts: &EndpointOptions,
    ) -> Result<Self> {
        let (url, hash) = info(server).await?;
        let url = format!("{url}{query}");
        let endpoint = endpoint(&hash, opts)?;
        let conn = within("wt connect", endpoint.connect(&url)).await??;
        Ok(Self {
            conn,
            url,
            _endpoint: endpoint,
        })
    }

    /// Opens a bidirectional stream.
    pub async fn stream(&self) -> Result<Lines> {
        Lines::open(&self.conn).await
    }

    /// Whether the session has ended (closed by either side or lost).
    pub fn is_closed(&self) -> bool {
        self.conn.quic_connection().close_reason().is_some()
    }
}

/// One bidirectional stream speaking `\n`-terminated JSON lines.
pub struct Lines {
    send: SendStream,
    recv: RecvStream,
    buf: Vec<u8>,
    wait: Duration,
}

/// How reading a stream ended when no line came.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The server finished its side.
    Finished,
    /// The server reset its side with this code.
    Reset(u64),
    /// The session is gone.
    Gone,
}

impl Lines {
    /// Opens a bidirectional stream on `conn`.
    pub async fn open(conn: &Connection) -> Result<Self> {
        let (send, recv) = within("open_bi", async {
            anyhow::Ok(conn.open_bi().await?.await?)
        })
        .await??;
        Ok(Self {
            send,
            recv,
            buf: Vec::new(),
            wait: WAIT,
        })
    }

    /// The same stream with every wait bounded by `wait` instead of
    /// [`WAIT`].
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sends one op as a line.
    pub async fn send(&mut self, op: Value) -> Result<()> {
        self.send_raw(format!("{op}\n").as_bytes()).await
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        within_for(self.wait, "stream write", self.send.write_all(bytes)).await??;
        Ok(())
    }

    /// Finishes the client's send side.
    pub async fn finish(&mut self) -> Result<()> {
        within_for(self.wait, "stream finish", self.send.finish()).await??;
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
            match within_for(self.wait, "stream read", self.recv.read(&mut chunk)).await? {
                Ok(Some(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(None) => return Ok(Err(End::Finished)),
                Err(StreamReadError::Reset(code)) => return Ok(Err(End::Reset(code.into_inner()))),
                Err(_) => return Ok(Err(End::Gone)),
            }
        }
    }

    /// The next line as JSON; an error if the stream ended instead.
    pub async fn recv(&mut self) -> Result<Value> {
        match self.next().await? {
            Ok(v) => Ok(v),
            Err(end) => bail!("stream ended: {end:?}"),
        }
    }

    /// Sends a `subscribe` op and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, op: Value) -> Result<Value> {
        self.send(op).await?;
        let reply = self.recv().await?;
        ensure!(
            reply["op"] == "subscribed",
            "expected subscribed, got {reply}"
        );
        Ok(reply)
    }

    /// Publishes with ack id `id` and returns the ack, which must be the
    /// next line.
    pub async fn publish(&mut self, channel: &str, data: Value, id: u64) -> Result<Value> {
        self.send(json!({"op": "publish", "channel": channel, "data": data, "id": id}))
            .await?;
        let v = self.recv().await?;
        ensure!(v["op"] == "published" && v["id"] == id, "ack: {v}");
        Ok(v)
    }

    /// Sends an echo op and checks the reply.
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
        let wait = Duration::from_secs(1);
        if let Ok(d) = tokio::time::timeout(wait, conn.receive_datagram()).await {
            return Ok(serde_json::from_slice(&d?.payload())?);
        }
    }
    bail!(
        "no datagram reply to {:?}",
        String::from_utf8_lossy(payload)
    )
}
