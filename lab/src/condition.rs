//! The lab's conditions and the [`Lab`] that runs them in front of a
//! Ladder server: each condition is a TCP relay (the HTTP rungs) and a UDP
//! relay (QUIC) on ports of its own. Entry point: [`Lab::start`].
//!
//! A condition is one impairment or several joined by `+`
//! (`udp-blocked+no-upgrade`), the way real networks stack a firewall
//! behind a proxy.
//!
//! `lossy-link`'s relays do not delay or drop anything themselves: they
//! forward to the server across the [`wire`], so the relay-to-server TCP
//! connection and QUIC flow carry the delay and the kernel's loss end to
//! end, and both protocols recover a loss over the delayed round trip. The
//! client's hop to the relay stays clean loopback.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::link::{NetworkSwitch, RelayStats};
use crate::netns;
use crate::tcp::{TcpImpair, TcpRelay};
use crate::udp::{UdpImpair, UdpRelay};
use crate::wire::{self, Wire, WireCounters};

/// One impairment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Impairment {
    /// Every QUIC datagram vanishes: no answer, no ICMP.
    UdpBlocked,
    /// A proxy that refuses `Upgrade: websocket`.
    NoUpgrade,
    /// A proxy that holds response bodies until they end or its buffer is full.
    BufferingProxy,
    /// Idle TCP connections are reset and idle UDP mappings forgotten.
    NatTimeout,
    /// On command, TCP connections are cut and UDP flows change port.
    NetworkSwitch,
    /// Delay each way and random kernel packet loss.
    LossyLink,
    /// New connections and flows alternate between two or more nodes.
    RoundRobin,
}

impl Impairment {
    /// Every impairment, in the order the page lists them.
    pub const ALL: [Self; 7] = [
        Self::UdpBlocked,
        Self::NoUpgrade,
        Self::BufferingProxy,
        Self::NatTimeout,
        Self::NetworkSwitch,
        Self::LossyLink,
        Self::RoundRobin,
    ];

    /// The name used on the command line, in `/api/info` and on the page.
    pub fn name(self) -> &'static str {
        match self {
            Self::UdpBlocked => "udp-blocked",
            Self::NoUpgrade => "no-upgrade",
            Self::BufferingProxy => "buffering-proxy",
            Self::NatTimeout => "nat-timeout",
            Self::NetworkSwitch => "network-switch",
            Self::LossyLink => "lossy-link",
            Self::RoundRobin => "round-robin",
        }
    }
}

/// A name that is not a condition.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown condition {0:?} (known: udp-blocked, no-upgrade, buffering-proxy, nat-timeout, network-switch, lossy-link, round-robin; join with +)"
)]
pub struct UnknownCondition(String);

/// One or more impairments applied together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition(Vec<Impairment>);

impl Condition {
    /// The impairments, in the order given.
    pub fn impairments(&self) -> &[Impairment] {
        &self.0
    }

    fn has(&self, i: Impairment) -> bool {
        self.0.contains(&i)
    }
}

impl FromStr for Condition {
    type Err = UnknownCondition;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = Vec::new();
        for part in s.split('+') {
            let i = Impairment::ALL
                .into_iter()
                .find(|i| i.name() == part.trim())
                .ok_or_else(|| UnknownCondition(s.to_owned()))?;
            if !parts.contains(&i) {
                parts.push(i);
            }
        }
        Ok(Self(parts))
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.0.iter().map(|i| i.name()).collect();
        f.write_str(&names.join("+"))
    }
}

/// The conditions a lab runs by default: each impairment alone, plus the
/// two stacks that walk the automatic client down the ladder.
pub fn default_conditions() -> Vec<Condition> {
    let mut all: Vec<Condition> = Impairment::ALL
        .iter()
        .map(|i| Condition(vec![*i]))
        .collect();
    for stack in [
        "udp-blocked+no-upgrade",
        "udp-blocked+no-upgrade+buffering-proxy",
    ] {
        all.push(stack.parse().expect("a known stack"));
    }
    all
}

/// Settings of a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The server's HTTP listener(s); more than one only for round-robin.
    pub http: Vec<SocketAddr>,
    /// The server's QUIC endpoint(s), in the same order.
    pub h3: Vec<SocketAddr>,
    /// Where relays listen (port 0: each picks a free port).
    pub bind: std::net::IpAddr,
    /// The conditions to run.
    pub conditions: Vec<Condition>,
    /// `nat-timeout`: how long a flow may idle (carriers: 30–60 s).
    pub nat_timeout: Duration,
    /// `buffering-proxy`: bytes held before a body is let through.
    pub buffer_bytes: usize,
    /// `lossy-link`: the wire's delay each way.
    pub delay: Duration,
    /// `lossy-link`: packets dropped, percent.
    pub loss_percent: f64,
}

