//! What a head-of-line run measured, per variant and per channel: latency
//! percentiles, stall events, co-stalls, and for datagrams what was lost
//! and what came on the stream instead.
//!
//! - A **stall event** is an arrival more than `3 ×` the publish interval
//!   after the previous arrival on the same channel (the issue's
//!   definition). Its *held* window is the time the channel was overdue:
//!   from `3 ×` the interval after the previous arrival to the arrival.
//! - A stall's **co-stall** is the number of channels (itself included)
//!   whose held windows overlap its own: how many channels were held up at
//!   the same moment. One lost TCP segment holds every channel queued
//!   behind it, so on one WebSocket it tends to `N`; a lost QUIC packet
//!   holds only the stream whose data it carried, so there it tends to 1.

use serde_json::{Value, json};

/// One message as a subscriber received it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Channel index, `0..N`.
    pub ch: usize,
    /// The message's offset in its channel (1-based).
    pub off: u64,
    /// When it was published (wall clock, µs).
    pub t_us: u64,
    /// When it arrived (wall clock, µs).
    pub at_us: u64,
    /// It came on a stream, although the subscription asked for datagrams.
    pub via_stream: bool,
}

/// One channel's figures.
#[derive(Debug, Clone, Default)]
pub struct ChannelStats {
    /// Distinct messages received.
    pub unique: u64,
    /// Messages received more than once (extra copies).
    pub dups: u64,
    /// Published but never received.
    pub missing: u64,
    /// Latency percentiles and maximum, ms: p50, p99, p99.9, max.
    pub p50: f64,
    /// See `p50`.
    pub p99: f64,
    /// See `p50`.
    pub p999: f64,
    /// See `p50`.
    pub max: f64,
    /// Stall events.
    pub stalls: u64,
    /// Messages that came on the stream in a datagram subscription.
    pub via_stream: u64,
}

/// One variant's figures.
#[derive(Debug, Clone, Default)]
pub struct VariantStats {
    /// Per channel, in channel order.
    pub channels: Vec<ChannelStats>,
    /// The co-stall of every stall event, in no particular order.
    pub co_stalls: Vec<usize>,
}

/// A stall: the channel and its held window (µs).
#[derive(Debug, Clone, Copy)]
struct Stall {
    ch: usize,
    from: u64,
    to: u64,
}

/// Analyses the arrivals of one variant for `n` channels, each of which had
/// `count` messages published every `interval_us`.
pub fn analyse(arrivals: &[Arrival], n: usize, count: u64, interval_us: u64) -> VariantStats {
    let mut per: Vec<Vec<Arrival>> = vec![Vec::new(); n];
    for a in arrivals.iter().filter(|a| a.ch < n) {
        per[a.ch].push(*a);
    }
    let threshold = 3 * interval_us;
    let mut stalls = Vec::new();
    let mut channels = Vec::with_capacity(n);
    for (ch, list) in per.iter_mut().enumerate() {
        list.sort_by_key(|a| a.at_us);
        let mut seen = vec![false; usize::try_from(count).unwrap_or(0) + 1];
        let mut c = ChannelStats::default();
        let mut lat: Vec<u64> = Vec::with_capacity(list.len());
        for a in list.iter() {
            let Some(slot) = usize::try_from(a.off).ok().and_then(|i| seen.get_mut(i)) else {
                continue;
            };
            if *slot {
                c.dups += 1;
                continue;
            }
            *slot = true;
            c.unique += 1;
            c.via_stream += u64::from(a.via_stream);
            lat.push(a.at_us.saturating_sub(a.t_us));
        }
        c.missing = count.saturating_sub(c.unique);
        for w in list.windows(2) {
            if w[1].at_us - w[0].at_us > threshold {
                c.stalls += 1;
                stalls.push(Stall {
                    ch,
                    from: w[0].at_us + threshold,
                    to: w[1].at_us,
                });
            }
        }
        lat.sort_unstable();
        let pct = |q: f64| -> f64 {
            if lat.is_empty() {
                return f64::NAN;
            }
            let i = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i] as f64 / 1000.0
        };
        c.p50 = pct(0.5);
        c.p99 = pct(0.99);
        c.p999 = pct(0.999);
        c.max = pct(1.0);
        channels.push(c);
    }
    let co_stalls = stalls
        .iter()
        .map(|s| {
            let mut held = vec![false; n];
            for o in &stalls {
                if o.from < s.to && s.from < o.to {
                    held[o.ch] = true;
                }
            }
            held.iter().filter(|&&h| h).count()
        })
        .collect();
    VariantStats {
        channels,
        co_stalls,
    }
}

