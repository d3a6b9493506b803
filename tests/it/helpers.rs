//! Shared fixtures: a real server on port 0 and small real clients for each
//! HTTP rung. Every wait is bounded by [`WAIT`].

#![allow(dead_code)]

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use ladder::config::Config;
use ladder::context::Ctx;
use ladder::server::Server;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// The longest any single step of a test may wait.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

/// A directory of its own for each server (certificates).
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ladder-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A running server on loopback with OS-chosen ports.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Shared server state, for looking at counters.
    pub ctx: Ctx,
    pub http: reqwest::Client,
    token: CancellationToken,
    handle: JoinHandle<()>,
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn spawn() -> Result<Self> {
        Self::spawn_with(|_| {}).await
    }

    /// A server with the configuration adjusted by `f`.
    pub async fn spawn_with(f: impl FnOnce(&mut Config)) -> Result<Self> {
        let mut cfg = Config {
            http: "127.0.0.1:0".parse()?,
            h3: "127.0.0.1:0".parse()?,
            certs_dir: temp_dir("certs"),
            ..Config::default()
        };
        f(&mut cfg);
        let server = Server::bind(cfg).await?;
        let base = format!("http://{}", server.http_addr());
        let ctx = server.ctx().clone();
        let token = CancellationToken::new();
        let handle = tokio::spawn(server.run(token.clone()));
        Ok(Self {
            base,
            ctx,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            token,
            handle,
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("{}/api/ws", self.base.replacen("http", "ws", 1))
    }

    /// Starts a graceful shutdown and waits for the server to finish.
    pub async fn shutdown(self) -> Result<()> {
        self.token.cancel();
        within("server shutdown", self.handle).await??;
        Ok(())
    }

    /// Starts a graceful shutdown without waiting.
    pub fn begin_shutdown(&self) {
        self.token.cancel();
    }

    /// Waits until the server's `run` returns.
    pub async fn finished(self) -> Result<()> {
        within("server to finish", self.handle).await??;
        Ok(())
    }

    /// Publishes over HTTP; returns the ack.
    pub async fn publish(&self, channel: &str, data: Value) -> Result<Value> {
        let resp = self
            .http
            .post(self.url(&format!("/api/channels/{channel}/messages")))
            .json(&data)
            .send()
            .await?;
        if resp.status() != 201 {
            bail!("publish answered {}: {}", resp.status(), resp.text().await?);
        }
        Ok(resp.json().await?)
    }

    /// Publishes the numbers `1..=n` to `channel`; returns the epoch of the
    /// last ack.
    pub async fn publish_count(&self, channel: &str, n: u64) -> Result<String> {
        let mut epoch = String::new();
        for i in 1..=n {
            let ack = self.publish(channel, i.into()).await?;
            epoch = ack["epoch"].as_str().context("epoch")?.to_owned();
        }
        Ok(epoch)
    }

    /// GETs a path and returns status and JSON body.
    pub async fn get_json(&self, path: &str) -> Result<(u16, Value)> {
        let resp = self.http.get(self.url(path)).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    }

    /// The `/api/stats` row of one transport.
    pub async fn stats(&self, transport: &str) -> Result<Value> {
        let (_, body) = self.get_json("/api/stats").await?;
        Ok(body["transports"][transport].clone())
    }

    /// Waits until no channel fan-out is running (every lent socket and
    /// stream has left).
    pub async fn fanouts_stopped(&self) -> Result<()> {
        within("fan-outs to stop", async {
            while !self.ctx.fanouts.is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
    }

    /// Waits until `/api/stats` satisfies `ok` for `transport`.
    pub async fn wait_stats(&self, transport: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
        within("stats condition", async {
            loop {
                let row = self.stats(transport).await?;
                if ok(&row) {
                    return Ok::<_, anyhow::Error>(row);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await?
    }
}

/// The offsets of a list of message objects.
pub fn offsets(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["offset"].as_u64().unwrap_or(0))
        .collect()
}

/// Messages as (offset, data) pairs, for comparing what rungs saw.
pub fn pairs(messages: &[Value]) -> Vec<(u64, Value)> {
    messages
        .iter()
        .map(|m| (m["offset"].as_u64().unwrap_or(0), m["data"].clone()))
        .collect()
}

/// The built `ladder` binary on loopback ports (OS-chosen) with a
/// certificate directory of its own, then `args`.
fn ladder_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ladder"));
    cmd.args([
        "--http",
        "127.0.0.1:0",
        "--h3",
        "127.0.0.1:0",
        "--certs-dir",
    ])
    .arg(temp_dir("child-certs"))
    .args(args)
    .kill_on_drop(true);
    cmd
}

/// The `ladder` binary running as a child process.
pub struct Child {
    proc: tokio::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The start-up line, as printed.
    pub banner: String,
}

impl Child {
    /// Starts `ladder` on loopback ports with `args`, and waits for its
    /// start-up line.
    pub async fn start(args: &[&str]) -> Result<Self> {
        let mut proc = ladder_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning the ladder binary")?;
        let stdout = proc.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let banner = within("the start-up line", lines.next_line()).await??;
        let Some(banner) = banner else {
            let mut err = String::new();
            if let Some(mut e) = proc.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            bail!("ladder exited before its start-up line: {err}");
        };
        let base = banner
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .context("http= in the start-up line")?
            .to_owned();
        Ok(Self { proc, base, banner })
    }

    /// Sends `signal` (e.g. `-KILL`, `-TERM`) and returns the exit status.
    pub async fn signal(mut self, signal: &str) -> Result<ExitStatus> {
        let pid = self.proc.id().context("pid")?.to_string();
        let ok = Command::new("kill").args([signal, &pid]).status().await?;
        ensure!(ok.success(), "kill {signal} {pid} failed");
        Ok(within("the child to exit", self.proc.wait()).await??)
    }
}

/// Runs `ladder` with `args` expecting it to refuse to start: returns its
/// exit status and stderr.
pub async fn start_fails(args: &[&str]) -> Result<(ExitStatus, String)> {
    let out = within("ladder to exit", ladder_command(args).output()).await??;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A WebSocket client speaking the JSON ops.
pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(server: &TestServer) -> Result<Self> {
        let (inner, _) = within(
            "websocket connect",
            tokio_tungstenite::connect_async(server.ws_url()),
        )
        .await??;
        Ok(Self { inner })
    }

    pub async fn send(&mut self, op: Value) -> Result<()> {
        self.inner.send(Message::text(op.to_string())).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, msg: Message) -> Result<()> {
        self.inner.send(msg).await?;
        Ok(())
    }

    /// The next frame: JSON for text frames; an error for anything else.
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
        self.send(op).await?;
        let reply = self.recv().await?;
        if reply["op"] != "subscribed" {
            bail!("expected subscribed, got {reply}");
        }
        Ok(reply)
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

/// One parsed SSE event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// What [`Sse::next_block`] read.
#[derive(Debug, PartialEq)]
pub enum Block {
    /// An event with data.
    Event(SseEvent),
    /// A block of comments or `retry:` only.
    Other,
    /// The server ended the stream.
    End,
}

/// An SSE client that also keeps comments and `retry:` lines.
pub struct Sse {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    /// Comment lines seen (e.g. `: ping`).
    pub comments: Vec<String>,
    /// The `retry:` value, once seen.
    pub retry: Option<u64>,
}

impl Sse {
    pub async fn connect(
        server: &TestServer,
        channel: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self> {
        let mut req = server
            .http
            .get(server.url(&format!("/api/channels/{channel}/events{query}")));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = within("sse connect", req.send()).await??;
        if resp.status() != 200 {
            bail!("sse answered {}: {}", resp.status(), resp.text().await?);
        }
        let ct = resp.headers()["content-type"].to_str()?.to_owned();
        if ct != "text/event-stream" {
            bail!("content-type {ct}");
        }
        Ok(Self {
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
            comments: Vec::new(),
            retry: None,
        })
    }

    /// The next block. Comments and `retry:` are recorded on `self`.
    pub async fn next_block(&mut self) -> Result<Block> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut is_event = false;
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        self.comments.push(c.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(": ") {
                        match field {
                            "id" => ev.id = Some(value.to_owned()),
                            "event" => ev.event = value.to_owned(),
                            "data" => {
                                ev.data = value.to_owned();
                                is_event = true;
                            }
                            "retry" => self.retry = value.parse().ok(),
                            _ => bail!("unknown field in {block:?}"),
                        }
                    }
                }
                return Ok(if is_event {
                    Block::Event(ev)
                } else {
                    Block::Other
                });
            }
            match within("sse bytes", self.stream.next()).await? {
                Some(chunk) => self.buf.push_str(std::str::from_utf8(&chunk?)?),
                None => return Ok(Block::End),
            }
        }
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<SseEvent>> {
        loop {
            match self.next_block().await? {
                Block::Event(ev) => return Ok(Some(ev)),
                Block::Other => continue,
                Block::End => return Ok(None),
            }
        }
    }

    /// Collects `message` events until offset `last`.
    pub async fn messages_until(&mut self, last: u64) -> Result<Vec<Value>> {
        let mut out: Vec<Value> = Vec::new();
        while out.last().and_then(|m| m["offset"].as_u64()) != Some(last) {
            let Some(ev) = self.next().await? else {
                bail!("stream ended after {:?}", offsets(&out))
            };
            if ev.event != "message" {
                bail!("expected a message, got {ev:?}");
            }
            out.push(ev.json());
        }
        Ok(out)
    }
}

/// Polls (`wait` = None) or long-polls until offset `last` has been seen,
/// following `next`; returns all messages in order.
pub async fn poll_until(
    server: &TestServer,
    channel: &str,
    since: u64,
    wait: Option<u32>,
    last: u64,
) -> Result<Vec<Value>> {
    let mut since = since;
    let mut out: Vec<Value> = Vec::new();
    within("polling", async {
        while since < last {
            let mut q = format!("/api/channels/{channel}/messages?since={since}");
            if let Some(w) = wait {
                q.push_str(&format!("&wait={w}"));
            }
            let (status, body) = server.get_json(&q).await?;
            if status != 200 {
                bail!("poll answered {status}: {body}");
            }
            let msgs = body["messages"].as_array().cloned().unwrap_or_default();
            if msgs.is_empty() && wait.is_none() {
                // A short poll loop, as a browser would run it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            out.extend(msgs);
            since = body["next"].as_u64().context("next")?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    Ok(out)
}
