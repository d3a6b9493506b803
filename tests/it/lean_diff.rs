//! The lean HTTP/1.1 path (`src/http/lean.rs`) against hyper: the same
//! request bytes, written over a real loopback socket to a server that
//! serves event streams and polls on the lean path and to one that sends
//! everything through hyper (`--lean-http false`), must be accepted or
//! refused alike and answered alike: the same responses in the same order,
//! with the same status, headers and body, and the connection left open or
//! closed alike. Framing (`content-length`, chunked, `connection`), `date`
//! and the numbers in `ladder-connection` may differ: a lean response is
//! whole or ends with its connection, and bodies are compared after
//! de-framing.
//!
//! The cases include the request-smuggling shapes (duplicate or conflicting
//! `Content-Length`, `Content-Length` with `Transfer-Encoding`, obs-fold,
//! bare LF, over-long heads, pipelining) besides ordinary polls, long polls,
//! event streams and publishes. The lean path hands every shape it does not
//! serve to hyper, so those must match hyper exactly; the one difference by
//! design is checked on its own (an event stream with a request pipelined
//! behind it).

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::TestServer;

/// Bound on every socket operation (generous: not a performance check).
const IO: Duration = Duration::from_secs(20);

/// One response, de-framed and with what varies between servers replaced.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status_line: String,
    /// Every header but framing and `date`, lowercased, in order.
    headers: Vec<(String, String)>,
    body: String,
}

/// What a connection did with the request bytes.
#[derive(Debug, PartialEq, Eq)]
struct Exchange {
    answers: Vec<Answer>,
    /// Whether the server closed the connection after them (probed with one
    /// more request on connections that should stay open).
    closed: bool,
}

/// How much of a response's body to read.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// All of it (whole responses).
    Whole,
    /// An event stream: this many blank-line-terminated blocks, then stop.
    Events(usize),
}

struct Server {
    server: TestServer,
    epoch: String,
}

impl Server {
    async fn start(lean: bool) -> Result<Self> {
        let server = TestServer::spawn_with(|c| c.lean_http = lean).await?;
        let mut epoch = String::new();
        for i in 1..=3 {
            let r = server.publish("d", json!({ "i": i })).await?;
            epoch = r["epoch"].as_str().context("epoch")?.to_owned();
        }
        Ok(Self { server, epoch })
    }

    async fn connect(&self) -> Result<TcpStream> {
        let addr = self.server.base.trim_start_matches("http://");
        Ok(tokio::time::timeout(IO, TcpStream::connect(addr)).await??)
    }

    /// Writes `request` (with `{epoch}` replaced by this server's epoch) and
    /// reads `bodies.len()` responses; then, unless `probe` is false, asks
    /// once more to see whether the connection is still open.
    async fn exchange(&self, request: &[u8], bodies: &[Body], probe: bool) -> Result<Exchange> {
        let request = String::from_utf8_lossy(request).replace("{epoch}", &self.epoch);
        let mut conn = Conn {
            stream: self.connect().await?,
            buf: Vec::new(),
            eof: false,
        };
        tokio::time::timeout(IO, conn.stream.write_all(request.as_bytes())).await??;
        let mut answers = Vec::new();
        for &body in bodies {
            match conn.response(body).await? {
                Some(a) => answers.push(self.normalise(a)),
                None => break,
            }
        }
        let closed = if probe {
            let ask = b"GET /api/channels/d/messages?since=3 HTTP/1.1\r\nhost: x\r\n\r\n";
            let wrote = tokio::time::timeout(IO, conn.stream.write_all(ask)).await?;
            wrote.is_err() || conn.response(Body::Whole).await.ok().flatten().is_none()
        } else {
            false
        };
        Ok(Exchange { answers, closed })
    }

    fn normalise(&self, mut a: Answer) -> Answer {
        a.body = a.body.replace(&self.epoch, "EPOCH");
        a.body = replace_values(&a.body, "\"ts\":", |c| c.is_ascii_digit(), "0");
        // New channels' epochs (publishes) are random too.
        a.body = replace_values(&a.body, "\"epoch\":\"", |c| c != '"', "EPOCH");
        a
    }
}

