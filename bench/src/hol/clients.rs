//! The three subscribers of a head-of-line run and its publisher.
//!
//! - [`websocket`]: every channel on one WebSocket;
//! - [`webtransport`] with `datagrams = false`: one WebTransport session,
//!   each channel subscribed on a bidirectional stream of its own;
//! - [`webtransport`] with `datagrams = true`: the same with
//!   `"delivery":"datagram"`, so messages come as datagrams (and on the
//!   stream when one does not fit);
//! - [`publish`]: one WebSocket on loopback (not across the wire) publishing
//!   every channel at the same rate, channels evenly staggered within each
//!   interval, so a packet never carries two channels' messages at once.
//!
//! Subscribers record every message as an [`Arrival`] in a shared list.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

use super::analysis::Arrival;
use crate::sys::now_us;
use crate::track::offset_and_t;

/// Where arrivals go.
pub type Sink = Arc<Mutex<Vec<Arrival>>>;

/// A run's channels: `{tag}-{k}` for `k` in `0..n`.
#[derive(Debug, Clone)]
pub struct Channels {
    /// Unique per run, so every run starts on fresh channels.
    pub tag: String,
    /// How many.
    pub n: usize,
}

impl Channels {
    /// Channel `k`'s name.
    pub fn name(&self, k: usize) -> String {
        format!("{}-{k}", self.tag)
    }

    /// The index of the channel a message names, if it is one of these.
    fn index(&self, msg: &[u8]) -> Option<usize> {
        const KEY: &[u8] = b"\"channel\":\"";
        let at = msg.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
        let len = msg[at..].iter().position(|&b| b == b'"')?;
        let name = std::str::from_utf8(&msg[at..at + len]).ok()?;
        let (tag, k) = name.rsplit_once('-')?;
        let k: usize = k.parse().ok()?;
        (tag == self.tag && k < self.n).then_some(k)
    }

    /// Records `msg` if it is a message of one of these channels.
    fn record(&self, sink: &Sink, msg: &[u8], via_stream: bool) {
        let at_us = now_us();
        let (Some(ch), Some((off, t_us))) = (self.index(msg), offset_and_t(msg)) else {
            return;
        };
        let a = Arrival {
            ch,
            off,
            t_us,
            at_us,
            via_stream,
        };
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(a);
    }
}

/// Longest wait for a connection or a subscription's answer.
const SETUP: Duration = Duration::from_secs(20);

/// A WebSocket with every channel subscribed.
pub struct WsSub(WebSocketStream<TcpStream>);

/// Opens one WebSocket to `http` and subscribes every channel on it.
pub async fn websocket(http: SocketAddr, ch: &Channels) -> Result<WsSub> {
    tokio::time::timeout(SETUP, async {
        let tcp = TcpStream::connect(http).await?;
        tcp.set_nodelay(true)?;
        let (mut ws, _) = client_async(format!("ws://{http}/api/ws"), tcp)
            .await
            .context("websocket handshake")?;
        for k in 0..ch.n {
            let sub = format!(
                "{{\"op\":\"subscribe\",\"channel\":\"{}\",\"since\":0}}",
                ch.name(k)
            );
            ws.send(Message::text(sub)).await?;
        }
        let mut subscribed = 0;
        while subscribed < ch.n {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"op\":\"subscribed\"") => {
                    subscribed += 1
                }
                Some(Ok(Message::Text(t))) if t.contains("\"op\":\"error\"") => {
                    bail!("subscribe refused: {t}")
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("websocket ended while subscribing"),
            }
        }
        Ok(WsSub(ws))
    })
    .await
    .context("websocket setup timed out")?
}

impl WsSub {
    /// Records messages until `stop` flips.
    pub async fn run(
        mut self,
        ch: Channels,
        sink: Sink,
        mut stop: watch::Receiver<bool>,
    ) -> Result<()> {
        loop {
            let m = tokio::select! {
                _ = stop.changed() => break,
                m = self.0.next() => m,
            };
            match m {
                Some(Ok(Message::Text(t))) => ch.record(&sink, t.as_bytes(), false),
                Some(Ok(Message::Close(c))) => bail!("closed by the server: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("websocket ended"),
            }
        }
        let _ = self.0.close(None).await;
        Ok(())
    }
}

/// A WebTransport session with every channel subscribed on its own stream.
pub struct WtSub {
    conn: Connection,
    streams: Vec<(SendStream, RecvStream, Vec<u8>)>,
    datagrams: bool,
    /// Kept so the client's socket lives as long as the session.
    _endpoint: Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

/// Opens one session at `url` (trusting the certificate whose SHA-256 is
/// `cert_hash`) and subscribes each channel on a stream of its own, with
/// datagram delivery if `datagrams`.
pub async fn webtransport(
    url: &str,
    cert_hash: &str,
    ch: &Channels,
    datagrams: bool,
) -> Result<WtSub> {
    let cfg = ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([crate::clients::wt::digest(cert_hash)?])
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .build();
    let endpoint = Endpoint::client(cfg)?;
    tokio::time::timeout(SETUP, async {
        let conn = endpoint
            .connect(url)
            .await
            .context("webtransport connect")?;
        let delivery = if datagrams {
            ",\"delivery\":\"datagram\""
        } else {
            ""
        };
        let mut streams = Vec::with_capacity(ch.n);
        for k in 0..ch.n {
            let (mut send, mut recv) = conn.open_bi().await?.await?;
            let sub = format!(
                "{{\"op\":\"subscribe\",\"channel\":\"{}\",\"since\":0{delivery}}}\n",
                ch.name(k)
            );
            send.write_all(sub.as_bytes()).await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = recv
                    .read(&mut chunk)
                    .await?
                    .context("stream ended while subscribing")?;
                buf.extend_from_slice(&chunk[..n]);
                if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&buf[..nl]).into_owned();
                    if !line.contains("\"op\":\"subscribed\"") {
                        bail!("subscribe answered with {line}");
                    }
                    buf.drain(..=nl);
                    break;
                }
            }
            streams.push((send, recv, buf));
        }
        Ok(WtSub {
            conn,
            streams,
            datagrams,
            _endpoint: endpoint,
        })
    })
    .await
    .context("webtransport setup timed out")?
}

