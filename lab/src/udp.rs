//! The UDP relay: accepts datagrams on its own port and forwards each
//! client's flow to a target from a socket of its own, the way a NAT maps a
//! flow to an external port. Entry point: [`UdpRelay::bind`].
//!
//! A flow's mapping is forgotten after `idle_timeout` of silence (the next
//! datagram opens a new one, from a new port, as a NAT would), is moved to
//! a new port by a network switch, and is never answered at all when UDP
//! is blocked (no ICMP, no error: the client can only time out). It never
//! delays or drops a datagram otherwise: `lossy-link` puts its delay and
//! loss on the [`wire`](crate::wire) behind the relay, for QUIC and TCP
//! alike.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::link::{Activity, NetworkSwitch, RelayStats, RoundRobin};

/// Largest datagram relayed (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// How a UDP relay impairs what goes through it.
#[derive(Debug, Clone, Default)]
pub struct UdpImpair {
    /// Drop every datagram silently.
    pub blocked: bool,
    /// A flow silent this long in both directions loses its mapping.
    pub idle_timeout: Option<Duration>,
}

/// A running UDP relay. It stops when the shutdown token is cancelled.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    stats: Arc<RelayStats>,
}

/// One client flow's mapping: its own socket towards the target.
struct Mapping {
    upstream: Arc<UdpSocket>,
    activity: Arc<Activity>,
    /// The network switch's generation when the mapping was made.
    generation: u64,
    /// Stops the task that carries the target's answers back.
    stop: CancellationToken,
}

type Mappings = Arc<Mutex<HashMap<SocketAddr, Mapping>>>;

impl UdpRelay {
    /// Binds `listen` and starts relaying to `targets` (in turn, one per
    /// new flow).
    pub async fn bind(
        listen: SocketAddr,
        targets: Vec<SocketAddr>,
        impair: UdpImpair,
        switch: NetworkSwitch,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        if targets.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no target"));
        }
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let addr = front.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let relay = Relay {
            front,
            targets: RoundRobin::new(targets),
            impair,
            switch,
            stats: stats.clone(),
            mappings: Arc::default(),
        };
        tokio::spawn(relay.run(shutdown));
        Ok(Self { addr, stats })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }
}

struct Relay {
    front: Arc<UdpSocket>,
    targets: RoundRobin,
    impair: UdpImpair,
    switch: NetworkSwitch,
    stats: Arc<RelayStats>,
    mappings: Mappings,
}

impl Relay {
    async fn run(self, shutdown: CancellationToken) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => break,
                r = self.front.recv_from(&mut buf) => r,
            };
            let (n, client) = match received {
                Ok(r) => r,
                // ICMP errors from earlier sends surface here on Linux;
                // they concern one peer, not the relay.
                Err(error) => {
                    debug!(%error, "udp receive failed");
                    continue;
                }
            };
            if self.impair.blocked {
                self.stats.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let upstream = match self.mapping(client, &shutdown).await {
                Ok(s) => s,
                Err(error) => {
                    debug!(%error, "cannot open a mapping");
                    continue;
                }
            };
            // A failed send is a datagram lost, as on any path: QUIC
            // recovers it.
            let _ = upstream.send(&buf[..n]).await;
        }
        for (_, m) in self
            .mappings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            m.stop.cancel();
        }
    }

    /// The socket `client`'s datagrams leave from: the current mapping, or
    /// a new one when there is none, it has idled out, or the network
    /// switched since it was made.
    async fn mapping(
        &self,
        client: SocketAddr,
        shutdown: &CancellationToken,
    ) -> io::Result<Arc<UdpSocket>> {
        let generation = self.switch.generation();
        {
            let mut map = self.mappings.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = map.get(&client) {
                let idle = self
                    .impair
                    .idle_timeout
                    .is_some_and(|t| m.activity.idle() >= t);
                if !idle && m.generation == generation {
                    m.activity.touch();
                    return Ok(m.upstream.clone());
                }
                let counter = if idle {
                    &self.stats.idle_drops
                } else {
                    &self.stats.switched
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let Some(old) = map.remove(&client) {
                    old.stop.cancel();
                }
            }
        }
        let (index, target) = self.targets.pick();
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let upstream = Arc::new(UdpSocket::bind(local).await?);
        upstream.connect(target).await?;
        self.stats.flows.fetch_add(1, Ordering::Relaxed);
        self.stats.count_target(index, self.targets.len());
        let activity = Arc::new(Activity::new());
        let stop = shutdown.child_token();
        tokio::spawn(answers(
            upstream.clone(),
            self.front.clone(),
            client,
            activity.clone(),
            self.impair.idle_timeout,
            stop.clone(),
        ));
        let mapping = Mapping {
            upstream: upstream.clone(),
            activity,
            generation,
            stop,
        };
        self.mappings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client, mapping);
        Ok(upstream)
    }
}

/// Carries the target's datagrams back to `client` until the mapping is
/// stopped or idles out; after that its socket is closed, and what the
/// target sends to the old port is lost, as behind a NAT.
async fn answers(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    activity: Arc<Activity>,
    idle_timeout: Option<Duration>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return,
            () = activity.expired(idle_timeout) => return,
            r = upstream.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(error) => {
                    debug!(%error, "upstream receive failed");
                    continue;
                }
            },
        };
        activity.touch();
        let _ = front.send_to(&buf[..n], client).await;
    }
}
