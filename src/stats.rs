//! What each rung costs, counted where it happens: connections, requests,
//! messages and the bytes actually written to and read from sockets.
//!
//! One [`Stats`] per server, shared by all adapters. Counters are
//! `prometheus-client` metrics, so `/metrics` is the registry's own text
//! encoding and `/api/stats` reads the very same atomics as JSON.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// A rung of the ladder, plus `Api` for everything on the HTTP listener that
/// is not a rung (publishing, `/api/info`, the page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Transport {
    /// WebTransport over HTTP/3.
    #[value(name = "webtransport")]
    WebTransport,
    /// WebSocket (RFC 6455).
    #[value(name = "websocket")]
    WebSocket,
    /// Server-Sent Events.
    #[value(name = "sse")]
    Sse,
    /// Long polling.
    #[value(name = "longpoll")]
    LongPoll,
    /// Short polling.
    #[value(name = "poll")]
    Poll,
    /// Publishing and the other API routes.
    #[value(name = "api")]
    Api,
}

impl Transport {
    /// Every transport, in the order `/api/stats` lists them.
    pub const ALL: [Self; 6] = [
        Self::WebTransport,
        Self::WebSocket,
        Self::Sse,
        Self::LongPoll,
        Self::Poll,
        Self::Api,
    ];

    /// The five rungs (what `/api/info` calls transports).
    pub const RUNGS: [Self; 5] = [
        Self::WebTransport,
        Self::WebSocket,
        Self::Sse,
        Self::LongPoll,
        Self::Poll,
    ];

    /// The contract's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::WebTransport => "webtransport",
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::LongPoll => "longpoll",
            Self::Poll => "poll",
            Self::Api => "api",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Label {
    transport: &'static str,
}

/// The counters of one transport. Cloning shares the same atomics behind
/// one pointer: connections, sessions and outlets each keep a clone, so a
/// clone per counter would cost every idle connection ~100 bytes apiece.
#[derive(Debug, Clone)]
pub struct TransportStats(Arc<Counters>);

impl std::ops::Deref for TransportStats {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        &self.0
    }
}

/// The counters behind a [`TransportStats`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections (streams, sockets, sessions, waiting polls) open now.
    pub connections_open: Gauge,
    /// Connections ever opened.
    pub connections_total: Counter,
    /// HTTP requests received.
    pub requests: Counter,
    /// Messages delivered to subscribers.
    pub messages_out: Counter,
    /// Bytes written to sockets, framing and headers included.
    pub bytes_out: Counter,
    /// Bytes read from sockets, framing and headers included.
    pub bytes_in: Counter,
    /// Subscribers dropped for being too slow.
    pub lagged: Counter,
    /// WebTransport only: bidirectional streams opened by clients.
    pub streams_total: Counter,
    /// WebTransport only: datagrams sent.
    pub datagrams_out: Counter,
    /// WebTransport only: datagrams received.
    pub datagrams_in: Counter,
    /// WebSocket / WebTransport: writes by a channel fan-out straight to a
    /// lent socket or stream.
    pub direct_writes: Counter,
    /// Leases a fan-out ended because the socket or stream could not take a
    /// whole batch at once (a slow reader) or failed; its task took over.
    pub direct_handbacks: Counter,
}

/// All counters of the server.
#[derive(Debug)]
pub struct Stats {
    registry: Registry,
    per: [TransportStats; Transport::ALL.len()],
    /// Byte counts kept elsewhere, read in when the counters are read.
    sampled: Sampled,
    /// The HTTP connections' numbers (`Ladder-Connection` on poll answers).
    pub connections: ConnectionNumbers,
}

/// Numbers the HTTP connections (plain and TLS listeners) in the order
/// they are accepted. A poll answer says which connection carried it and
/// how many had been accepted by then, so a polling client can tell that
/// its request went out on a connection opened since its previous answer:
/// the one it had was replaced, though no request failed (a browser
/// resends a cut GET on a new connection without telling the page).
#[derive(Debug)]
pub struct ConnectionNumbers {
    /// Tells this process's numbers from another node's (random per start).
    server: u32,
    accepted: AtomicU64,
}

