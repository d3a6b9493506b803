//! The WebSocket client: [`Ws`] speaks Ladder's JSON ops, one per text
//! frame, every wait bounded by [`WAIT`]. [`WsOptions`] carries what the
//! bench needs on top: a chosen source address and small buffers, so tens
//! of thousands of client sockets fit in one load process; the bench opens
//! its sockets with [`open`] and reads them in its own tuned loop.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, client_async_with_config};

use crate::net::{tcp_connect, url_addr};
use crate::{Base, WAIT, offsets, within, within_for};

/// A client WebSocket over a plain TCP stream.
pub type WsStream = WebSocketStream<TcpStream>;

/// How to open a WebSocket.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// The source address (default 127.0.0.1).
    pub src: IpAddr,
    /// Small buffers (16 KiB read, no write buffering) instead of
    /// tungstenite's 128 KiB per socket: for load runs with many sockets.
    pub small_buffers: bool,
    /// The longest wait for the connection and handshake.
    pub wait: Duration,
}

impl Default for WsOptions {
    fn default() -> Self {
        Self {
            src: IpAddr::V4(Ipv4Addr::LOCALHOST),
            small_buffers: false,
            wait: WAIT,
        }
    }
}

/// Opens a WebSocket to `url` (`ws://HOST:PORT/PATH`) with `opts`.
pub async fn open(url: &str, opts: &WsOptions) -> Result<WsStream> {
    open_over(url, opts, |tcp| tcp).await
}

async fn open_over<S>(
    url: &str,
    opts: &WsOptions,
    wrap: impl FnOnce(TcpStream) -> S,
) -> Result<WebSocketStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let config = opts.small_buffers.then(|| {
        WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0)
    });
    within_for(opts.wait, "websocket connect", async {
        let tcp = tcp_connect(opts.src, url_addr(url).await?).await?;
        let (ws, _) = client_async_with_config(url, wrap(tcp), config)
            .await
            .context("websocket handshake")?;
        anyhow::Ok(ws)
    })
    .await?
}

/// A WebSocket speaking Ladder's JSON ops. Built by [`Ws::connect`], or
/// from a socket opened otherwise (`Ws { inner }`, e.g. with a token in the
/// URL via `tokio_tungstenite::connect_async`).
pub struct Ws {
    /// The socket itself, for sending or reading raw frames.
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects to the server's `/api/ws`.
    pub async fn connect<B: Base + ?Sized>(server: &B) -> Result<Self> {
        Self::connect_with(&server.ws_url(), WsOptions::default()).await
    }

    /// Connects to `url` with `opts`.
    pub async fn connect_with(url: &str, opts: WsOptions) -> Result<Self> {
        Ok(Self {
            inner: open_over(url, &opts, MaybeTlsStream::Plain).await?,
        })
    }

    /// Sends one op.
    pub async fn send(&mut self, op: Value) -> Result<()> {
        self.send_raw(Message::text(op.to_string())).await
    }

    /// Sends any frame.
    pub async fn send_raw(&mut self, msg: Message) -> Result<()> {
        within("websocket send", self.inner.send(msg)).await??;
        Ok(())
    }

    /// The next frame: JSON for text frames (pings and pongs skipped); an
    /// error for a close or anything else.
    pub async fn recv(&mut self) -> Result<Value> {
        loop {
            match within("websocket frame", self.inner.next()).await? {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
                other => bail!("unexpected websocket item {other:?}"),
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn closed(&mut self) -> Result<u16> {
        loop {
            match within("websocket close", self.inner.next()).await? {
                Some(Ok(Message::Close(Some(c)))) => return Ok(c.code.into()),
                Some(Ok(Message::Close(None))) => return Ok(1005),
                Some(Ok(_)) => continue,
                other => bail!("no close frame: {other:?}"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, channel: &str, since: Option<u64>) -> Result<Value> {
        let mut op = serde_json::json!({"op": "subscribe", "channel": channel});
        if let Some(s) = since {
            op["since"] = s.into();
        }
        self.subscribe_op(op).await
    }

    /// Sends a `subscribe` op (any fields) and returns the `subscribed`
    /// reply.
    pub async fn subscribe_op(&mut self, op: Value) -> Result<Value> {
        self.send(op).await?;
        let reply = self.recv().await?;
        if reply["op"] != "subscribed" {
            bail!("expected subscribed, got {reply}");
        }
        Ok(reply)
    }

    /// Publishes with ack id `id` and waits for that ack, skipping other
    /// frames (messages of subscriptions on the same socket); an `error`
    /// frame fails.
    pub async fn publish(&mut self, channel: &str, data: Value, id: u64) -> Result<Value> {
        let op = serde_json::json!({"op": "publish", "channel": channel, "data": data, "id": id});
        self.send(op).await?;
        loop {
            let v = self.recv().await?;
            if v["op"] == "published" && v["id"] == id {
                return Ok(v);
            }
            if v["op"] == "error" {
                bail!("publish refused: {v}");
            }
        }
    }

    /// Collects `message` ops until one with offset `last` arrives.
    pub async fn messages_until(&mut self, last: u64) -> Result<Vec<Value>> {
        let mut out: Vec<Value> = Vec::new();
        while out.last().and_then(|m| m["offset"].as_u64()) != Some(last) {
            let f = self.recv().await?;
            if f["op"] != "message" {
                bail!("expected a message, got {f} after {:?}", offsets(&out));
            }
            out.push(f);
        }
        Ok(out)
    }
}