impl WtSub {
    /// Records messages (from each stream, and datagrams) until `stop` flips.
    pub async fn run(self, ch: Channels, sink: Sink, stop: watch::Receiver<bool>) -> Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        let via_stream = self.datagrams;
        for (send, recv, buf) in self.streams {
            let (ch, sink, stop) = (ch.clone(), sink.clone(), stop.clone());
            tasks.spawn(read_stream(send, recv, buf, ch, sink, stop, via_stream));
        }
        if self.datagrams {
            let (conn, ch, sink, mut stop) =
                (self.conn.clone(), ch.clone(), sink.clone(), stop.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.changed() => return Ok(()),
                        d = conn.receive_datagram() => ch.record(&sink, &d?.payload(), false),
                    }
                }
            });
        }
        let mut first_error = None;
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                first_error.get_or_insert(e);
            }
        }
        self.conn.close(0u32.into(), b"done");
        first_error.map_or(Ok(()), Err)
    }
}

/// Records the message lines of one subscription's stream.
async fn read_stream(
    _send: SendStream,
    mut recv: RecvStream,
    mut buf: Vec<u8>,
    ch: Channels,
    sink: Sink,
    mut stop: watch::Receiver<bool>,
    via_stream: bool,
) -> Result<()> {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            if line.starts_with(b"{\"op\":\"message\"") {
                ch.record(&sink, line, via_stream);
            } else if line.starts_with(b"{\"op\":\"lagged\"")
                || line.starts_with(b"{\"op\":\"error\"")
            {
                bail!("{}", String::from_utf8_lossy(line));
            }
            start += nl + 1;
        }
        buf.drain(..start);
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            n = recv.read(&mut chunk) => {
                let n = n?.context("stream finished by the server")?;
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Publishes `count` messages on every channel at `rate` per second per
/// channel through a WebSocket to `http`, channel `k` of `n` offset by
/// `k / n` of the interval; returns once every publish is acknowledged.
pub async fn publish(
    http: SocketAddr,
    ch: &Channels,
    rate: f64,
    count: u64,
    size: usize,
) -> Result<()> {
    let tcp = tokio::time::timeout(SETUP, TcpStream::connect(http)).await??;
    tcp.set_nodelay(true)?;
    let (ws, _) =
        tokio::time::timeout(SETUP, client_async(format!("ws://{http}/api/ws"), tcp)).await??;
    let (mut tx, mut rx) = ws.split();
    let total = count * ch.n as u64;
    let acks = tokio::spawn(async move {
        let mut acked = 0u64;
        while acked < total {
            match rx.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"op\":\"published\"") => acked += 1,
                Some(Ok(Message::Text(t))) if t.contains("\"op\":\"error\"") => {
                    bail!("publish refused: {t}")
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("publisher's websocket ended after {acked}/{total} acks"),
            }
        }
        Ok(())
    });
    let slot = Duration::from_secs_f64(1.0 / rate / ch.n as f64);
    let start = tokio::time::Instant::now();
    let pad = "x".repeat(size.saturating_sub(40));
    for i in 0..total {
        tokio::time::sleep_until(start + slot * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let k = (i % ch.n as u64) as usize;
        let frame = format!(
            "{{\"op\":\"publish\",\"channel\":\"{}\",\"data\":{{\"t\":{},\"p\":\"{pad}\"}}}}",
            ch.name(k),
            now_us()
        );
        tx.send(Message::text(frame)).await?;
    }
    // Acks come over loopback within milliseconds of the last publish.
    tokio::time::timeout(Duration::from_secs(30), acks)
        .await
        .context("publish acks timed out")???;
    let _ = tx.close().await;
    Ok(())
}