impl ConnectionNumbers {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS per process: enough to tell
        // nodes apart, without a dependency for it.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        Self {
            server: h.finish() as u32,
            accepted: AtomicU64::new(0),
        }
    }

    /// Numbers a connection just accepted: 1, 2, 3, …
    pub fn next(&self) -> u64 {
        self.accepted.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `Ladder-Connection`'s value for an answer on connection `number`.
    pub fn header(&self, number: u64) -> String {
        format!(
            "server={:08x}; number={number}; accepted={}",
            self.server,
            self.accepted.load(Ordering::Relaxed)
        )
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Creates and registers every counter.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ladder");
        let mut per: [Counters; Transport::ALL.len()] = Default::default();
        macro_rules! family {
            ($field:ident, $kind:ty, $help:literal) => {{
                let fam = Family::<Label, $kind>::default();
                for t in Transport::ALL {
                    per[t.index()].$field = fam
                        .get_or_create(&Label {
                            transport: t.name(),
                        })
                        .clone();
                }
                registry.register(stringify!($field), $help, fam);
            }};
        }
        family!(connections_open, Gauge, "Connections open now");
        family!(connections_total, Counter, "Connections opened");
        family!(requests, Counter, "HTTP requests received");
        family!(messages_out, Counter, "Messages delivered to subscribers");
        family!(
            bytes_out,
            Counter,
            "Bytes written to sockets, framing included"
        );
        family!(
            bytes_in,
            Counter,
            "Bytes read from sockets, framing included"
        );
        family!(lagged, Counter, "Subscribers dropped for being too slow");
        family!(
            streams_total,
            Counter,
            "WebTransport streams opened by clients"
        );
        family!(datagrams_out, Counter, "WebTransport datagrams sent");
        family!(datagrams_in, Counter, "WebTransport datagrams received");
        family!(
            direct_writes,
            Counter,
            "Writes by channel fan-outs straight to lent sockets and streams"
        );
        family!(
            direct_handbacks,
            Counter,
            "Lent sockets and streams handed back to their task because a direct write could not complete"
        );
        let per = per.map(|c| TransportStats(Arc::new(c)));
        Self {
            registry,
            per,
            sampled: Sampled::default(),
            connections: ConnectionNumbers::new(),
        }
    }

    /// The counters of one transport.
    pub fn of(&self, t: Transport) -> &TransportStats {
        &self.per[t.index()]
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn open(&self, t: Transport) -> ConnGuard {
        let s = self.of(t).clone();
        s.connections_open.inc();
        s.connections_total.inc();
        ConnGuard(s)
    }

    /// Counts the bytes `source` reports as `t`'s until the returned guard
    /// is dropped, which takes its last counts.
    pub fn sample(self: &Arc<Self>, t: Transport, source: Box<dyn ByteSource>) -> Sampling {
        let id = self.sampled.next.fetch_add(1, Ordering::Relaxed);
        let source = Source {
            source,
            transport: t,
            read: 0,
            written: 0,
        };
        self.sampled.lock().insert(id, source);
        Sampling {
            stats: self.clone(),
            id,
        }
    }

    /// Brings the counters of every [`ByteSource`] up to date.
    fn sample_all(&self) {
        for s in self.sampled.lock().values_mut() {
            s.sample(self);
        }
    }

    /// The Prometheus text exposition of every counter.
    pub fn prometheus(&self) -> String {
        self.sample_all();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The `/api/stats` document.
    pub fn snapshot(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Row {
            connections_open: i64,
            connections_total: u64,
            requests: u64,
            messages_out: u64,
            bytes_out: u64,
            bytes_in: u64,
            lagged: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            streams_total: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            datagrams_out: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            datagrams_in: Option<u64>,
        }
        self.sample_all();
        let mut transports = serde_json::Map::new();
        for t in Transport::ALL {
            let s = self.of(t);
            let wt = |c: &Counter| (t == Transport::WebTransport).then(|| c.get());
            let row = Row {
                connections_open: s.connections_open.get(),
                connections_total: s.connections_total.get(),
                requests: s.requests.get(),
                messages_out: s.messages_out.get(),
                bytes_out: s.bytes_out.get(),
                bytes_in: s.bytes_in.get(),
                lagged: s.lagged.get(),
                streams_total: wt(&s.streams_total),
                datagrams_out: wt(&s.datagrams_out),
                datagrams_in: wt(&s.datagrams_in),
            };
            transports.insert(
                t.name().into(),
                serde_json::to_value(row).unwrap_or_default(),
            );
        }
        serde_json::json!({ "transports": transports })
    }
}

/// Holds one open connection in `connections_open`.
#[derive(Debug)]
pub struct ConnGuard(TransportStats);

impl ConnGuard {
    /// The counters of the guarded connection's transport.
    pub fn stats(&self) -> &TransportStats {
        &self.0
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

/// Bytes counted by someone else: a QUIC connection counts its own UDP
/// bytes, QUIC and HTTP/3 overhead included.
///
/// They are read in when the counters are read (`/api/stats`, `/metrics`)
/// and when the source is dropped, not on a timer: a timer per WebTransport
/// session would wake every idle session every period (at 5 000 idle
/// sessions a one-second timer was about half of the server's idle CPU).
pub trait ByteSource: Send {
    /// Bytes read and written so far, in all.
    fn totals(&self) -> (u64, u64);
}

/// The [`ByteSource`]s being counted, by id.
#[derive(Default)]
struct Sampled {
    sources: Mutex<HashMap<u64, Source>>,
    next: AtomicU64,
}

impl Sampled {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Source>> {
        // Counts only: a panic elsewhere cannot leave them inconsistent.
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Sampled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampled")
            .field("sources", &self.lock().len())
            .finish()
    }
}

/// One source and what of its totals is already in the counters.
struct Source {
    source: Box<dyn ByteSource>,
    transport: Transport,
    read: u64,
    written: u64,
}

impl Source {
    fn sample(&mut self, stats: &Stats) {
        let (read, written) = self.source.totals();
        let counters = stats.of(self.transport);
        counters.bytes_in.inc_by(read.saturating_sub(self.read));
        counters
            .bytes_out
            .inc_by(written.saturating_sub(self.written));
        self.read = self.read.max(read);
        self.written = self.written.max(written);
    }
}

/// Counts a [`ByteSource`] until dropped; see [`Stats::sample`].
#[derive(Debug)]
pub struct Sampling {
    stats: Arc<Stats>,
    id: u64,
}

impl Drop for Sampling {
    fn drop(&mut self) {
        let last = self.stats.sampled.lock().remove(&self.id);
        if let Some(mut s) = last {
            s.sample(&self.stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_prometheus_read_the_same_counters() {
        let stats = Stats::new();
        let guard = stats.open(Transport::Sse);
        stats.of(Transport::Sse).bytes_out.inc_by(42);
        let snap = stats.snapshot();
        assert_eq!(snap["transports"]["sse"]["connections_open"], 1);
        assert_eq!(snap["transports"]["sse"]["bytes_out"], 42);
        assert!(snap["transports"]["sse"].get("datagrams_out").is_none());
        assert_eq!(snap["transports"]["webtransport"]["datagrams_out"], 0);
        let text = stats.prometheus();
        assert!(
            text.contains(r#"ladder_bytes_out_total{transport="sse"} 42"#),
            "{text}"
        );
        drop(guard);
        assert_eq!(stats.snapshot()["transports"]["sse"]["connections_open"], 0);
    }
}