/// The run of characters matching `value` after each `key` in `s`,
/// replaced by `with` (what differs between two servers: times, epochs).
fn replace_values(s: &str, key: &str, value: impl Fn(char) -> bool, with: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = rest[i + key.len()..].trim_start_matches(&value);
        out.push_str(with);
    }
    out.push_str(rest);
    out
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    /// Reads more; `false` at the end of the stream (or a reset).
    async fn fill(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let mut chunk = [0u8; 16 * 1024];
        // A reset ends the stream as an orderly close does.
        let n = tokio::time::timeout(IO, self.stream.read(&mut chunk))
            .await?
            .unwrap_or_default();
        self.eof = n == 0;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next response, or `None` if the connection ends first.
    async fn response(&mut self, want: Body) -> Result<Option<Answer>> {
        let (status_line, headers, len) = loop {
            let mut raw = [httparse::EMPTY_HEADER; 64];
            let mut head = httparse::Response::new(&mut raw);
            if let httparse::Status::Complete(len) = head.parse(&self.buf)? {
                let status_line = format!(
                    "HTTP/1.{} {}",
                    head.version.unwrap_or(1),
                    head.code.unwrap_or(0)
                );
                let headers: Vec<(String, String)> = head
                    .headers
                    .iter()
                    .map(|h| {
                        let v = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_ascii_lowercase(), v)
                    })
                    .collect();
                break (status_line, headers, len);
            }
            if !self.fill().await? {
                return Ok(None);
            }
        };
        self.buf.drain(..len);
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let body = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            self.chunked(want).await?
        } else if let Some(n) = find("content-length") {
            let n: usize = n.trim().parse()?;
            while self.buf.len() < n {
                ensure!(self.fill().await?, "the body ended early");
            }
            self.buf.drain(..n).collect()
        } else {
            // Delimited by the connection's end (or, for an event stream,
            // read as far as wanted).
            loop {
                if let Body::Events(k) = want
                    && blocks(&self.buf) >= k
                {
                    break std::mem::take(&mut self.buf);
                }
                if !self.fill().await? {
                    break std::mem::take(&mut self.buf);
                }
            }
        };
        let body = match want {
            Body::Whole => body,
            Body::Events(k) => first_blocks(&body, k),
        };
        let headers = headers
            .into_iter()
            .filter(|(n, _)| {
                !["date", "content-length", "transfer-encoding", "connection"].contains(&n.as_str())
            })
            // Which connection carried a poll differs between two servers;
            // that both name it, with the same fields, does not.
            .map(|(n, v)| {
                if n == "ladder-connection" {
                    let keys: Vec<_> = v
                        .split("; ")
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, _)| k)
                        .collect();
                    (n, keys.join("; "))
                } else {
                    (n, v)
                }
            })
            .collect();
        Ok(Some(Answer {
            status_line,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }))
    }

    /// A chunked body: all of it, or for an event stream as many blocks as
    /// wanted.
    async fn chunked(&mut self, want: Body) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            if let Body::Events(k) = want
                && blocks(&body) >= k
            {
                return Ok(body);
            }
            let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                ensure!(self.fill().await?, "a chunk size line ended early");
                continue;
            };
            let size = std::str::from_utf8(&self.buf[..eol])?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
            while self.buf.len() < eol + 2 + size + 2 {
                ensure!(self.fill().await?, "a chunk ended early");
            }
            body.extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
            self.buf.drain(..eol + 2 + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// How many blank-line-terminated blocks (SSE events) `body` holds.
fn blocks(body: &[u8]) -> usize {
    body.windows(2).filter(|w| w == b"\n\n").count()
}

/// The first `k` blocks of `body`.
fn first_blocks(body: &[u8], k: usize) -> Vec<u8> {
    let mut seen = 0;
    for (i, w) in body.windows(2).enumerate() {
        if w == b"\n\n" {
            seen += 1;
            if seen == k {
                return body[..i + 2].to_vec();
            }
        }
    }
    body.to_vec()
}

/// One request shape, what to read back, and whether to probe the
/// connection afterwards.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    bodies: Vec<Body>,
    probe: bool,
    /// By design, the lean path closes the connection after this answer
    /// where hyper keeps it open (everything else must still match).
    lean_closes: bool,
}

fn case(name: &'static str, request: impl Into<Vec<u8>>, bodies: &[Body]) -> Case {
    Case {
        name,
        request: request.into(),
        bodies: bodies.to_vec(),
        probe: true,
        lean_closes: false,
    }
}

/// An event stream's answer ends only with its connection: no probe.
fn stream(name: &'static str, request: impl Into<Vec<u8>>, blocks: usize) -> Case {
    Case {
        name,
        request: request.into(),
        bodies: vec![Body::Events(blocks)],
        probe: false,
        lean_closes: false,
    }
}

