//! The real `ladder` binary as a child process, stopped and restarted on
//! the same ports.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout};

use super::Opts;

/// The real binary, started and stopped on the same ports.
pub(crate) struct ServerProc {
    pub(crate) bin: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) child: Option<Child>,
    pub(crate) log: PathBuf,
    pub(crate) graceful: u64,
    pub(crate) killed: u64,
}

impl ServerProc {
    pub(crate) fn new(opts: &Opts, http: u16, h3: u16) -> Self {
        let mut args = vec![
            "--http".to_owned(),
            format!("127.0.0.1:{http}"),
            "--h3".to_owned(),
            format!("127.0.0.1:{h3}"),
            "--certs-dir".to_owned(),
            opts.work_dir.join("certs").display().to_string(),
            "--shutdown-timeout".to_owned(),
            "3".to_owned(),
        ];
        args.extend(opts.server_args.iter().cloned());
        Self {
            bin: opts.server_bin.clone(),
            args,
            child: None,
            log: opts.work_dir.join("server.log"),
            graceful: 0,
            killed: 0,
        }
    }

    /// Starts the server, retrying while its ports are not free yet.
    pub(crate) async fn start(&mut self) -> Result<()> {
        let mut last = String::new();
        for _ in 0..40 {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)?;
            let mut child = Command::new(&self.bin)
                .args(&self.args)
                .stdout(Stdio::piped())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", self.bin.display()))?;
            let stdout = child.stdout.take().context("stdout")?;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            match timeout(Duration::from_secs(20), lines.next_line()).await {
                Ok(Ok(Some(line))) if line.contains("http=") => {
                    // Keep reading so the pipe never fills.
                    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                    self.child = Some(child);
                    return Ok(());
                }
                other => {
                    last = format!("{other:?}");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    sleep(Duration::from_millis(250)).await;
                }
            }
        }
        bail!(
            "the server did not start: {last}; see {}",
            self.log.display()
        )
    }

    /// Stops the server: SIGTERM (and waits for its exit 0) or SIGKILL.
    pub(crate) async fn stop(&mut self, graceful: bool) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if graceful {
            let pid = child.id().context("pid")?;
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
            ensure!(status.success(), "kill -TERM failed");
            let exit = timeout(Duration::from_secs(15), child.wait())
                .await
                .context("the server did not exit after SIGTERM")??;
            ensure!(exit.success(), "exit after SIGTERM: {exit}");
            self.graceful += 1;
        } else {
            child.start_kill()?;
            child.wait().await?;
            self.killed += 1;
        }
        Ok(())
    }
}

/// A port the OS says is free now (TCP and UDP are checked separately).
pub(crate) fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}