impl VariantStats {
    /// Distinct messages received, all channels.
    pub fn unique(&self) -> u64 {
        self.channels.iter().map(|c| c.unique).sum()
    }

    /// Extra copies, all channels.
    pub fn dups(&self) -> u64 {
        self.channels.iter().map(|c| c.dups).sum()
    }

    /// Never received, all channels.
    pub fn missing(&self) -> u64 {
        self.channels.iter().map(|c| c.missing).sum()
    }

    /// Stall events, all channels.
    pub fn stalls(&self) -> u64 {
        self.channels.iter().map(|c| c.stalls).sum()
    }

    /// Messages that came on the stream in a datagram subscription.
    pub fn via_stream(&self) -> u64 {
        self.channels.iter().map(|c| c.via_stream).sum()
    }

    /// Mean co-stall over the stall events (NaN without stalls).
    pub fn co_stall_mean(&self) -> f64 {
        if self.co_stalls.is_empty() {
            return f64::NAN;
        }
        self.co_stalls.iter().sum::<usize>() as f64 / self.co_stalls.len() as f64
    }

    /// The worst channel's figure `f` (NaN-free maximum).
    pub fn worst(&self, f: impl Fn(&ChannelStats) -> f64) -> f64 {
        self.channels
            .iter()
            .map(f)
            .filter(|x| !x.is_nan())
            .fold(f64::NAN, f64::max)
    }

    /// The median over channels of figure `f`.
    pub fn median(&self, f: impl Fn(&ChannelStats) -> f64) -> f64 {
        let mut v: Vec<f64> = self
            .channels
            .iter()
            .map(f)
            .filter(|x| !x.is_nan())
            .collect();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// The figures as JSON (per channel and summed).
    pub fn json(&self) -> Value {
        let per: Vec<Value> = self
            .channels
            .iter()
            .map(|c| {
                json!({"unique": c.unique, "dups": c.dups, "missing": c.missing,
                       "p50_ms": c.p50, "p99_ms": c.p99, "p999_ms": c.p999, "max_ms": c.max,
                       "stalls": c.stalls, "via_stream": c.via_stream})
            })
            .collect();
        json!({
            "unique": self.unique(), "dups": self.dups(), "missing": self.missing(),
            "stalls": self.stalls(), "co_stall_mean": finite(self.co_stall_mean()),
            "co_stall_max": self.co_stalls.iter().max(),
            "via_stream": self.via_stream(),
            "p99_ms_median": finite(self.median(|c| c.p99)),
            "max_ms_worst": finite(self.worst(|c| c.max)),
            "channels": per,
        })
    }
}

/// `x` or JSON null when it is not finite.
fn finite(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ch: usize, off: u64, t_ms: u64, at_ms: u64) -> Arrival {
        Arrival {
            ch,
            off,
            t_us: t_ms * 1000,
            at_us: at_ms * 1000,
            via_stream: false,
        }
    }

    #[test]
    fn one_held_segment_stalls_every_channel_at_once() {
        // Two channels every 20 ms; both held from 40 ms to 150 ms.
        let mut a = Vec::new();
        for ch in 0..2 {
            a.push(at(ch, 1, 0, 20));
            a.push(at(ch, 2, 20, 40));
            a.push(at(ch, 3, 40, 150));
            a.push(at(ch, 4, 60, 150));
        }
        let s = analyse(&a, 2, 4, 20_000);
        assert_eq!(s.stalls(), 2);
        assert_eq!(s.co_stalls, vec![2, 2]);
        assert_eq!((s.unique(), s.missing(), s.dups()), (8, 0, 0));
        assert!((s.channels[0].max - 110.0).abs() < 1e-9);
    }

    #[test]
    fn independent_stalls_count_one_each_and_losses_and_copies_are_counted() {
        let a = vec![
            at(0, 1, 0, 20),
            at(0, 2, 20, 140), // stalled 40..140
            at(1, 1, 0, 20),
            at(1, 2, 20, 40),
            at(1, 2, 20, 41),  // a copy
            at(1, 4, 60, 200), // 3 lost; stalled 100..200 overlaps ch 0
            at(2, 1, 0, 300),
            at(2, 2, 20, 400), // stalled 360..400, alone
        ];
        let s = analyse(&a, 3, 4, 20_000);
        assert_eq!(s.stalls(), 3);
        let mut co = s.co_stalls.clone();
        co.sort_unstable();
        assert_eq!(co, vec![1, 2, 2]);
        assert_eq!((s.channels[1].dups, s.channels[1].missing), (1, 1));
        assert_eq!(s.missing(), 2 + 1 + 2);
    }
}
