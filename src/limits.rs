//! Per-client limits: connections and long polls per IP, and publish rates
//! (per connection for WebSocket/WebTransport, per IP for HTTP).
//!
//! Every limit answers with a clear error (`429 rate_limited` or
//! `503 unavailable`) instead of queueing: a client over its share is told
//! at once and nothing it already had is lost.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Counts something per client IP, up to a maximum each.
#[derive(Debug)]
pub struct PerIp {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// A counter allowing `max` per IP (0 = unlimited).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one slot for `ip`, or `None` when it already holds `max`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(ip).or_insert(0);
        if self.max != 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PerIpGuard {
            owner: self.clone(),
            ip,
        })
    }

    /// Slots held by `ip` now.
    pub fn held(&self, ip: IpAddr) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

/// Holds one slot of a [`PerIp`] until dropped.
#[derive(Debug)]
pub struct PerIpGuard {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut counts = self
            .owner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // Empty entries would otherwise accumulate one per IP ever seen.
                counts.remove(&self.ip);
            }
        }
    }
}

/// A quota of `per_second` with a burst of the same size; `None` for 0
/// (unlimited).
fn quota(per_second: u32) -> Option<Quota> {
    NonZeroU32::new(per_second).map(Quota::per_second)
}

/// A publish-rate limiter for one connection (`None` = unlimited).
pub fn connection_publish_limiter(per_second: u32) -> Option<DefaultDirectRateLimiter> {
    quota(per_second).map(RateLimiter::direct)
}

/// The server's limits, built once from the configuration.
#[derive(Debug)]
pub struct Limits {
    /// TCP connections per client IP on the HTTP listener.
    pub connections: Arc<PerIp>,
    /// Long polls waiting per client IP.
    pub long_polls: Arc<PerIp>,
    /// WebTransport sessions per client IP.
    pub sessions: Arc<PerIp>,
    /// HTTP publishes per second per client IP.
    http_publish: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Publishes per second per WebSocket / WebTransport connection.
    pub publish_per_second: u32,
}

impl Limits {
    /// Builds the limits from per-IP maxima and the publish rate.
    pub fn new(
        connections_per_ip: usize,
        long_polls_per_ip: usize,
        sessions_per_ip: usize,
        publish_per_second: u32,
    ) -> Self {
        Self {
            connections: PerIp::new(connections_per_ip),
            long_polls: PerIp::new(long_polls_per_ip),
            sessions: PerIp::new(sessions_per_ip),
            http_publish: quota(publish_per_second).map(RateLimiter::keyed),
            publish_per_second,
        }
    }

    /// Whether an HTTP publish from `ip` is within its rate.
    pub fn http_publish_allowed(&self, ip: IpAddr) -> bool {
        self.http_publish
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
    }

    /// Forgets rate state of IPs that have been quiet, so the keyed limiter
    /// does not grow with every address ever seen.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.http_publish {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_bounded_and_released() {
        let c = PerIp::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = c.acquire(ip).unwrap();
        let _b = c.acquire(ip).unwrap();
        assert!(c.acquire(ip).is_none());
        assert!(c.acquire("127.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert_eq!(c.held(ip), 1);
        assert!(c.acquire(ip).is_some());
    }

    #[test]
    fn publish_rate_is_enforced_per_ip() {
        let l = Limits::new(0, 0, 0, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let allowed = (0..10).filter(|_| l.http_publish_allowed(ip)).count();
        assert_eq!(allowed, 3, "the burst is one second's worth");
        assert!(l.http_publish_allowed("10.0.0.2".parse().unwrap()));
        assert!(
            Limits::new(0, 0, 0, 0).http_publish_allowed(ip),
            "0 = unlimited"
        );
    }
}