fn cases() -> Vec<Case> {
    use Body::Whole as W;
    let poll = "GET /api/channels/d/messages?since=0 HTTP/1.1\r\nhost: x\r\n\r\n";
    let long_hdr = format!("x-pad: {}\r\n", "a".repeat(5000));
    let huge_hdr = format!("x-pad: {}\r\n", "a".repeat(70_000));
    vec![
        // Ordinary subscribers' requests.
        case("short poll", poll, &[W]),
        case(
            "short poll with limit and epoch",
            "GET /api/channels/d/messages?since=1&limit=1&epoch={epoch} HTTP/1.1\r\nhost: x\r\n\r\n",
            &[W],
        ),
        case(
            "short poll with a stale epoch",
            "GET /api/channels/d/messages?since=1&epoch=old HTTP/1.1\r\nhost: x\r\n\r\n",
            &[W],
        ),
        case(
            "long poll answered at once",
            "GET /api/channels/d/messages?since=2&wait=5 HTTP/1.1\r\nhost: x\r\n\r\n",
            &[W],
        ),
        case(
            "long poll that waits out",
            "GET /api/channels/d/messages?since=3&wait=1 HTTP/1.1\r\nhost: x\r\n\r\n",
            &[W],
        ),
        case(
            "poll asking to close",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\nconnection: close\r\n\r\n",
            &[W],
        ),
        case(
            "poll in HTTP/1.0",
            "GET /api/channels/d/messages?since=0 HTTP/1.0\r\n\r\n",
            &[W],
        ),
        case(
            "poll of a bad channel",
            "GET /api/channels/bad!name/messages HTTP/1.1\r\nhost: x\r\n\r\n",
            &[W],
        ),
        case(
            "poll with a bad since",
            "GET /api/channels/d/messages?since=x HTTP/1.1\r\nhost: x\r\n\r\n",
            &[W],
        ),
        case(
            "poll with a bad wait",
            "GET /api/channels/d/messages?since=0&wait=999 HTTP/1.1\r\nhost: x\r\n\r\n",
            &[W],
        ),
        case(
            "unknown route under the prefix",
            "GET /api/channels/d/nope HTTP/1.1\r\nhost: x\r\n\r\n",
            &[W],
        ),
        case(
            "publish",
            "POST /api/channels/p/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
            &[W],
        ),
        stream(
            "event stream",
            "GET /api/channels/d/events?since=0 HTTP/1.1\r\nhost: x\r\n\r\n",
            4,
        ),
        stream(
            "event stream resumed by Last-Event-ID",
            "GET /api/channels/d/events HTTP/1.1\r\nhost: x\r\nlast-event-id: {epoch}:1\r\n\r\n",
            3,
        ),
        stream(
            "event stream in HTTP/1.0",
            "GET /api/channels/d/events?since=2 HTTP/1.0\r\n\r\n",
            2,
        ),
        // An event-stream request's connection ends with its answer on the
        // lean path, an error included.
        Case {
            lean_closes: true,
            ..case(
                "event stream of a bad channel",
                "GET /api/channels/bad!name/events HTTP/1.1\r\nhost: x\r\n\r\n",
                &[W],
            )
        },
        // Smuggling shapes and malformed heads.
        case(
            "duplicate differing Content-Length",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 5\r\n\r\nhello",
            &[W, W],
        ),
        case(
            "duplicate equal Content-Length",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
            &[W],
        ),
        case(
            "Content-Length with Transfer-Encoding",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            &[W, W],
        ),
        case(
            "Transfer-Encoding not chunked last",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            &[W, W],
        ),
        stream(
            "chunked body on an event stream",
            "GET /api/channels/d/events?since=0 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            4,
        ),
        case(
            "obs-fold",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\nhost: x\r\nx-a: b\r\n c\r\n\r\n",
            &[W],
        ),
        case(
            "obs-fold on an event stream",
            "GET /api/channels/d/events?since=0 HTTP/1.1\r\nx-a: b\r\n\tc\r\n\r\n",
            &[W],
        ),
        case(
            "bare LF line ends",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\nhost: x\n\n",
            &[W],
        ),
        case(
            "bare CR in a header",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\nhost: x\ry: z\r\n\r\n",
            &[W],
        ),
        case(
            "space before the colon",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\nhost : x\r\n\r\n",
            &[W],
        ),
        case(
            "control byte in a header value",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\nx-a: b\x01c\r\n\r\n",
            &[W],
        ),
        case(
            "Expect on a poll",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            &[W],
        ),
        case(
            "Upgrade on a poll",
            "GET /api/channels/d/messages?since=0 HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            &[W],
        ),
        case(
            "absolute-form target",
            "GET http://x/api/channels/d/messages?since=0 HTTP/1.1\r\nhost: x\r\n\r\n",
            &[W],
        ),
        case(
            "unknown HTTP version",
            "GET /api/channels/d/messages?since=0 HTTP/1.2\r\nhost: x\r\n\r\n",
            &[W],
        ),
        case(
            "head over the lean path's peek (hyper's)",
            format!("GET /api/channels/d/messages?since=0 HTTP/1.1\r\n{long_hdr}\r\n"),
            &[W],
        ),
        case(
            "head over hyper's limit",
            format!("GET /api/channels/d/messages?since=0 HTTP/1.1\r\n{huge_hdr}\r\n"),
            &[W],
        ),
        case(
            "too many header lines for the lean path",
            format!(
                "GET /api/channels/d/messages?since=0 HTTP/1.1\r\n{}\r\n",
                (0..40).map(|i| format!("x-{i}: v\r\n")).collect::<String>()
            ),
            &[W],
        ),
        // Pipelining.
        case("two pipelined polls", format!("{poll}{poll}"), &[W, W]),
        case(
            "a poll, a publish and a poll, pipelined",
            format!(
                "{poll}POST /api/channels/q/messages HTTP/1.1\r\ncontent-length: 1\r\n\r\n7{poll}"
            ),
            &[W, W, W],
        ),
        case(
            "a poll then a malformed request, pipelined",
            format!("{poll}GET /api/channels/d/messages HTTP/1.1\r\nx-a: b\r\n c\r\n\r\n"),
            &[W, W],
        ),
        case(
            "a poll then a smuggled-looking request, pipelined",
            format!(
                "{poll}GET /api/channels/d/messages?since=0 HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 5\r\n\r\nhello"
            ),
            &[W, W],
        ),
    ]
}

