//! `ladder-bench`: fan-out load, idle memory and the raw-quinn baseline
//! against Ladder (started here with `--server-bin`, or running at `--http`
//! with `--server-pid`) or a Node peer (`--server-cmd`). See BENCHMARKS.md.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ladder_bench::clients::Kind;
use ladder_bench::load::{self, LoadSpec};
use ladder_bench::probe::{Peer, Spawned, Target};
use ladder_bench::report::LoadResult;
use ladder_bench::{idle, quic_base, sys};

#[derive(Parser)]
#[command(name = "ladder-bench", about = "Load and comparison harness for Ladder")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N subscribers per transport, one publisher; latency, loss, CPU, bytes.
    Fanout {
        #[command(flatten)]
        server: ServerOpts,
        #[command(flatten)]
        load: LoadOpts,
        /// Messages offered per second (0 = as fast as acks allow).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Messages published per run.
        #[arg(long, default_value_t = 5000)]
        count: u64,
        /// Serialised size of each message's data, bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Short-poll period, ms.
        #[arg(long, default_value_t = 1000)]
        poll_interval_ms: u64,
        /// Longest wait for stragglers after the last publish, s.
        #[arg(long, default_value_t = 15)]
        drain_s: u64,
        /// Unacknowledged publishes allowed with --rate 0.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    /// N idle subscribed connections per transport; server KiB per connection.
    Idle {
        #[command(flatten)]
        server: ServerOpts,
        #[command(flatten)]
        load: LoadOpts,
        /// Seconds to wait after connecting before reading RSS.
        #[arg(long, default_value_t = 3)]
        settle_s: u64,
    },
    /// Raw quinn vs a Ladder WebTransport stream: bulk download, bulk echo, RTT.
    Quinn {
        #[command(flatten)]
        server: ServerOpts,
        /// Bytes downloaded, MiB.
        #[arg(long, default_value_t = 32)]
        bulk_mib: usize,
        /// Payload size, bytes.
        #[arg(long, default_value_t = 60_000)]
        payload: usize,
        /// Payloads echoed in bulk.
        #[arg(long, default_value_t = 500)]
        echoes: usize,
        /// Round trips timed.
        #[arg(long, default_value_t = 2000)]
        rtts: usize,
    },
    /// (internal) The raw-quinn server of the baseline.
    QuinnServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: std::net::SocketAddr,
    },
}

#[derive(Args, Clone)]
struct ServerOpts {
    /// Start this Ladder binary (fresh per transport) with load flags.
    #[arg(long, conflicts_with_all = ["server_cmd", "http"])]
    server_bin: Option<String>,
    /// Extra arguments for --server-bin.
    #[arg(long, allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Start this peer command (fresh per transport); it gets PORT.
    #[arg(long, conflicts_with = "http")]
    server_cmd: Option<String>,
    /// Pin the started server to these CPUs (taskset -c).
    #[arg(long)]
    server_cpu: Option<String>,
    /// Pin this load client to these CPUs.
    #[arg(long)]
    client_cpu: Option<String>,
    /// An already running server's HTTP address.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Its pid, for CPU and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// What the server is.
    #[arg(long, value_enum, default_value_t = Peer::Ladder)]
    peer: Peer,
}

#[derive(Args, Clone)]
struct LoadOpts {
    /// Transports, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "websocket")]
    transport: Vec<Kind>,
    /// Subscribers (connections) per transport.
    #[arg(long, default_value_t = 1000)]
    subs: usize,
    /// Spread clients over 127.0.0.1..=127.0.0.K.
    #[arg(long, default_value_t = 4)]
    src_ips: usize,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// WebTransport client endpoints (UDP sockets).
    #[arg(long, default_value_t = 4)]
    wt_endpoints: usize,
    /// Label for the report.
    #[arg(long, default_value = "run")]
    label: String,
}

impl LoadOpts {
    fn spec(&self, kind: Kind) -> LoadSpec {
        LoadSpec {
            kind,
            subs: self.subs,
            src_ips: self.src_ips,
            connect_concurrency: self.connect_concurrency,
            wt_endpoints: self.wt_endpoints,
            label: self.label.clone(),
            ..LoadSpec::tiny(kind, self.subs, 0)
        }
    }
}

/// A server for one run, started here or attached to.
async fn server(o: &ServerOpts) -> Result<(Target, Option<Spawned>)> {
    let spawned = match (&o.server_bin, &o.server_cmd) {
        (Some(bin), _) => Some(Spawned::ladder(bin, o.server_cpu.as_deref(), &o.server_args).await?),
        (None, Some(cmd)) => Some(Spawned::command(cmd, o.server_cpu.as_deref()).await?),
        (None, None) => None,
    };
    let (http, pid) = match &spawned {
        Some(s) => (s.http, Some(s.pid)),
        None => (o.http.context("give --server-bin, --server-cmd or --http")?, o.server_pid),
    };
    let peer = if o.server_bin.is_some() { Peer::Ladder } else { o.peer };
    Ok((Target::discover(http, peer, pid).await?, spawned))
}

