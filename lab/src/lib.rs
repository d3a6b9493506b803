//! Ladder's network lab: relays that stand between a client and a Ladder
//! server and do what the networks in between do — a firewall that drops
//! UDP, a proxy that refuses upgrades or buffers responses, a NAT that
//! forgets idle flows, a switch from Wi-Fi to cellular, a lossy link, a
//! load balancer without sticky sessions.
//!
//! It is a crate of its own so the server's hot path never carries it:
//! tests, the bench, the `ladder-lab` binary and `ladder --lab` use it.
//!
//! # Layout
//!
//! - [`condition`]: the named conditions and [`Lab`], which runs a TCP and
//!   a UDP relay per condition in front of a server.
//! - [`tcp`]: the TCP relay (idle reset, network-switch cut) and, through
//!   `http1`, the HTTP/1.1 proxy for `no-upgrade` and `buffering-proxy`.
//! - [`udp`]: the UDP relay (blocking, NAT mappings that idle out or
//!   rebind to a new port).
//! - [`wire`]: the path with a delay each way and real kernel packet loss
//!   that `lossy-link`'s relays (and the head-of-line blocking bench)
//!   reach the server across: a TUN device that reflects packets.
//! - [`netns`]: the user and network namespace the wire needs.
//! - [`link`]: what relays share: the network-switch lever and counters.

pub mod condition;
mod http1;
pub mod link;
pub mod netns;
pub mod tcp;
pub mod udp;
pub mod wire;

pub use condition::{Condition, Impairment, Lab, LabConfig, LabError, RunningCondition};
pub use link::{NetworkSwitch, RelayStats};
pub use tcp::{TcpImpair, TcpRelay};
pub use udp::{UdpImpair, UdpRelay};
