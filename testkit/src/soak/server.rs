//! The real `ladder` binary, stopped and restarted on the same ports.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::sleep;

use super::Opts;
use crate::process::{LadderCommand, LadderProcess, Stderr};

/// The server, started and stopped on the same ports.
pub(crate) struct ServerProc {
    cmd: LadderCommand,
    child: Option<LadderProcess>,
    /// Stops by SIGTERM.
    pub(crate) graceful: u64,
    /// Stops by SIGKILL.
    pub(crate) killed: u64,
}

impl ServerProc {
    pub(crate) fn new(opts: &Opts, http: SocketAddr, h3: SocketAddr) -> Self {
        let cmd = LadderCommand::new(&opts.server_bin)
            .addrs(http, h3)
            .certs_dir(opts.work_dir.join("certs"))
            .args(["--shutdown-timeout", "3"])
            .args(&opts.server_args)
            .stderr(Stderr::Append(opts.work_dir.join("server.log")));
        Self {
            cmd,
            child: None,
            graceful: 0,
            killed: 0,
        }
    }

    /// Starts the server, retrying while its ports are not free yet.
    pub(crate) async fn start(&mut self) -> Result<()> {
        let mut last = String::new();
        for _ in 0..40 {
            match self.cmd.start().await {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => {
                    last = format!("{e:#}");
                    sleep(Duration::from_millis(250)).await;
                }
            }
        }
        bail!("the server did not start: {last}; see server.log in the work directory")
    }

    /// Stops the server: SIGTERM (and waits for its exit 0) or SIGKILL.
    pub(crate) async fn stop(&mut self, graceful: bool) -> Result<()> {
        let Some(child) = self.child.take() else {
            return Ok(());
        };
        if graceful {
            child.stop(Some(Duration::from_secs(15))).await?;
            self.graceful += 1;
        } else {
            child.stop(None).await?;
            self.killed += 1;
        }
        Ok(())
    }
}