async fn stop(s: Option<Spawned>) {
    if let Some(s) = s {
        s.stop().await;
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let client_cpu = match &cli.cmd {
        Cmd::Fanout { server, .. } | Cmd::Idle { server, .. } | Cmd::Quinn { server, .. } => {
            server.client_cpu.clone()
        }
        Cmd::QuinnServer { .. } => None,
    };
    if let Some(c) = client_cpu {
        sys::pin_self(&sys::parse_cpus(&c)?)?;
    }
    let nofile = sys::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(sys::allowed_cpus())
        .enable_all()
        .build()?;
    rt.block_on(async_main(cli, nofile))
}

async fn async_main(cli: Cli, nofile: u64) -> Result<()> {
    match cli.cmd {
        Cmd::QuinnServer { addr } => quic_base::serve(addr).await,
        Cmd::Fanout {
            server: so,
            load: lo,
            rate,
            count,
            size,
            poll_interval_ms,
            drain_s,
            window,
        } => {
            eprintln!("# RLIMIT_NOFILE={nofile} client threads={}", sys::allowed_cpus());
            println!("{}", LoadResult::header());
            for kind in &lo.transport {
                let spec = LoadSpec {
                    rate: (rate > 0.0).then_some(rate),
                    count,
                    size,
                    poll_interval: Duration::from_millis(poll_interval_ms),
                    drain: Duration::from_secs(drain_s),
                    window,
                    ..lo.spec(*kind)
                };
                let (target, spawned) = server(&so).await?;
                let r = load::run(&target, &spec).await;
                stop(spawned).await;
                match r {
                    Ok(r) => r.print(),
                    Err(e) => println!("{} {}: error: {e:#}", spec.label, kind.name()),
                }
            }
            Ok(())
        }
        Cmd::Idle {
            server: so,
            load: lo,
            settle_s,
        } => {
            eprintln!("# RLIMIT_NOFILE={nofile}");
            for kind in &lo.transport {
                if !idle::supported(*kind) {
                    continue;
                }
                let (target, spawned) = server(&so).await?;
                let r = idle::run(&target, &lo.spec(*kind), Duration::from_secs(settle_s)).await;
                stop(spawned).await;
                match r {
                    Ok(v) => {
                        println!("{}", idle::row(&v));
                        println!("JSON {v}");
                    }
                    Err(e) => println!("idle {}: error: {e:#}", kind.name()),
                }
            }
            Ok(())
        }
        Cmd::Quinn {
            server: so,
            bulk_mib,
            payload,
            echoes,
            rtts,
        } => {
            let (target, spawned) = server(&so).await?;
            let qs = quinn_server(so.server_cpu.as_deref()).await?;
            let spec = quic_base::BaseSpec {
                bulk_bytes: bulk_mib << 20,
                payload,
                echoes,
                rtts,
            };
            let r = quic_base::compare(qs.0, &qs.1, &target, &spec).await;
            stop(spawned).await;
            let v = r?;
            println!(
                "raw quinn: download {:.2} Gbit/s, echo {:.2} Gbit/s, rtt p50 {} µs",
                v["raw_quinn"]["download_gbit_s"], v["raw_quinn"]["echo_gbit_s"], v["raw_quinn"]["rtt_us_p50"]
            );
            println!(
                "ladder wt: download {:.2} Gbit/s, echo {:.2} Gbit/s, rtt p50 {} µs",
                v["ladder_wt"]["download_gbit_s"], v["ladder_wt"]["echo_gbit_s"], v["ladder_wt"]["rtt_us_p50"]
            );
            println!("JSON {v}");
            Ok(())
        }
    }
}

/// Starts `ladder-bench quinn-server` (this executable) pinned like the
/// server; returns its address and certificate hash. It dies with us.
async fn quinn_server(cpu: Option<&str>) -> Result<(std::net::SocketAddr, String, tokio::process::Child)> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe()?;
    let mut cmd = match cpu {
        Some(c) => {
            let mut c2 = tokio::process::Command::new("taskset");
            c2.args(["-c", c]).arg(&exe);
            c2
        }
        None => tokio::process::Command::new(&exe),
    };
    let mut child = cmd
        .arg("quinn-server")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .context("quinn-server printed nothing")?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
    };
    let (Some(addr), Some(hash)) = (field("addr="), field("cert_sha256=")) else {
        bail!("bad quinn-server line {line:?}")
    };
    Ok((addr.parse()?, hash, child))
}
