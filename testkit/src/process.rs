//! The `ladder` binary as a child process: [`LadderCommand`] says how to
//! start it (loopback port 0 by default, or fixed ports so that it can be
//! restarted in place; pinned to CPUs; where stderr goes), and
//! [`LadderProcess`] is the started server, its start-up line read back.
//!
//! Used by the tests that need a real process (signals, restarts), by the
//! soak (restarts on the same ports) and by the bench (a pinned server
//! whose CPU time and memory are read from `/proc`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{Base, WAIT, temp_dir, within, within_for};

/// Where the server's stderr goes.
#[derive(Debug, Clone)]
pub enum Stderr {
    /// Read by us: shown if the server exits before its start-up line,
    /// drained afterwards.
    Capture,
    /// This process's stderr.
    Inherit,
    /// Appended to a file (a log kept across restarts).
    Append(PathBuf),
}

/// How to start the `ladder` binary.
#[derive(Debug, Clone)]
pub struct LadderCommand {
    bin: PathBuf,
    http: SocketAddr,
    h3: SocketAddr,
    certs_dir: Option<PathBuf>,
    args: Vec<String>,
    cpu: Option<String>,
    env: Vec<(String, String)>,
    stderr: Stderr,
    start_wait: Duration,
}

impl LadderCommand {
    /// `bin` on loopback port 0 (HTTP and QUIC), certificates in a fresh
    /// directory, stderr captured.
    pub fn new(bin: impl AsRef<Path>) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            bin: bin.as_ref().to_owned(),
            http: any,
            h3: any,
            certs_dir: None,
            args: Vec::new(),
            cpu: None,
            env: Vec::new(),
            stderr: Stderr::Capture,
            start_wait: WAIT,
        }
    }

    /// Fixed addresses (a server restarted in place keeps its ports).
    pub fn addrs(mut self, http: SocketAddr, h3: SocketAddr) -> Self {
        self.http = http;
        self.h3 = h3;
        self
    }

    /// The certificate directory (default: a fresh one per start).
    pub fn certs_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.certs_dir = Some(dir.into());
        self
    }

    /// More arguments, after the addresses and the certificate directory.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs it under `taskset -c CPUS`.
    pub fn cpu(mut self, cpus: Option<&str>) -> Self {
        self.cpu = cpus.map(str::to_owned);
        self
    }

    /// An environment variable for the server.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Where stderr goes (default: captured).
    pub fn stderr(mut self, stderr: Stderr) -> Self {
        self.stderr = stderr;
        self
    }

    /// Longest wait for the start-up line (default [`WAIT`]).
    pub fn start_wait(mut self, wait: Duration) -> Self {
        self.start_wait = wait;
        self
    }

    fn command(&self) -> Result<Command> {
        let mut cmd = match &self.cpu {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", c]).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        let certs = match &self.certs_dir {
            Some(d) => d.clone(),
            None => temp_dir("child-certs"),
        };
        cmd.arg("--http")
            .arg(self.http.to_string())
            .arg("--h3")
            .arg(self.h3.to_string())
            .arg("--certs-dir")
            .arg(certs)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        match &self.stderr {
            Stderr::Capture => cmd.stderr(Stdio::piped()),
            Stderr::Inherit => cmd.stderr(Stdio::inherit()),
            Stderr::Append(path) => cmd.stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
        };
        Ok(cmd)
    }

    /// Starts the server and waits for its start-up line.
    pub async fn start(&self) -> Result<LadderProcess> {
        let mut child = self
            .command()?
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let banner = within_for(self.start_wait, "the start-up line", async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("http=") {
                    return Ok(Some(line));
                }
            }
            anyhow::Ok(None)
        })
        .await;
        let banner = match banner {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = child.start_kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = within("stderr", e.read_to_string(&mut err)).await;
                }
                let _ = within("the child to exit", child.wait()).await;
                match other {
                    Err(e) => bail!("{e:#}; stderr: {err}"),
                    Ok(Err(e)) => bail!("reading stdout: {e:#}; stderr: {err}"),
                    Ok(Ok(_)) => bail!("ladder exited before its start-up line: {err}"),
                }
            }
        };
        // Keep reading so that neither pipe ever fills and blocks the server.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        if let Some(err) = child.stderr.take() {
            let mut err = BufReader::new(err).lines();
            tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
        }
        let base = banner
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .context("http= in the start-up line")?
            .to_owned();
        let http = base
            .strip_prefix("http://")
            .context("http:// in the start-up line")?
            .parse()?;
        let pid = child.id().context("pid")?;
        Ok(LadderProcess {
            child,
            base,
            http,
            pid,
            banner,
        })
    }

    /// Runs the server expecting it to refuse to start: its exit status and
    /// stderr.
    pub async fn fails(&self) -> Result<(ExitStatus, String)> {
        let mut cmd = self.command()?;
        cmd.stderr(Stdio::piped());
        let out = within("ladder to exit", cmd.output()).await??;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// A started `ladder` process; killed when dropped.
#[derive(Debug)]
pub struct LadderProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The HTTP listener's address.
    pub http: SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// The start-up line, as printed.
    pub banner: String,
}

impl Base for LadderProcess {
    fn base(&self) -> &str {
        &self.base
    }
}

impl LadderProcess {
    /// Sends `signal` (e.g. `-KILL`, `-TERM`) and returns the exit status.
    pub async fn signal(mut self, signal: &str) -> Result<ExitStatus> {
        self.send_signal(signal).await?;
        Ok(within("the server to exit", self.child.wait()).await??)
    }

    async fn send_signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid.to_string();
        let ok = Command::new("kill").args([signal, &pid]).status().await?;
        ensure!(ok.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// Stops the server: SIGTERM and a clean exit within `grace`, or, when
    /// `grace` is `None`, SIGKILL at once.
    pub async fn stop(mut self, grace: Option<Duration>) -> Result<()> {
        match grace {
            Some(grace) => {
                self.send_signal("-TERM").await?;
                let exit = within_for(grace, "the server to exit after SIGTERM", self.child.wait())
                    .await??;
                ensure!(exit.success(), "exit after SIGTERM: {exit}");
            }
            None => {
                self.child.start_kill()?;
                within("the server to die", self.child.wait()).await??;
            }
        }
        Ok(())
    }

    /// Stops the server as a tool would: SIGTERM, then SIGKILL if it has
    /// not exited within 5 s. Never fails.
    pub async fn terminate(mut self) {
        if self.send_signal("-TERM").await.is_ok()
            && within_for(Duration::from_secs(5), "exit", self.child.wait())
                .await
                .is_ok()
        {
            return;
        }
        let _ = self.child.kill().await;
    }
}
