//! Head-of-line blocking under real packet loss: N channels published at R
//! messages/s each, received side by side by three subscribers on the same
//! hub across the same lossy [`wire`](ladder_lab::wire):
//!
//! - all N channels on one WebSocket (one TCP connection);
//! - one WebTransport session with a stream per channel;
//! - one WebTransport session with datagram delivery per channel.
//!
//! A run ([`run`]) reports per channel and variant the latency p50, p99,
//! p99.9 and max, stall events and co-stalls ([`analysis`]), and for
//! datagrams how many were lost and how many came on the stream instead.
//! [`command`] is the `ladder-bench hol` command around it: it enters a
//! namespace, sets up the wire and a Ladder process, and runs every loss
//! level and channel count.

pub mod analysis;
pub mod clients;
pub mod command;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::sync::watch;

use analysis::{VariantStats, analyse};
use clients::{Channels, Sink};
use ladder_lab::wire::WireCounters;

/// Where the three subscribers and the publisher reach the server.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The HTTP listener as the publisher reaches it (loopback, no loss).
    pub publish_http: SocketAddr,
    /// The HTTP listener across the wire.
    pub http: SocketAddr,
    /// The WebTransport URL across the wire.
    pub wt_url: String,
    /// The certificate's SHA-256 (hex), trusted by the WebTransport client.
    pub cert_hash: String,
}

/// One run's shape.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Channels (N).
    pub channels: usize,
    /// Messages per second per channel (R).
    pub rate: f64,
    /// Messages per channel.
    pub count: u64,
    /// Serialised size of each message's data, bytes (about).
    pub size: usize,
    /// Names this run's channels, so each run starts fresh.
    pub tag: String,
    /// Longest wait, after the last publish, for the stream variants to
    /// have every message.
    pub drain: Duration,
}

/// The three variants' figures.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// All channels on one WebSocket.
    pub websocket: VariantStats,
    /// A WebTransport stream per channel.
    pub webtransport: VariantStats,
    /// WebTransport datagram delivery.
    pub datagram: VariantStats,
}

/// Subscribes the three variants, publishes, waits for the streams to have
/// everything (bounded by `spec.drain`) and analyses what arrived.
pub async fn run(ep: &Endpoints, spec: &Spec) -> Result<Outcome> {
    let ch = Channels {
        tag: spec.tag.clone(),
        n: spec.channels,
    };
    let (ws, wt, dg) = tokio::try_join!(
        clients::websocket(ep.http, &ch),
        clients::webtransport(&ep.wt_url, &ep.cert_hash, &ch, false),
        clients::webtransport(&ep.wt_url, &ep.cert_hash, &ch, true),
    )?;
    let sinks: [Sink; 3] = std::array::from_fn(|_| Arc::new(Mutex::new(Vec::new())));
    let (stop_tx, stop) = watch::channel(false);
    let tasks = [
        tokio::spawn(ws.run(ch.clone(), sinks[0].clone(), stop.clone())),
        tokio::spawn(wt.run(ch.clone(), sinks[1].clone(), stop.clone())),
        tokio::spawn(dg.run(ch.clone(), sinks[2].clone(), stop)),
    ];
    let publishing = Duration::from_secs_f64(spec.count as f64 / spec.rate);
    tokio::time::timeout(
        publishing + Duration::from_secs(30),
        clients::publish(ep.publish_http, &ch, spec.rate, spec.count, spec.size),
    )
    .await
    .context("publishing timed out")??;

    let total = spec.count * spec.channels as u64;
    let len = |s: &Sink| s.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    let deadline = tokio::time::Instant::now() + spec.drain;
    while (len(&sinks[0]) < total || len(&sinks[1]) < total)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Datagrams that survived arrived with their stream neighbours; this
    // is only for the last few published.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let _ = stop_tx.send(true);
    for (t, name) in tasks
        .into_iter()
        .zip(["websocket", "webtransport", "datagram"])
    {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .with_context(|| format!("{name} subscriber did not stop"))??
            .with_context(|| format!("{name} subscriber"))?;
    }
    let interval_us = (1e6 / spec.rate) as u64;
    let stats = |s: &Sink| {
        let a = s.lock().unwrap_or_else(|e| e.into_inner());
        analyse(&a, spec.channels, spec.count, interval_us)
    };
    Ok(Outcome {
        websocket: stats(&sinks[0]),
        webtransport: stats(&sinks[1]),
        datagram: stats(&sinks[2]),
    })
}