impl LabConfig {
    /// The defaults in front of one server.
    pub fn new(http: SocketAddr, h3: SocketAddr) -> Self {
        Self {
            http: vec![http],
            h3: vec![h3],
            bind: std::net::Ipv4Addr::LOCALHOST.into(),
            conditions: default_conditions(),
            nat_timeout: Duration::from_secs(30),
            buffer_bytes: 32 * 1024,
            delay: Duration::from_millis(40),
            loss_percent: 2.0,
        }
    }
}

/// A condition that is running, with the ports to reach the server through.
#[derive(Debug, Serialize)]
pub struct RunningCondition {
    /// The condition's name (`udp-blocked+no-upgrade`).
    pub name: String,
    /// Base URL of the HTTP rungs through this condition.
    pub http: String,
    /// WebTransport session URL through this condition.
    pub webtransport: String,
    /// What it does, in a sentence.
    pub description: String,
    /// With `nat-timeout`: how long a flow may idle before it is forgotten,
    /// in milliseconds (a client measuring the condition idles longer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_timeout_ms: Option<u64>,
    #[serde(skip)]
    tcp: TcpRelay,
    #[serde(skip)]
    udp: UdpRelay,
}

impl RunningCondition {
    /// The TCP relay's counters.
    pub fn tcp_stats(&self) -> &RelayStats {
        self.tcp.stats()
    }

    /// The UDP relay's counters.
    pub fn udp_stats(&self) -> &RelayStats {
        self.udp.stats()
    }

    /// The TCP relay's address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp.local_addr()
    }

    /// The UDP relay's address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp.local_addr()
    }
}

/// A condition the lab does not offer, and why.
#[derive(Debug, Serialize)]
pub struct Unavailable {
    /// The condition's name.
    pub name: String,
    /// Why it is not offered.
    pub reason: String,
}

/// Running relays for every condition, all stopped by one token.
#[derive(Debug)]
pub struct Lab {
    /// The conditions that run.
    pub conditions: Vec<RunningCondition>,
    /// The conditions that could not run, with the reason.
    pub unavailable: Vec<Unavailable>,
    switch: NetworkSwitch,
    /// `lossy-link`'s path to the server, while a lossy condition runs.
    wire: Option<Wire>,
}

/// Why a lab could not start.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A relay's socket could not be bound.
    #[error("cannot bind a relay for {condition}: {source}")]
    Bind {
        /// The condition.
        condition: String,
        /// Why.
        source: std::io::Error,
    },
    /// The lab was given no server to stand in front of.
    #[error("the lab needs the server's HTTP and QUIC addresses (as many of one as of the other)")]
    NoServer,
}

impl Lab {
    /// Starts a TCP and a UDP relay per condition. Conditions that cannot
    /// run here are listed in [`Lab::unavailable`], never run half-way:
    /// `lossy-link` without the privilege to make its wire, or with a
    /// server the wire cannot reach; `round-robin` with fewer than two
    /// nodes.
    pub async fn start(cfg: &LabConfig, shutdown: CancellationToken) -> Result<Self, LabError> {
        if cfg.http.is_empty() || cfg.http.len() != cfg.h3.len() {
            return Err(LabError::NoServer);
        }
        let switch = NetworkSwitch::default();
        let mut lab = Self {
            conditions: Vec::new(),
            unavailable: Vec::new(),
            switch: switch.clone(),
            wire: None,
        };
        let lossy_refused = if cfg.conditions.iter().any(|c| c.has(Impairment::LossyLink)) {
            match lossy_wire(cfg).await {
                Ok(w) => {
                    lab.wire = Some(w);
                    None
                }
                Err(reason) => Some(format!("lossy-link is not offered: {reason}")),
            }
        } else {
            None
        };
        for cond in &cfg.conditions {
            let name = cond.to_string();
            if let (true, Some(reason)) = (cond.has(Impairment::LossyLink), &lossy_refused) {
                lab.unavailable.push(Unavailable {
                    name,
                    reason: reason.clone(),
                });
                continue;
            }
            if cond.has(Impairment::RoundRobin) && cfg.http.len() < 2 {
                lab.unavailable.push(Unavailable {
                    name,
                    reason:
                        "round-robin needs two nodes sharing one Redis (ladder --lab-peer-http/--lab-peer-h3, or ladder-lab run with two --http and --h3)"
                            .into(),
                });
                continue;
            }
            let (tcp_impair, udp_impair) = impairs(cond, cfg);
            let (http, h3) = targets(cond, cfg);
            let bind_err = |source| LabError::Bind {
                condition: name.clone(),
                source,
            };
            let listen = SocketAddr::new(cfg.bind, 0);
            let tcp = TcpRelay::bind(listen, http, tcp_impair, switch.clone(), shutdown.clone())
                .await
                .map_err(bind_err)?;
            let udp = UdpRelay::bind(listen, h3, udp_impair, switch.clone(), shutdown.clone())
                .await
                .map_err(bind_err)?;
            lab.conditions.push(RunningCondition {
                http: format!("http://{}", tcp.local_addr()),
                webtransport: format!("https://{}/wt", udp.local_addr()),
                description: describe(cond, cfg),
                nat_timeout_ms: cond
                    .has(Impairment::NatTimeout)
                    .then(|| u64::try_from(cfg.nat_timeout.as_millis()).unwrap_or(u64::MAX)),
                name,
                tcp,
                udp,
            });
        }
        Ok(lab)
    }

