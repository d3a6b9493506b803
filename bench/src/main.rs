//! `ladder-bench`: fan-out load, idle memory and the raw-quinn baseline
//! against Ladder (started here with `--server-bin`, or running at `--http`
//! with `--server-pid`) or a Node peer (`--server-cmd`). See BENCHMARKS.md.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ladder_bench::clients::Kind;
use ladder_bench::load::{self, LoadSpec};
use ladder_bench::probe::{Peer, Spawned, Target};
use ladder_bench::report::LoadResult;
use ladder_bench::{backends, floor, idle, quic_base, sys};

#[derive(Parser)]
#[command(
    name = "ladder-bench",
    about = "Load and comparison harness for Ladder"
)]
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
        /// WebSocket subscribers that stop reading once subscribed.
        #[arg(long, default_value_t = 0)]
        slow: usize,
    },
    /// N idle subscribed connections per transport: server KiB and CPU per
    /// connection, and a message after the hold to prove each is live.
    Idle {
        #[command(flatten)]
        server: ServerOpts,
        #[command(flatten)]
        load: LoadOpts,
        /// Seconds to hold the connections (then RSS and CPU are read).
        #[arg(long, default_value_t = 3)]
        settle_s: u64,
        /// Longest wait, s, for every connection to receive the message
        /// published after the hold.
        #[arg(long, default_value_t = 30)]
        drain_s: u64,
    },
    /// Raw quinn vs a Ladder WebTransport stream: bulk download, bulk echo, RTT.
    Quinn {
        #[command(flatten)]
        server: ServerOpts,
        /// Bytes downloaded, MiB.
        #[arg(long, default_value_t = 256)]
        bulk_mib: usize,
        /// Payload size, bytes.
        #[arg(long, default_value_t = 60_000)]
        payload: usize,
        /// Payloads echoed in bulk.
        #[arg(long, default_value_t = 4000)]
        echoes: usize,
        /// Round trips timed.
        #[arg(long, default_value_t = 2000)]
        rtts: usize,
        /// Interleaved repetitions of the bulk runs (the best is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// The fan-out floor: a blocking server writing a 66 B frame per
    /// socket per message (or `--batch` frames per write).
    Floor {
        #[command(flatten)]
        server: ServerOpts,
        /// Sockets.
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Messages.
        #[arg(long, default_value_t = 500)]
        count: u64,
        /// Frames coalesced per write.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Measure QUIC's floor instead: raw quinn, one stream per
        /// connection, a 64-byte write per stream per message.
        #[arg(long, conflicts_with = "batch")]
        quic: bool,
        /// Client UDP sockets for `--quic`.
        #[arg(long, default_value_t = 8)]
        endpoints: usize,
    },
    /// Head-of-line blocking under real packet loss: N channels on one
    /// WebSocket vs a WebTransport stream per channel vs datagrams, inside
    /// a network namespace with kernel packet loss and a delay each way.
    Hol(ladder_bench::hol::command::HolArgs),
    /// SSE over HTTP/1.1, HTTP/2 and HTTP/3 in one run: CPU per delivery and
    /// memory per subscriber, as ratios to HTTP/1.1.
    SseVersions(ladder_bench::versions::VersionsArgs),
    /// Every log backend side by side (memory, durable, Redis): publish
    /// throughput and latency, servers in this process.
    Backends,
    /// (internal) The floor measurement's server.
    FloorServer {
        #[arg(long)]
        subs: usize,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        batch: usize,
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

impl ServerOpts {
    /// The options for a run of `kind`: a started Ladder gets `--https`
    /// when `kind` needs its TLS listeners.
    fn for_kind(&self, kind: Kind) -> Self {
        let mut o = self.clone();
        if kind.needs_tls() && o.server_bin.is_some() {
            o.server_args
                .extend(["--https".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        o
    }
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

/// A server for one run, started here or attached to. A start is retried
/// twice: the free port probed for it can be taken by a client's ephemeral
/// port before the server binds it.
async fn server(o: &ServerOpts) -> Result<(Target, Option<Spawned>)> {
    let mut tries = 0;
    let spawned = loop {
        let r = match (&o.server_bin, &o.server_cmd) {
            (Some(bin), _) => Spawned::ladder(bin, o.server_cpu.as_deref(), &o.server_args)
                .await
                .map(Some),
            (None, Some(cmd)) => Spawned::command(cmd, o.server_cpu.as_deref())
                .await
                .map(Some),
            (None, None) => Ok(None),
        };
        match r {
            Ok(s) => break s,
            Err(e) if tries < 2 => {
                eprintln!("# server start failed ({e:#}); retrying");
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let (http, pid) = match &spawned {
        Some(s) => (s.http, Some(s.pid)),
        None => (
            o.http
                .context("give --server-bin, --server-cmd or --http")?,
            o.server_pid,
        ),
    };
    let peer = if o.server_bin.is_some() {
        Peer::Ladder
    } else {
        o.peer
    };
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
        Cmd::Fanout { server, .. }
        | Cmd::Idle { server, .. }
        | Cmd::Quinn { server, .. }
        | Cmd::Floor { server, .. } => server.client_cpu.clone(),
        Cmd::SseVersions(a) => a.client_cpu.clone(),
        Cmd::QuinnServer { .. } | Cmd::FloorServer { .. } | Cmd::Hol(_) | Cmd::Backends => None,
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
        Cmd::Hol(args) => ladder_bench::hol::command::main(args).await,
        Cmd::Backends => backends::run().await,
        Cmd::SseVersions(a) => {
            let v = ladder_bench::versions::run(&a).await?;
            println!("JSON {v}");
            Ok(())
        }
        Cmd::FloorServer {
            subs,
            rate,
            count,
            batch,
        } => tokio::task::spawn_blocking(move || floor::serve(subs, rate, count, batch)).await?,
        Cmd::Floor {
            server: so,
            subs,
            rate,
            count,
            batch,
            quic,
            endpoints,
        } => {
            let cpu = so.server_cpu.as_deref();
            let v = if quic {
                quic_base::floor(cpu, subs, rate, count, endpoints).await?
            } else {
                floor::run(cpu, subs, rate, count, batch).await?
            };
            let us = v["server_cpu_us_per_delivery"].as_f64().unwrap_or(f64::NAN);
            if quic {
                println!(
                    "quic floor: {subs} connections, {rate} msg/s: {us:.2} µs server CPU per \
                     delivery, {} streams short",
                    v["short_streams"]
                );
            } else {
                println!(
                    "floor: {subs} sockets, {rate} msg/s, batch {batch}: {us:.2} µs server CPU \
                     per delivery"
                );
            }
            println!("JSON {v}");
            Ok(())
        }
        Cmd::Fanout {
            server: so,
            load: lo,
            rate,
            count,
            size,
            poll_interval_ms,
            drain_s,
            window,
            slow,
        } => {
            eprintln!(
                "# RLIMIT_NOFILE={nofile} client threads={}",
                sys::allowed_cpus()
            );
            println!("{}", LoadResult::header());
            for kind in &lo.transport {
                let spec = LoadSpec {
                    rate: (rate > 0.0).then_some(rate),
                    count,
                    size,
                    poll_interval: Duration::from_millis(poll_interval_ms),
                    drain: Duration::from_secs(drain_s),
                    window,
                    slow,
                    ..lo.spec(*kind)
                };
                let (target, spawned) = match server(&so.for_kind(*kind)).await {
                    Ok(t) => t,
                    Err(e) => {
                        println!(
                            "{} {}: server did not start: {e:#}",
                            spec.label,
                            kind.name()
                        );
                        continue;
                    }
                };
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
            drain_s,
        } => {
            eprintln!("# RLIMIT_NOFILE={nofile}");
            for kind in &lo.transport {
                if !idle::supported(*kind) {
                    continue;
                }
                let (target, spawned) = match server(&so.for_kind(*kind)).await {
                    Ok(t) => t,
                    Err(e) => {
                        println!("idle {}: server did not start: {e:#}", kind.name());
                        continue;
                    }
                };
                let spec = LoadSpec {
                    drain: Duration::from_secs(drain_s),
                    ..lo.spec(*kind)
                };
                let r = idle::run(&target, &spec, Duration::from_secs(settle_s)).await;
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
            reps,
        } => {
            // The channel replayed for the bulk download must retain it all.
            let mut so = so;
            let history = (bulk_mib << 20).div_ceil(payload.max(1)) + 16;
            so.server_args
                .extend(["--history".to_owned(), history.to_string()]);
            let (target, spawned) = server(&so).await?;
            let qs = quic_base::spawn_server(so.server_cpu.as_deref()).await?;
            let spec = quic_base::BaseSpec {
                bulk_bytes: bulk_mib << 20,
                payload,
                echoes,
                rtts,
                reps,
            };
            let r = quic_base::compare(qs.0, &qs.1, &target, &spec).await;
            stop(spawned).await;
            let v = r?;
            for (name, k) in [("raw quinn", "raw_quinn"), ("ladder wt", "ladder_wt")] {
                let f = |x: &str| v[k][x].as_f64().unwrap_or(f64::NAN);
                println!(
                    "{name}: download {:.2} Gbit/s, echo {:.2} Gbit/s, rtt p50 {:.0} µs p99 {:.0} µs",
                    f("download_gbit_s"),
                    f("echo_gbit_s"),
                    f("rtt_us_p50"),
                    f("rtt_us_p99"),
                );
            }
            println!("JSON {v}");
            Ok(())
        }
    }
}
