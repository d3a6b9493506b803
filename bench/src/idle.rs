//! Idle mode: N subscribed connections that receive nothing; memory per
//! connection = (server RSS with them − RSS before) / N. After the hold,
//! one message is published: every connection that receives it was
//! really held, not just counted open.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use crate::clients::Kind;
use crate::load::{LoadSpec, Subscribers, fresh_channel, publish};
use crate::probe::Target;

/// Opens `spec.subs` idle subscribers, measures, closes them.
pub async fn run(target: &Target, spec: &LoadSpec, settle: Duration) -> Result<Value> {
    let before = target.sample();
    let stats0 = target.stats().await;
    let channel = fresh_channel("idle");
    let subs = Subscribers::connect(target, spec.kind, channel.clone(), 1, spec.subs, spec).await?;
    let connect = subs.connect_time;
    let subs_lat = subs.ctx.lat.clone();
    let failed = subs.failed.clone();
    let held_from = target.sample();
    let hold = Instant::now();
    tokio::time::sleep(settle).await;
    let after = target.sample();
    // The server's CPU while it only holds the connections (keep-alives,
    // pings, timers), as a share of one core.
    let idle_cpu = match (held_from, after) {
        (Some(a), Some(b)) => Some((b.cpu_s - a.cpu_s) / hold.elapsed().as_secs_f64()),
        _ => None,
    };
    let stats1 = target.stats().await;
    let key = spec.kind.stats_key();
    let open = |s: &Value| s["transports"][key]["connections_open"].as_i64();
    let held = match (open(&stats0), open(&stats1)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let probe = LoadSpec {
        count: 1,
        rate: None,
        ..spec.clone()
    };
    publish(target, &probe, &channel).await?;
    let trackers = subs.finish(Instant::now() + spec.drain).await;
    let lat = subs_lat.merged();
    let live = trackers.iter().filter(|t| t.unique == 1).count();
    let lost = trackers
        .iter()
        .filter(|t| t.unique != 1 && t.error.is_none())
        .count();
    let broken: Vec<&str> = trackers.iter().filter_map(|t| t.error.as_deref()).collect();
    let ok = spec.subs - failed.0;
    let per_conn = match (before, after) {
        (Some(a), Some(b)) => Some((b.rss_kib as f64 - a.rss_kib as f64) / ok.max(1) as f64),
        _ => None,
    };
    Ok(json!({
        "kind": "idle",
        "label": spec.label,
        "peer": target.peer.name(),
        "transport": spec.kind.name(),
        "conns": spec.subs,
        "connected": ok,
        "failed": failed.0,
        "first_error": failed.1,
        "server_reports_open": held,
        "received_after_hold": live,
        "silent_after_hold": lost,
        "errors_after_hold": broken.len(),
        "first_error_after_hold": broken.first(),
        "after_hold_ms": {
            "p50": lat.value_at_quantile(0.5) as f64 / 1e3,
            "p99": lat.value_at_quantile(0.99) as f64 / 1e3,
            "max": lat.max() as f64 / 1e3,
        },
        "connect_s": connect.as_secs_f64(),
        "rss_kib_before": before.map(|s| s.rss_kib),
        "rss_kib_after": after.map(|s| s.rss_kib),
        "kib_per_conn": per_conn,
        "hold_s": settle.as_secs_f64(),
        "server_cpu_share_while_held": idle_cpu,
    }))
}

/// One human line for an idle result.
pub fn row(v: &Value) -> String {
    format!(
        "idle {:<9} {:<21} conns={:<6} ok={:<6} live={:<6} connect={:.2}s RSS {}→{} KiB  {:.2} KiB/conn  CPU held {:.1}%{}",
        v["peer"].as_str().unwrap_or(""),
        v["transport"].as_str().unwrap_or(""),
        v["conns"],
        v["connected"],
        v["received_after_hold"],
        v["connect_s"].as_f64().unwrap_or(0.0),
        v["rss_kib_before"],
        v["rss_kib_after"],
        v["kib_per_conn"].as_f64().unwrap_or(f64::NAN),
        v["server_cpu_share_while_held"]
            .as_f64()
            .unwrap_or(f64::NAN)
            * 100.0,
        v["first_error"]
            .as_str()
            .map(|e| format!("  first error: {e}"))
            .unwrap_or_default(),
    )
}

/// Whether idle mode makes sense for `kind` (short polls hold nothing).
pub fn supported(kind: Kind) -> bool {
    kind != Kind::Poll
}
