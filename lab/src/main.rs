//! `ladder-lab`: runs the network lab in front of a running Ladder server,
//! or runs a command inside a user and network namespace where the
//! `lossy-link` condition can drop real packets.
//!
//! ```text
//! ladder-lab run --http 127.0.0.1:8080 --h3 127.0.0.1:4433
//! ladder-lab netns -- cargo run --release -- --lab
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ladder_lab::{Condition, Lab, LabConfig, condition::default_conditions, netns};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(version, about = "Network conditions in front of a Ladder server")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run every condition's relays; type `switch` (and Enter) to switch
    /// networks, Ctrl-C to stop.
    Run(RunArgs),
    /// Run a command in a new user and network namespace with its loopback
    /// up, where `lossy-link` may make its wire and drop packets (no root
    /// needed).
    Netns {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The server's HTTP listener (twice, with two --h3, for round-robin).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: Vec<SocketAddr>,
    /// The server's QUIC endpoint, in the same order as --http.
    #[arg(long, default_value = "127.0.0.1:4433")]
    h3: Vec<SocketAddr>,
    /// Address the relays listen on (each on a free port).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Conditions to run (repeatable; join impairments with `+`).
    /// Default: every impairment alone plus the fallback stacks.
    #[arg(long = "condition")]
    conditions: Vec<Condition>,
    /// nat-timeout: seconds a flow may idle.
    #[arg(long, default_value_t = 30.0)]
    nat_timeout: f64,
    /// buffering-proxy: KiB held before a body is let through.
    #[arg(long, default_value_t = 32)]
    buffer_kib: usize,
    /// lossy-link: the wire's delay each way, milliseconds.
    #[arg(long, default_value_t = 40)]
    delay_ms: u64,
    /// lossy-link: percent of packets the kernel drops on the wire. The
    /// server must listen on every address (0.0.0.0) for the wire to
    /// reach it; the lab checks and says so.
    #[arg(long, default_value_t = 2.0)]
    loss: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match Cli::parse().command {
        Cmd::Netns { command } => {
            let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
            let status = netns::in_namespace(&command[0], &args)
                .status()
                .context("cannot run unshare (util-linux)")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.nat_timeout.is_finite() && args.nat_timeout > 0.0,
        "--nat-timeout must be a positive number of seconds"
    );
    let cfg = LabConfig {
        http: args.http,
        h3: args.h3,
        bind: args.bind,
        conditions: if args.conditions.is_empty() {
            default_conditions()
        } else {
            args.conditions
        },
        nat_timeout: Duration::from_secs_f64(args.nat_timeout),
        buffer_bytes: args.buffer_kib * 1024,
        delay: Duration::from_millis(args.delay_ms),
        loss_percent: args.loss,
    };
    let shutdown = CancellationToken::new();
    let lab = Lab::start(&cfg, shutdown.clone()).await?;
    for c in &lab.conditions {
        println!(
            "condition={} http={} webtransport={} ({})",
            c.name, c.http, c.webtransport, c.description
        );
    }
    for u in &lab.unavailable {
        println!("unavailable={} reason={}", u.name, u.reason);
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.trim() == "switch" => {
                    lab.switch_network();
                    println!("switched generation={}", lab.network_switch().generation());
                }
                Ok(Some(l)) if l.trim().is_empty() => {}
                Ok(Some(l)) => println!("unknown command {:?} (known: switch)", l.trim()),
                // Stdin closed (started in the background): keep running.
                Ok(None) | Err(_) => {
                    tokio::signal::ctrl_c().await?;
                    break;
                }
            },
        }
    }
    shutdown.cancel();
    Ok(())
}
