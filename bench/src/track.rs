//! Delivery accounting. Every message carries its publish time (`"t"`, Unix
//! µs, one machine clock) in its data and its `offset`; each subscriber
//! keeps a bitmap of the offsets it has seen, so loss, duplicates and
//! reordering are counted exactly, and latencies go into a shared HDR
//! histogram (sharded so subscribers on different threads rarely meet).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::sys::now_us;

/// Highest latency recorded, µs (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 120_000_000;
const SHARDS: usize = 64;

/// The latency histogram shared by all subscribers of one run.
#[derive(Debug)]
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
    /// Deliveries recorded so far (for progress and rates).
    pub deliveries: AtomicU64,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram, 1 µs to 120 s, 3 significant figures.
    pub fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(
                    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("histogram bounds"),
                )
            })
            .collect();
        Self {
            shards,
            deliveries: AtomicU64::new(0),
        }
    }

    /// Records one delivery published at `t_us`, received now.
    pub fn record(&self, shard: usize, t_us: u64) {
        let lat = now_us().saturating_sub(t_us).clamp(1, MAX_LATENCY_US);
        if let Ok(mut h) = self.shards[shard % SHARDS].lock() {
            h.saturating_record(lat);
        }
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut out = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("histogram bounds");
        for s in &self.shards {
            if let Ok(h) = s.lock() {
                let _ = out.add(&*h);
            }
        }
        out
    }
}

/// One subscriber's view of the offsets it was sent.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    seen: Vec<u64>,
    /// Distinct offsets received.
    pub unique: u64,
    /// Offsets received more than once.
    pub dups: u64,
    /// Offsets received after a higher one.
    pub reorders: u64,
    /// Highest offset received.
    pub max: u64,
    /// The subscriber was dropped by the server's slow-consumer policy.
    pub lagged: bool,
    /// A deliberately stalled subscriber (never reads after subscribing).
    pub slow: bool,
    /// Why the subscriber stopped early, if it did.
    pub error: Option<String>,
}

impl Tracker {
    /// A tracker for offsets 1..=`count`.
    pub fn new(count: u64) -> Self {
        Self {
            seen: vec![0; (count as usize).div_ceil(64) + 1],
            ..Self::default()
        }
    }

    /// Notes offset `off`.
    pub fn note(&mut self, off: u64) {
        let (w, b) = ((off / 64) as usize, off % 64);
        if w >= self.seen.len() {
            self.seen.resize(w + 1, 0);
        }
        if self.seen[w] & (1 << b) != 0 {
            self.dups += 1;
            return;
        }
        self.seen[w] |= 1 << b;
        self.unique += 1;
        if off < self.max {
            self.reorders += 1;
        }
        self.max = self.max.max(off);
    }
}

/// The unsigned integer after `key` in `buf` (e.g. `"offset":`).
pub fn field_u64(buf: &[u8], key: &[u8]) -> Option<u64> {
    let at = buf.windows(key.len()).position(|w| w == key)? + key.len();
    let mut n: u64 = 0;
    let mut any = false;
    for &c in &buf[at..] {
        if c.is_ascii_digit() {
            n = n * 10 + u64::from(c - b'0');
            any = true;
        } else if c != b' ' || any {
            break;
        }
    }
    any.then_some(n)
}

/// A delivered message's `(offset, t)`, read without a JSON parse.
pub fn offset_and_t(msg: &[u8]) -> Option<(u64, u64)> {
    Some((field_u64(msg, b"\"offset\":")?, field_u64(msg, b"\"t\":")?))
}

/// The JSON `data` of message published at `t_us`, padded with `x` to about
/// `size` bytes serialised.
pub fn payload(t_us: u64, size: usize) -> String {
    let head = format!("{{\"t\":{t_us},\"p\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_dups_and_reorders() {
        let mut t = Tracker::new(10);
        for o in [1, 2, 4, 3, 3, 5] {
            t.note(o);
        }
        assert_eq!((t.unique, t.dups, t.reorders, t.max), (5, 1, 1, 5));
    }

    #[test]
    fn reads_fields() {
        let m = br#"{"op":"message","channel":"c","offset":42,"data":{"t":17,"p":"xx"},"ts":99}"#;
        assert_eq!(offset_and_t(m), Some((42, 17)));
        assert_eq!(payload(5, 64).len(), 64);
    }
}