    /// What crossed `lossy-link`'s wire since it started (packets and the
    /// kernel's drops, per protocol); `None` when no lossy condition runs.
    pub fn wire_counters(&self) -> Option<Result<WireCounters, wire::WireError>> {
        self.wire.as_ref().map(Wire::counters)
    }

    /// Pulls the network-switch lever (every condition's relays share it).
    pub fn switch_network(&self) {
        self.switch.switch();
    }

    /// The lever itself, to pull from elsewhere.
    pub fn network_switch(&self) -> NetworkSwitch {
        self.switch.clone()
    }

    /// The running condition called `name`.
    pub fn get(&self, name: &str) -> Option<&RunningCondition> {
        self.conditions.iter().find(|c| c.name == name)
    }
}

/// Starts `lossy-link`'s wire with the configured delay and loss, once it
/// reaches every server a lossy condition forwards to. The error says why
/// not, for the unavailable list.
async fn lossy_wire(cfg: &LabConfig) -> Result<Wire, String> {
    netns::check_privilege().map_err(|e| e.to_string())?;
    let mut servers: Vec<SocketAddr> = (cfg.conditions.iter())
        .filter(|c| c.has(Impairment::LossyLink))
        .flat_map(|c| targets(c, cfg).0)
        .collect();
    servers.sort_unstable();
    servers.dedup();
    Wire::reaching(cfg.delay, cfg.loss_percent, &servers)
        .await
        .map_err(|e| e.to_string())
}

/// The servers `cond`'s relays forward to (HTTP, QUIC): every node for
/// round-robin, else the first; across the wire for `lossy-link`.
fn targets(cond: &Condition, cfg: &LabConfig) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let n = if cond.has(Impairment::RoundRobin) {
        cfg.http.len()
    } else {
        1
    };
    let lossy = cond.has(Impairment::LossyLink);
    let route = |a: &SocketAddr| if lossy { wire::across(a.port()) } else { *a };
    (
        cfg.http[..n].iter().map(route).collect(),
        cfg.h3[..n].iter().map(route).collect(),
    )
}

fn impairs(cond: &Condition, cfg: &LabConfig) -> (TcpImpair, UdpImpair) {
    let nat = cond.has(Impairment::NatTimeout).then_some(cfg.nat_timeout);
    let tcp = TcpImpair {
        idle_timeout: nat,
        refuse_upgrade: cond.has(Impairment::NoUpgrade),
        buffer_bytes: cond
            .has(Impairment::BufferingProxy)
            .then_some(cfg.buffer_bytes),
    };
    let udp = UdpImpair {
        blocked: cond.has(Impairment::UdpBlocked),
        idle_timeout: nat,
    };
    (tcp, udp)
}

fn describe(cond: &Condition, cfg: &LabConfig) -> String {
    let parts: Vec<String> = cond
        .impairments()
        .iter()
        .map(|i| match i {
            Impairment::UdpBlocked => "UDP to the QUIC port is silently dropped".to_owned(),
            Impairment::NoUpgrade => "a proxy answers 403 to Upgrade: websocket".to_owned(),
            Impairment::BufferingProxy => {
                format!(
                    "a proxy holds response bodies until they end or {} KiB",
                    cfg.buffer_bytes / 1024
                )
            }
            Impairment::NatTimeout => format!(
                "TCP idle {0} s is reset, a UDP mapping idle {0} s is forgotten",
                cfg.nat_timeout.as_secs_f64()
            ),
            Impairment::NetworkSwitch => {
                "on command, TCP is cut and UDP moves to a new source port".to_owned()
            }
            Impairment::LossyLink => format!(
                "{} ms each way and {} % of packets dropped by the kernel, on the path from the relays to the server (TCP and QUIC recover over the whole delayed round trip)",
                cfg.delay.as_millis(),
                cfg.loss_percent
            ),
            Impairment::RoundRobin => {
                "each new connection goes to the next node, no stickiness".to_owned()
            }
        })
        .collect();
    parts.join("; ")
}
