//! The HTTP rungs' clients: [`Sse`], an event-stream reader that also keeps
//! comments and `retry:`, and [`poll_until`], short or long polling that
//! follows `next`.
//!
//! The bench's load loops speak HTTP/1.1 through raw hyper connections
//! instead (one TCP connection per subscriber from its own source address,
//! a byte-level parse), which a pooled client could not promise.

use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::server::TestServer;
use crate::{WAIT, offsets, within, within_for};

/// One parsed SSE event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:`, when there was one.
    pub id: Option<String>,
    /// `event:` (empty when there was none).
    pub event: String,
    /// `data:`.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// What [`Sse::next_block`] read.
#[derive(Debug, PartialEq, Eq)]
pub enum Block {
    /// An event with data.
    Event(SseEvent),
    /// A block of comments or `retry:` only.
    Other,
    /// The server ended the stream.
    End,
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// An SSE client that also keeps comments and `retry:` lines.
pub struct Sse {
    stream: ByteStream,
    buf: String,
    wait: Duration,
    /// Comment lines seen (e.g. `: ping`).
    pub comments: Vec<String>,
    /// The `retry:` value, once seen.
    pub retry: Option<u64>,
}

impl Sse {
    /// Opens `/api/channels/{channel}/events{query}` on `server`.
    pub async fn connect(
        server: &TestServer,
        channel: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self> {
        let url = server.url(&format!("/api/channels/{channel}/events{query}"));
        Self::open(&server.http, &url, last_event_id, WAIT).await
    }

    /// Opens the event stream at `url` with `http`, sending
    /// `Last-Event-ID` when given; every later wait is bounded by `wait`.
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
        wait: Duration,
    ) -> Result<Self> {
        let mut req = http.get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = within_for(wait, "sse connect", req.send()).await??;
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
            wait,
            comments: Vec::new(),
            retry: None,
        })
    }

    /// The same stream with every later wait bounded by `wait`.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The next block. Comments and `retry:` are recorded on `self`.
    /// Cancel-safe: what was read stays buffered.
    pub async fn next_block(&mut self) -> Result<Block> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                return self.parse(&block);
            }
            match within_for(self.wait, "sse bytes", self.stream.next()).await? {
                Some(chunk) => self.buf.push_str(std::str::from_utf8(&chunk?)?),
                None => return Ok(Block::End),
            }
        }
    }

    fn parse(&mut self, block: &str) -> Result<Block> {
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
        Ok(if is_event {
            Block::Event(ev)
        } else {
            Block::Other
        })
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

/// One poll page: `GET {url}` answered 200 with a JSON body, within `wait`.
pub async fn poll_page(http: &reqwest::Client, url: &str, wait: Duration) -> Result<Value> {
    let resp = within_for(wait, "poll", http.get(url).send()).await??;
    if resp.status() != 200 {
        bail!("poll answered {}", resp.status());
    }
    Ok(within_for(wait, "poll body", resp.json()).await??)
}