/// `a / b`, or NaN when it means nothing.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        a / b
    } else {
        f64::NAN
    }
}

impl Outcome {
    /// The variants with their report names.
    pub fn variants(&self) -> [(&'static str, &VariantStats); 3] {
        [
            ("websocket", &self.websocket),
            ("webtransport", &self.webtransport),
            ("wt-datagram", &self.datagram),
        ]
    }

    /// The human report: a summary row per variant, the WebSocket /
    /// WebTransport ratios, then per channel p50 / p99 / p99.9 / max.
    pub fn table(&self, title: &str, wire: Option<&WireCounters>) -> String {
        let mut s = format!("## {title}\n");
        s += "variant        recv   dup  miss   p50   p99  p99.9    max  stalls  co-stall mean/max  via-stream\n";
        for (name, v) in self.variants() {
            s += &format!(
                "{name:<12} {:>6} {:>5} {:>5} {:>5.1} {:>5.1} {:>6.1} {:>6.1} {:>7} {:>9.2} / {:<6} {:>6}\n",
                v.unique(),
                v.dups(),
                v.missing(),
                v.median(|c| c.p50),
                v.median(|c| c.p99),
                v.median(|c| c.p999),
                v.worst(|c| c.max),
                v.stalls(),
                v.co_stall_mean(),
                v.co_stalls.iter().max().copied().unwrap_or(0),
                v.via_stream(),
            );
        }
        let (w, t) = (&self.websocket, &self.webtransport);
        s += &format!(
            "ratio websocket/webtransport: p99 {:.2}  p99.9 {:.2}  max {:.2}  stalls {:.2}  co-stall {:.2}\n",
            ratio(w.median(|c| c.p99), t.median(|c| c.p99)),
            ratio(w.median(|c| c.p999), t.median(|c| c.p999)),
            ratio(w.worst(|c| c.max), t.worst(|c| c.max)),
            ratio(w.stalls() as f64, t.stalls() as f64),
            ratio(w.co_stall_mean(), t.co_stall_mean()),
        );
        let d = &self.datagram;
        s += &format!(
            "datagrams: {} published, {} arrived as datagrams, {} on the stream, {} lost ({:.2} %)\n",
            d.unique() + d.missing(),
            d.unique() - d.via_stream(),
            d.via_stream(),
            d.missing(),
            100.0 * d.missing() as f64 / (d.unique() + d.missing()).max(1) as f64,
        );
        if let Some(c) = wire {
            s += &format!(
                "wire: tcp {} packets, {} dropped ({:.2} %); udp {} packets, {} dropped ({:.2} %); queue overflow {}\n",
                c.tcp,
                c.tcp_dropped,
                100.0 * c.tcp_dropped as f64 / c.tcp.max(1) as f64,
                c.udp,
                c.udp_dropped,
                100.0 * c.udp_dropped as f64 / c.udp.max(1) as f64,
                c.overflow
            );
        }
        s += "per channel (ms)  p50 / p99 / p99.9 / max, stalls\n";
        for (name, v) in self.variants() {
            for (k, c) in v.channels.iter().enumerate() {
                s += &format!(
                    "  {name:<12} ch{k:<2} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>4}\n",
                    c.p50, c.p99, c.p999, c.max, c.stalls
                );
            }
        }
        s
    }

    /// One JSON line with every figure.
    pub fn json(&self, extra: Value, wire: Option<&WireCounters>) -> Value {
        let mut j = json!({
            "websocket": self.websocket.json(),
            "webtransport": self.webtransport.json(),
            "datagram": self.datagram.json(),
        });
        if let Some(c) = wire {
            j["wire"] = json!({"tcp": c.tcp, "tcp_dropped": c.tcp_dropped, "udp": c.udp,
                               "udp_dropped": c.udp_dropped, "overflow": c.overflow});
        }
        if let (Value::Object(m), Value::Object(e)) = (&mut j, extra) {
            m.extend(e);
        }
        j
    }
}
