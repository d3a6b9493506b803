//! Log backends end to end: the embedded durable log across restarts (a
//! real SIGKILL of the `ladder` binary included), and several nodes sharing
//! channels through a real `redis-server`.
//!
//! Fixtures here: [`Redis`] runs `redis-server` on a free loopback port with
//! a temp dir; [`Child`] (the built `ladder` binary as a process) is in
//! `helpers.rs`, the WebTransport client in `wt_client.rs`.

mod blackhole;
mod cluster;
mod cluster_kill;
mod cluster_moves;
mod durable;
mod expiry;
mod idempotent;
mod redis;
mod routing;

use std::process::Stdio;

use anyhow::Result;
use serde_json::Value;
use tokio::process::{Child as Proc, Command};

use crate::helpers::*;

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

/// A loopback port free now (the OS's pick); free only until someone
/// binds it, which is why [`Redis`] tries another when it was taken.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// In [`Redis::start_args`], stands for a free port picked afresh on every
/// attempt to start (a cluster bus port is taken as easily as the main
/// one), and kept for [`Redis::restart`].
pub(super) const FREE_PORT: &str = "{free port}";

/// A `redis-server` of the test's own on a free loopback port; killed when
/// dropped.
pub struct Redis {
    proc: Option<Proc>,
    pub port: u16,
    dir: std::path::PathBuf,
    persistent: bool,
    extra: Vec<String>,
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

    /// Starts a throwaway Redis with extra `redis-server` arguments.
    pub async fn start_args(extra: &[&str]) -> Result<Self> {
        Self::start_full(false, extra).await
    }

    async fn start_with(persistent: bool) -> Result<Self> {
        Self::start_full(persistent, &[]).await
    }

    async fn start_full(persistent: bool, extra: &[&str]) -> Result<Self> {
        // The ports are found free and then handed to redis-server, so a
        // parallel test's socket can take one in between; redis-server then
        // exits at once, and other ports are tried (five times at most).
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let mut r = Self {
                proc: None,
                port,
                dir: temp_dir("redis"),
                persistent,
                extra: extra
                    .iter()
                    .map(|&a| match a {
                        FREE_PORT => free_port().map(|p| p.to_string()),
                        _ => Ok(a.to_owned()),
                    })
                    .collect::<Result<_>>()?,
            };
            match r.run().await {
                Err(e) if attempt < 5 && e.is::<Exited>() => continue,
                Err(e) => return Err(e),
                Ok(()) => return Ok(r),
            }
        }
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
            .args(&self.extra)
            .arg("--dir")
            .arg(&self.dir)
            // Its log, in its directory, says why when it exits early.
            .args(["--logfile", "redis.log"])
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
        let proc = self.proc.insert(proc);
        let (port, dir) = (self.port, &self.dir);
        within("redis-server to accept connections", async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                // Gone already (its port was taken): say so now rather
                // than wait out the bound.
                if let Some(status) = proc.try_wait()? {
                    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                    let why = log
                        .lines()
                        .rev()
                        .find(|l| l.contains(" # "))
                        .unwrap_or("")
                        .to_owned();
                    return Err(Exited { port, status, why }.into());
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(())
        })
        .await?
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

/// `redis-server` exited before it accepted a connection.
#[derive(Debug, thiserror::Error)]
#[error("redis-server exited ({status}) before accepting connections on port {port}: {why}")]
pub struct Exited {
    port: u16,
    status: std::process::ExitStatus,
    /// The last warning its log gave.
    why: String,
}
