//! `sse-versions`: SSE over HTTP/1.1, HTTP/2 and HTTP/3 side by side in
//! one run — server CPU per delivery (a fan-out load) and server memory per
//! subscriber (idle subscribers, each proven live by a message after the
//! hold) — printed as ratios to HTTP/1.1.
//!
//! Each measurement gets a fresh server (with `--https`), so no version
//! inherits another's heap; `--reps` repeats the three versions
//! interleaved, to show how far the figures move between runs.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::clients::Kind;
use crate::load::{self, LoadSpec};
use crate::probe::{Peer, Spawned, Target};
use crate::{idle, report::LoadResult};

/// The three versions, in the order they are reported.
pub const KINDS: [Kind; 3] = [Kind::Sse, Kind::SseH2, Kind::SseH3];

/// Options of `sse-versions`.
#[derive(clap::Args, Clone, Debug)]
pub struct VersionsArgs {
    /// The Ladder binary (started fresh, with `--https`, per measurement).
    #[arg(long)]
    pub server_bin: String,
    /// Pin the server to these CPUs (taskset -c).
    #[arg(long)]
    pub server_cpu: Option<String>,
    /// Pin this load client to these CPUs.
    #[arg(long)]
    pub client_cpu: Option<String>,
    /// Subscribers of the fan-out load, per version.
    #[arg(long, default_value_t = 500)]
    pub subs: usize,
    /// Messages per second of the fan-out load.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Messages of the fan-out load.
    #[arg(long, default_value_t = 500)]
    pub count: u64,
    /// Idle subscribers, per version (0 skips the memory measurement).
    #[arg(long, default_value_t = 1000)]
    pub idle_subs: usize,
    /// Seconds the idle subscribers are held before RSS is read.
    #[arg(long, default_value_t = 3)]
    pub settle_s: u64,
    /// Spread clients over 127.0.0.1..=127.0.0.K.
    #[arg(long, default_value_t = 4)]
    pub src_ips: usize,
    /// Rounds of the three versions, interleaved.
    #[arg(long, default_value_t = 1)]
    pub reps: usize,
}

/// A fresh Ladder with its TLS listeners.
async fn server(a: &VersionsArgs) -> Result<(Target, Spawned)> {
    let extra = ["--https".to_owned(), "127.0.0.1:0".to_owned()];
    let s = Spawned::ladder(&a.server_bin, a.server_cpu.as_deref(), &extra).await?;
    let target = Target::discover(s.http, Peer::Ladder, Some(s.pid)).await?;
    Ok((target, s))
}

/// One version's fan-out load on a fresh server.
async fn fanout(a: &VersionsArgs, kind: Kind, rep: usize) -> Result<LoadResult> {
    let (target, s) = server(a).await?;
    let spec = LoadSpec {
        rate: (a.rate > 0.0).then_some(a.rate),
        count: a.count,
        src_ips: a.src_ips,
        label: format!("versions#{rep}"),
        ..LoadSpec::tiny(kind, a.subs, a.count)
    };
    let r = load::run(&target, &spec).await;
    s.stop().await;
    r
}

/// One version's idle subscribers on a fresh server.
async fn held(a: &VersionsArgs, kind: Kind) -> Result<Value> {
    let (target, s) = server(a).await?;
    let spec = LoadSpec {
        src_ips: a.src_ips,
        drain: Duration::from_secs(30),
        ..LoadSpec::tiny(kind, a.idle_subs, 0)
    };
    let r = idle::run(&target, &spec, Duration::from_secs(a.settle_s)).await;
    s.stop().await;
    r
}

/// Runs every round and prints each result, then the ratios table and one
/// `JSON` line with every figure.
pub async fn run(a: &VersionsArgs) -> Result<Value> {
    let mut rounds = Vec::new();
    for rep in 0..a.reps.max(1) {
        let mut round = Vec::new();
        for kind in KINDS {
            let r = fanout(a, kind, rep)
                .await
                .with_context(|| format!("{} fan-out", kind.name()))?;
            r.print();
            let idle = match a.idle_subs {
                0 => Value::Null,
                _ => {
                    let v = held(a, kind)
                        .await
                        .with_context(|| format!("{} idle", kind.name()))?;
                    println!("{}", idle::row(&v));
                    v
                }
            };
            round.push(figures(kind, &r.json, &idle));
        }
        print_ratios(&round);
        rounds.push(Value::Array(round));
    }
    Ok(
        json!({ "kind": "sse-versions", "subs": a.subs, "rate": a.rate,
        "count": a.count, "idle_subs": a.idle_subs, "rounds": rounds }),
    )
}

/// The figures of one version compared across versions.
fn figures(kind: Kind, load: &Value, idle: &Value) -> Value {
    json!({
        "transport": kind.name(),
        "deliveries": load["deliveries"],
        "lost": load["lost"],
        "cpu_us_per_delivery": load["server_cpu_us_per_delivery"],
        "bytes_out_per_delivery": load["bytes_out_per_delivery"],
        "latency_ms_p50": load["latency_ms"]["p50"],
        "latency_ms_p99": load["latency_ms"]["p99"],
        "kib_per_subscriber": idle["kib_per_conn"],
        "idle_live": idle["received_after_hold"],
    })
}

/// One line per version: each figure and its ratio to HTTP/1.1's.
fn print_ratios(round: &[Value]) {
    let base = &round[0];
    let ratio = |v: &Value, k: &str| match (v[k].as_f64(), base[k].as_f64()) {
        (Some(x), Some(b)) if b > 0.0 => format!("{x:.2} ({:.2}×)", x / b),
        (Some(x), _) => format!("{x:.2}"),
        _ => "–".to_owned(),
    };
    println!(
        "{:<7} {:>18} {:>18} {:>14} {:>14} {:>18}",
        "sse", "CPU µs/delivery", "bytes/delivery", "p50 ms", "p99 ms", "KiB/subscriber"
    );
    for v in round {
        println!(
            "{:<7} {:>18} {:>18} {:>14} {:>14} {:>18}",
            v["transport"].as_str().unwrap_or(""),
            ratio(v, "cpu_us_per_delivery"),
            ratio(v, "bytes_out_per_delivery"),
            ratio(v, "latency_ms_p50"),
            ratio(v, "latency_ms_p99"),
            ratio(v, "kib_per_subscriber"),
        );
    }
}