#[tokio::test]
async fn the_lean_path_answers_every_request_as_hyper_does() -> Result<()> {
    let lean = Server::start(true).await?;
    let hyper = Server::start(false).await?;
    let mut diverged = Vec::new();
    for c in cases() {
        let a = lean.exchange(&c.request, &c.bodies, c.probe).await;
        let b = hyper.exchange(&c.request, &c.bodies, c.probe).await;
        let (a, b) = match (a, b) {
            (Ok(mut a), Ok(b)) if c.lean_closes && a.closed && !b.closed => {
                a.closed = false;
                (Ok(a), Ok(b))
            }
            (a, b) => (a, b),
        };
        match (a, b) {
            (Ok(a), Ok(b)) if a == b => {
                ensure!(!b.answers.is_empty() || b.closed, "{}: no answer", c.name);
            }
            (a, b) => diverged.push(format!("{}:\n  lean:  {a:?}\n  hyper: {b:?}", c.name)),
        }
    }
    if !diverged.is_empty() {
        bail!(
            "the lean path diverges from hyper:\n{}",
            diverged.join("\n")
        );
    }
    // The lean path did serve its share (the comparison is not hyper
    // against itself).
    let served = lean.server.stats("poll").await?["requests"].as_u64();
    ensure!(served.is_some_and(|n| n > 0));
    lean.server.shutdown().await?;
    hyper.server.shutdown().await
}

/// By design: an event stream's client has nothing more to say, so on the
/// lean path anything it sends ends the stream (and the connection), where
/// hyper would keep streaming and leave the pipelined request unread.
#[tokio::test]
async fn a_request_pipelined_behind_an_event_stream_ends_it_on_the_lean_path() -> Result<()> {
    let lean = Server::start(true).await?;
    let hyper = Server::start(false).await?;
    let request = b"GET /api/channels/d/events?since=0 HTTP/1.1\r\nhost: x\r\n\r\n\
                    GET /api/channels/d/messages?since=0 HTTP/1.1\r\nhost: x\r\n\r\n";
    // Lean: the stream's head and first chunk, then the end.
    let a = lean
        .exchange(request, &[Body::Events(99), Body::Whole], false)
        .await?;
    ensure!(a.answers.len() == 1, "{a:?}");
    ensure!(a.answers[0].status_line == "HTTP/1.1 200", "{a:?}");
    // Hyper: the stream goes on (all four blocks arrive), the poll waits.
    let b = hyper.exchange(request, &[Body::Events(4)], false).await?;
    ensure!(
        b.answers.len() == 1 && blocks(b.answers[0].body.as_bytes()) == 4,
        "{b:?}"
    );
    ensure!(a.answers[0].headers == b.answers[0].headers);
    lean.server.shutdown().await?;
    hyper.server.shutdown().await
}
