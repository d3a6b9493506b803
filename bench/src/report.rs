//! Results: one [`LoadResult`] per run, printed as a table row for people
//! and as one JSON line (prefixed `JSON `) for comparing across commits.

use std::time::Duration;

use serde_json::{Value, json};

use crate::load::LoadSpec;
use crate::probe::{ProcSample, Target};
use crate::track::{Latencies, Tracker};

/// What one fan-out run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Everything, as the JSON line.
    pub json: Value,
    /// Subscribers that received every message they should have.
    pub complete: usize,
    /// Offsets missing at subscribers that were not dropped by policy.
    pub lost: u64,
    /// Duplicate deliveries.
    pub dups: u64,
    /// Out-of-order deliveries.
    pub reorders: u64,
    /// Subscribers dropped as too slow (`lagged`).
    pub lagged: usize,
    /// Subscribers that ended with an error.
    pub errors: usize,
    /// Deliveries recorded.
    pub deliveries: u64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl LoadResult {
    /// Assembles the figures of one run.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        target: &Target,
        spec: &LoadSpec,
        trackers: &[Tracker],
        lat: &Latencies,
        connect: Duration,
        publish: Duration,
        elapsed: Duration,
        acked: u64,
        proc: (Option<ProcSample>, Option<ProcSample>),
        stats: Option<(f64, f64, f64, f64, f64)>,
    ) -> Self {
        let h = lat.merged();
        let deliveries = h.len();
        let mut lost = 0;
        let (mut dups, mut reorders, mut lagged, mut errors, mut complete) = (0, 0, 0, 0, 0);
        let mut first_error = None;
        let mut slow = 0;
        for t in trackers {
            if t.slow {
                slow += 1;
                continue;
            }
            dups += t.dups;
            reorders += t.reorders;
            if t.lagged {
                lagged += 1;
                continue;
            }
            if let Some(e) = &t.error {
                errors += 1;
                first_error.get_or_insert_with(|| e.clone());
            }
            lost += spec.count.saturating_sub(t.unique);
            if t.unique >= spec.count {
                complete += 1;
            }
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        let (cpu_s, rss0, rss1, hwm) = match proc {
            (Some(a), Some(b)) => (
                Some(b.cpu_s - a.cpu_s),
                Some(a.rss_kib),
                Some(b.rss_kib),
                Some(b.hwm_kib),
            ),
            _ => (None, None, None, None),
        };
        let per_delivery_us = cpu_s.map(|c| c * 1e6 / deliveries.max(1) as f64);
        let q = |p: f64| ms(h.value_at_quantile(p));
        let json = json!({
            "kind": "fanout",
            "label": spec.label,
            "peer": target.peer.name(),
            "transport": spec.kind.name(),
            "subs": spec.subs,
            "rate": spec.rate,
            "count": spec.count,
            "size": spec.size,
            "poll_interval_ms": spec.poll_interval.as_millis() as u64,
            "acked": acked,
            "deliveries": deliveries,
            "expected": spec.count * spec.subs as u64,
            "deliveries_per_s": deliveries as f64 / secs,
            "offered_per_s": spec.rate.map(|r| r * spec.subs as f64),
            "publish_s": publish.as_secs_f64(),
            "elapsed_s": secs,
            "connect_s": connect.as_secs_f64(),
            "latency_ms": {
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                "max": ms(h.max()), "mean": h.mean() / 1000.0,
            },
            "lost": lost, "dups": dups, "reorders": reorders,
            "lagged": lagged, "errors": errors, "first_error": first_error,
            "complete": complete,
            "server_cpu_s": cpu_s,
            "server_cpu_s_per_million": per_delivery_us,
            "server_cpu_us_per_delivery": per_delivery_us,
            "server_cpu_util": cpu_s.map(|c| c / secs),
            "rss_kib_before": rss0, "rss_kib_after": rss1, "rss_kib_peak": hwm,
            "bytes_out_per_delivery": stats.map(|s| s.0 / deliveries.max(1) as f64),
            "requests_per_delivery": stats.map(|s| s.1 / deliveries.max(1) as f64),
            "server_messages_out": stats.map(|s| s.2),
            "server_lagged": stats.map(|s| s.3),
            "slow_subs": slow,
            "requests_per_s": stats.map(|s| s.1 / secs),
            "bytes_out_per_s": stats.map(|s| s.0 / secs),
            "bytes_in_per_s": stats.map(|s| s.4 / secs),
        });
        Self {
            json,
            complete,
            lost,
            dups,
            reorders,
            lagged,
            errors,
            deliveries,
        }
    }

    /// The column header of [`LoadResult::row`].
    pub fn header() -> String {
        format!(
            "{:<10} {:<9} {:<21} {:>6} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5}/{:<3}/{:<3} {:>4} {:>7} {:>7} {:>9} {:>7} {:>7}",
            "label",
            "peer",
            "transport",
            "subs",
            "rate",
            "deliv/s",
            "p50ms",
            "p90ms",
            "p99ms",
            "p999ms",
            "maxms",
            "loss",
            "dup",
            "ord",
            "lag",
            "µs/dlv",
            "cpu%",
            "RSS MiB",
            "B/dlv",
            "req/dlv",
        )
    }

    /// One table row.
    pub fn row(&self) -> String {
        let j = &self.json;
        let f = |v: &Value, d: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.d$}"));
        let l = &j["latency_ms"];
        format!(
            "{:<10} {:<9} {:<21} {:>6} {:>8} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5}/{:<3}/{:<3} {:>4} {:>7} {:>7} {:>9} {:>7} {:>7}",
            j["label"].as_str().unwrap_or(""),
            j["peer"].as_str().unwrap_or(""),
            j["transport"].as_str().unwrap_or(""),
            j["subs"],
            j["rate"]
                .as_f64()
                .map_or("max".into(), |r| format!("{r:.0}")),
            j["deliveries_per_s"].as_f64().unwrap_or(0.0),
            f(&l["p50"], 2),
            f(&l["p90"], 2),
            f(&l["p99"], 2),
            f(&l["p999"], 2),
            f(&l["max"], 1),
            self.lost,
            self.dups,
            self.reorders,
            self.lagged,
            f(&j["server_cpu_us_per_delivery"], 2),
            j["server_cpu_util"]
                .as_f64()
                .map_or("-".into(), |x| format!("{:.0}", x * 100.0)),
            match (j["rss_kib_before"].as_u64(), j["rss_kib_after"].as_u64()) {
                (Some(a), Some(b)) => format!("{:.0}→{:.0}", a as f64 / 1024.0, b as f64 / 1024.0),
                _ => "-".into(),
            },
            f(&j["bytes_out_per_delivery"], 0),
            f(&j["requests_per_delivery"], 3),
        )
    }

    /// Prints the row and the JSON line.
    pub fn print(&self) {
        println!("{}", self.row());
        println!("JSON {}", self.json);
    }
}
