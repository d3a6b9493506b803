//! Fault-injecting soak: publishers and subscribers on all five rungs
//! against the real `ladder` binary, which is stopped (SIGTERM and SIGKILL,
//! in turn) and restarted on the same ports mid-run, while subscribers are
//! killed and resume at random. At the end every subscriber's record is
//! checked and the figures are printed. The engine and its clients are
//! `ladder_testkit::soak`'s, shared with `tests/it/soak.rs`.
//!
//! Run with (loopback only, bounded: `--secs` of faults, then at most 30 s
//! for subscribers to catch up):
//!
//! ```text
//! cargo build --release && cargo run --release --example soak -- --secs 120
//! cargo run --release --example soak -- --secs 120 --durable
//! cargo run --release --example soak -- --secs 60 -- --history 200
//! ```
//!
//! Arguments after `--` go to the server. `--durable` adds `--data-dir`
//! with a fresh directory and then expects no truncation at all.
//!
//! Clients: HTTP publishes, WebSocket and WebTransport `publish` ops (each
//! waits for its ack; only acked publishes count as published). Subscribers
//! start at `since=0` before anything is published; each short-polls,
//! long-polls, reads SSE (resuming with `Last-Event-ID`), or subscribes over
//! WebSocket or a WebTransport stream (resuming with `since` + `epoch`).
//! Every failure is retried with capped exponential backoff and jitter.
//!
//! The check, per subscriber: offsets strictly increase within an epoch, no
//! duplicates, no gap and no change of epoch that was not announced
//! (`truncated`, or `lagged`); and every acked message was delivered unless
//! an announced gap covers it. The server is `target/release/ladder`
//! unless `--server-bin` says otherwise.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, ensure};
use ladder_testkit::soak::{Opts, run};

/// Command line of the example.
#[derive(Debug, clap::Parser)]
#[command(about = "Fault-injecting soak against the ladder binary")]
struct Cli {
    /// Seconds of faults.
    #[arg(long, default_value_t = 120)]
    secs: u64,
    /// The server binary.
    #[arg(long, default_value = "target/release/ladder")]
    server_bin: PathBuf,
    /// Channels.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Subscribers per rung per channel.
    #[arg(long, default_value_t = 2)]
    subs_per_rung: usize,
    /// Milliseconds between one publisher's publishes.
    #[arg(long, default_value_t = 20)]
    publish_every_ms: u64,
    /// Seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Run with `--data-dir` (a fresh directory) and expect no truncation.
    #[arg(long)]
    durable: bool,
    /// Extra arguments for the server.
    #[arg(last = true)]
    server_args: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    use clap::Parser as _;
    let cli = Cli::parse();
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let work_dir = std::env::temp_dir().join(format!("ladder-soak-{}", std::process::id()));
    let mut server_args = cli.server_args;
    if cli.durable {
        server_args.push("--data-dir".to_owned());
        server_args.push(work_dir.join("data").display().to_string());
    }
    ensure!(
        cli.server_bin.exists(),
        "{} not found: run `cargo build --release` first or pass --server-bin",
        cli.server_bin.display()
    );
    let opts = Opts {
        secs: cli.secs,
        server_bin: cli.server_bin,
        server_args,
        channels: cli.channels,
        subs_per_rung: cli.subs_per_rung,
        publish_every: Duration::from_millis(cli.publish_every_ms),
        restart_every: (8.0, 16.0),
        kill_every: (1.0, 8.0),
        seed,
        expect_no_truncation: cli.durable,
        work_dir: work_dir.clone(),
    };
    let report = run(opts).await?;
    print!("{report}");
    report.check()?;
    println!("soak: ok");
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(())
}
