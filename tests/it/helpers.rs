//! The integration tests' fixtures: everything from `ladder-testkit` (the
//! server on port 0 and one client per rung, shared with the soak and the
//! bench), plus what only this package can provide — the path of the built
//! `ladder` binary — and checks that look inside the server's state.

#![allow(dead_code)]

use std::process::ExitStatus;

use anyhow::Result;
pub use ladder_testkit::process::{LadderCommand, LadderProcess};
#[allow(unused_imports)]
pub use ladder_testkit::{
    Base, Block, Sse, SseEvent, TestServer, WAIT, Ws, offsets, pairs, poll_until, temp_dir, within,
};

/// The `ladder` binary as a child process.
pub type Child = LadderProcess;

/// The built `ladder` binary on loopback port 0 with a certificate
/// directory of its own, then `args`.
pub fn ladder_command(args: &[&str]) -> LadderCommand {
    LadderCommand::new(env!("CARGO_BIN_EXE_ladder")).args(args)
}

/// Starting the built binary: `Child::start(&["--data-dir", …])`.
pub trait StartChild: Sized {
    /// Starts `ladder` on loopback ports with `args`, and waits for its
    /// start-up line.
    async fn start(args: &[&str]) -> Result<Self>;
}

impl StartChild for Child {
    async fn start(args: &[&str]) -> Result<Self> {
        ladder_command(args).start().await
    }
}

/// Runs `ladder` with `args` expecting it to refuse to start: returns its
/// exit status and stderr.
pub async fn start_fails(args: &[&str]) -> Result<(ExitStatus, String)> {
    ladder_command(args).fails().await
}

/// Looks inside the in-process server's state.
pub trait Inspect {
    /// Waits until no channel fan-out is running (every lent socket and
    /// stream has left).
    async fn fanouts_stopped(&self) -> Result<()>;
}

impl Inspect for TestServer {
    async fn fanouts_stopped(&self) -> Result<()> {
        within("fan-outs to stop", async {
            while !self.fanouts.is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
    }
}
