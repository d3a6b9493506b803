//! What every relay shares: the idle clock a NAT keeps per flow
//! (`Activity`), the network-switch lever ([`NetworkSwitch`]) and the
//! counters a test reads back ([`RelayStats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// When a flow last carried a byte or a datagram, in either direction.
///
/// A NAT forgets a mapping that has been idle for its timeout whichever way
/// the traffic went, so both directions touch the same clock.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last touch.
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long the flow has been silent.
    pub(crate) fn idle(&self) -> Duration {
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(last)
    }

    /// Resolves once the flow has been silent for `timeout` (never when
    /// `None`). Each wake-up sleeps exactly until the earliest moment the
    /// timeout could have passed, so the check is bounded and cheap.
    pub(crate) async fn expired(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let idle = self.idle();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }
}

/// The lever of the `network-switch` condition: pulling it cuts every TCP
/// connection that went through a relay sharing it, and makes every UDP
/// flow carry on from a new source port, as moving from Wi-Fi to cellular
/// does to the server's view of a client.
///
/// Cloning is shallow: every clone pulls the same lever.
#[derive(Debug, Clone, Default)]
pub struct NetworkSwitch {
    inner: Arc<SwitchInner>,
}

#[derive(Debug, Default)]
struct SwitchInner {
    /// Cancelled on a switch; connections opened before it hold a clone.
    cut: Mutex<CancellationToken>,
    /// Bumped on a switch; a UDP flow rebinds when its number is older.
    generation: AtomicU64,
}

impl NetworkSwitch {
    /// Cuts every open TCP connection and rebinds every UDP flow.
    pub fn switch(&self) {
        let mut cut = self.inner.cut.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        std::mem::take(&mut *cut).cancel();
    }

    /// How many switches have happened.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// The token a connection opened now is cut with.
    pub(crate) fn cut_token(&self) -> CancellationToken {
        self.inner
            .cut
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What a relay did, for tests and the lab's status line.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// TCP connections accepted, or UDP flows (mappings) opened.
    pub flows: AtomicU64,
    /// TCP connections reset, or UDP mappings forgotten, for idleness.
    pub idle_drops: AtomicU64,
    /// TCP connections cut, or UDP flows rebound, by a network switch.
    pub switched: AtomicU64,
    /// Requests refused for asking to upgrade the connection.
    pub refused_upgrades: AtomicU64,
    /// Datagrams dropped because UDP is blocked.
    pub dropped_datagrams: AtomicU64,
    /// Flows opened per target, in target order (round-robin's spread).
    pub per_target: Mutex<Vec<u64>>,
}

impl RelayStats {
    pub(crate) fn count_target(&self, index: usize, targets: usize) {
        let mut per = self.per_target.lock().unwrap_or_else(|e| e.into_inner());
        per.resize(targets, 0);
        per[index] += 1;
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Picks targets in turn, with no stickiness: every new flow may land on
/// another node.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    targets: Vec<std::net::SocketAddr>,
    next: AtomicU64,
}

impl RoundRobin {
    pub(crate) fn new(targets: Vec<std::net::SocketAddr>) -> Self {
        Self {
            targets,
            next: AtomicU64::new(0),
        }
    }

    /// The next target and its index.
    pub(crate) fn pick(&self) -> (usize, std::net::SocketAddr) {
        let n = usize::try_from(self.next.fetch_add(1, Ordering::Relaxed)).unwrap_or(0);
        let i = n % self.targets.len();
        (i, self.targets[i])
    }

    pub(crate) fn len(&self) -> usize {
        self.targets.len()
    }
}
