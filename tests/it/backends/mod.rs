//! Log backends end to end: the embedded durable log across restarts (a
//! real SIGKILL of the `ladder` binary included), and several nodes sharing
//! channels through a real `redis-server`.
//!
//! Fixtures here: [`Child`] runs the built `ladder` binary as a process,
//! [`Redis`] runs `redis-server` on a free loopback port with a temp dir,
//! [`WtClient`] publishes and subscribes over WebTransport.

mod durable;
mod redis;

use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child as Proc, Command};

use crate::helpers::*;

/// The `ladder` binary running as a child process.
pub struct Child {
    proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Child {
    /// Starts `ladder` on loopback ports with `args`, and waits for its
    /// start-up line.
    pub async fn start(args: &[&str]) -> Result<Self> {
        let certs = temp_dir("child-certs");
        let mut proc = Command::new(env!("CARGO_BIN_EXE_ladder"))
            .args([
                "--http",
                "127.0.0.1:0",
                "--h3",
                "127.0.0.1:0",
                "--certs-dir",
            ])
            .arg(&certs)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
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
        Ok(Self { proc, base })
    }

    /// Sends `signal` (e.g. `-KILL`, `-TERM`) and returns the exit status.
    pub async fn signal(mut self, signal: &str) -> Result<std::process::ExitStatus> {
        let pid = self.proc.id().context("pid")?.to_string();
        let ok = Command::new("kill").args([signal, &pid]).status().await?;
        ensure!(ok.success(), "kill {signal} {pid} failed");
        Ok(within("the child to exit", self.proc.wait()).await??)
    }
}

/// Runs `ladder` with `args` expecting it to refuse to start: returns its
/// exit status and stderr.
pub async fn start_fails(args: &[&str]) -> Result<(std::process::ExitStatus, String)> {
    let certs = temp_dir("child-certs");
    let out = Command::new(env!("CARGO_BIN_EXE_ladder"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--h3",
            "127.0.0.1:0",
            "--certs-dir",
        ])
        .arg(&certs)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = within("ladder to exit", out).await??;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Publishes over HTTP to any base URL; returns status and body.
pub async fn post(
    http: &reqwest::Client,
    base: &str,
    channel: &str,
    data: &Value,
) -> Result<(u16, Value)> {
    let resp = within(
        "publish",
        http.post(format!("{base}/api/channels/{channel}/messages"))
            .json(data)
            .send(),
    )
    .await??;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

/// A `redis-server` of the test's own on a free loopback port; killed when
/// dropped.
pub struct Redis {
    proc: Option<Proc>,
    pub port: u16,
    dir: std::path::PathBuf,
    persistent: bool,
}

impl Redis {
    /// Starts a throwaway Redis (no persistence).
    pub async fn start() -> Result<Self> {
        Self::start_with(false).await
    }

    /// Starts a Redis that fsyncs every write to its append-only file, so it
    /// can be stopped and started again without losing anything.
    pub async fn start_persistent() -> Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut r = Self {
            proc: None,
            port,
            dir: temp_dir("redis"),
            persistent,
        };
        r.run().await?;
        Ok(r)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) -> Result<()> {
        let aof: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(aof)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let proc = match spawned {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!(
                    "redis-server is not installed; run scripts/setup (it installs the Debian package redis-server)"
                )
            }
            Err(e) => return Err(e.into()),
        };
        self.proc = Some(proc);
        within("redis-server to accept connections", async {
            while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_err()
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Kills the server (as a crash would).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill().await?;
        }
        Ok(())
    }

    /// Starts it again on the same port and directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.run().await
    }
}

/// A WebTransport session pinned to the server's certificate hash.
pub struct WtClient {
    conn: wtransport::Connection,
    _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

impl WtClient {
    /// Connects to the `/wt` URL `/api/info` advertises.
    pub async fn connect(s: &TestServer) -> Result<Self> {
        let (_, info) = s.get_json("/api/info").await?;
        let url = info["webtransport"]["url"]
            .as_str()
            .context("webtransport.url")?;
        let hex = info["webtransport"]["cert_sha256"]
            .as_str()
            .context("cert_sha256")?;
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
        }
        let cfg = wtransport::ClientConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
            .build();
        let endpoint = wtransport::Endpoint::client(cfg)?;
        let conn = within("wt connect", endpoint.connect(url)).await??;
        Ok(Self {
            conn,
            _endpoint: endpoint,
        })
    }

    /// Opens a bidirectional stream of JSON lines.
    pub async fn stream(&self) -> Result<WtLines> {
        let (send, recv) = within("open_bi", async {
            anyhow::Ok(self.conn.open_bi().await?.await?)
        })
        .await??;
        Ok(WtLines {
            send,
            recv,
            buf: Vec::new(),
        })
    }
}

/// JSON lines over one WebTransport stream.
pub struct WtLines {
    send: wtransport::SendStream,
    recv: wtransport::RecvStream,
    buf: Vec<u8>,
}

impl WtLines {
    pub async fn send(&mut self, op: Value) -> Result<()> {
        within(
            "wt write",
            self.send.write_all(format!("{op}\n").as_bytes()),
        )
        .await??;
        Ok(())
    }

    pub async fn recv(&mut self) -> Result<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(serde_json::from_slice(&line)?);
            }
            let mut chunk = [0u8; 16 * 1024];
            match within("wt read", self.recv.read(&mut chunk)).await?? {
                Some(n) => self.buf.extend_from_slice(&chunk[..n]),
                None => bail!("wt stream finished"),
            }
        }
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
