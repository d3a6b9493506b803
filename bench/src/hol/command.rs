//! `ladder-bench hol`: re-runs itself inside a user and network namespace,
//! starts the [`wire`](ladder_lab::wire) and one Ladder process listening on
//! every address, then for each run, channel count and loss level sets the
//! loss and measures the three variants side by side ([`super::run`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ladder_lab::netns;
use serde_json::json;
use tokio::process::{Child, Command};

use super::{Endpoints, Spec};
use crate::probe::LADDER_LOAD_FLAGS;
use ladder_lab::wire::{FAR, Wire};

/// The `hol` command's options.
#[derive(Debug, Clone, clap::Args)]
pub struct HolArgs {
    /// The Ladder binary to measure.
    #[arg(long, default_value = "target/release/ladder")]
    pub server_bin: String,
    /// Channel counts (N), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    pub channels: Vec<usize>,
    /// Loss levels in percent, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,5")]
    pub loss: Vec<f64>,
    /// Messages per second per channel (R).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds of publishing per run.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Delay each way across the wire, ms.
    #[arg(long, default_value_t = 20)]
    pub delay_ms: u64,
    /// Serialised size of each message's data, bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Repetitions of the whole grid.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Longest wait after the last publish for the stream variants, s.
    #[arg(long, default_value_t = 20)]
    pub drain_s: u64,
}

/// Runs the command: outside a namespace, re-runs this same command inside
/// one and passes its exit status on.
pub async fn main(args: HolArgs) -> Result<()> {
    if !netns::inside() {
        let exe = std::env::current_exe()?;
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let status = netns::in_namespace(exe.to_str().context("exe path")?, &argv)
            .status()
            .context("unshare (util-linux) could not start")?;
        if !status.success() {
            bail!("the run inside the namespace failed ({status})");
        }
        return Ok(());
    }
    let wire = Wire::start(Duration::from_millis(args.delay_ms))?;
    let (mut server, ep) = start_ladder(&args.server_bin).await?;
    println!(
        "# hol: {} ms each way, R = {}/s, {} s per run",
        args.delay_ms, args.rate, args.seconds
    );
    let count = (args.rate * args.seconds).round() as u64;
    for run in 1..=args.runs {
        for &n in &args.channels {
            for &loss in &args.loss {
                wire.set_loss(loss)?;
                let spec = Spec {
                    channels: n,
                    rate: args.rate,
                    count,
                    size: args.size,
                    tag: format!("hol{run}n{n}l{}", (loss * 100.0) as u64),
                    drain: Duration::from_secs(args.drain_s),
                };
                let out = super::run(&ep, &spec).await?;
                let counters = wire.counters()?;
                let title =
                    format!("run {run}: loss {loss} %, N = {n}, {count} messages per channel");
                print!("{}", out.table(&title, Some(&counters)));
                let extra = json!({"run": run, "loss_pct": loss, "channels": n, "rate": args.rate,
                                   "count": count, "delay_ms": args.delay_ms});
                println!("JSON {}", out.json(extra, Some(&counters)));
            }
        }
    }
    let _ = server.kill().await;
    Ok(())
}

/// Starts Ladder on free ports on every address (so both loopback and the
/// wire reach it) and waits until its `/api/info` answers.
async fn start_ladder(bin: &str) -> Result<(Child, Endpoints)> {
    let free = |udp: bool| -> Result<u16> {
        Ok(if udp {
            std::net::UdpSocket::bind("0.0.0.0:0")?.local_addr()?.port()
        } else {
            std::net::TcpListener::bind("0.0.0.0:0")?
                .local_addr()?
                .port()
        })
    };
    let (hp, qp) = (free(false)?, free(true)?);
    let certs = std::env::temp_dir().join(format!("ladder-hol-certs-{}", std::process::id()));
    let child = Command::new(bin)
        .args([
            "--http",
            &format!("0.0.0.0:{hp}"),
            "--h3",
            &format!("0.0.0.0:{qp}"),
        ])
        .arg("--certs-dir")
        .arg(&certs)
        .args(LADDER_LOAD_FLAGS)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {bin} (build it: cargo build --release)"))?;
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), hp);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let info: serde_json::Value = loop {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(2),
            reqwest::get(format!("http://{local}/api/info")),
        )
        .await
        {
            break r.json().await?;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{bin} did not answer on {local} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let hash = info["webtransport"]["cert_sha256"]
        .as_str()
        .context("no WebTransport in /api/info")?;
    Ok((
        child,
        Endpoints {
            publish_http: local,
            http: SocketAddr::new(IpAddr::V4(FAR), hp),
            wt_url: format!("https://{}/wt", SocketAddr::new(IpAddr::V4(FAR), qp)),
            cert_hash: hash.to_owned(),
        },
    ))
}
