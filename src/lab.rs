//! The network lab beside the server (`--lab`): [`ladder_lab::Lab`]'s
//! relays in front of this server's own listeners, one pair of ports per
//! condition, so the page can be opened through any of them. Entry point:
//! [`start`], called by the composition root once the listeners are bound.
//!
//! Nothing here is on a request's path: the relays are separate sockets,
//! and the server only lists them (`/api/info`), trusts their origins for
//! WebSocket and WebTransport, and pulls the network-switch lever.
//!
//! One thing reaches the listeners: `lossy-link`'s relays reach this
//! server across the lab's wire ([`ladder_lab::wire`]), whose packets
//! arrive addressed to the wire's own address, not to loopback. So inside
//! the lab's namespace ([`listen_addr`]) a listener asked to bind loopback
//! binds every address instead; that namespace has no other network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ladder_lab::{Lab, LabConfig, LabError};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Starts the lab's relays in front of `http` and `h3` (and a second
/// node's, for round-robin, when configured). `None` without `--lab`, or
/// without a QUIC endpoint to stand in front of.
pub(crate) async fn start(
    cfg: &Config,
    http: SocketAddr,
    h3: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> Result<Option<Lab>, LabError> {
    let (true, Some(h3)) = (cfg.lab, h3) else {
        return Ok(None);
    };
    let mut lab = LabConfig::new(reachable(http), reachable(h3));
    if let (Some(peer_http), Some(peer_h3)) = (cfg.lab_peer_http, cfg.lab_peer_h3) {
        lab.http.push(reachable(peer_http));
        lab.h3.push(reachable(peer_h3));
    }
    lab.nat_timeout = Duration::from_secs_f64(cfg.lab_nat_timeout);
    lab.loss_percent = cfg.lab_loss;
    Lab::start(&lab, shutdown).await.map(Some)
}

/// Where a listener asked to bind `addr` binds: with `--lab` inside a
/// namespace `ladder-lab netns` made (the only place `lossy-link` runs), a
/// loopback address becomes every address of the same family, on the same
/// port, so the wire's packets reach it. Anything else is left as asked.
pub(crate) fn listen_addr(cfg: &Config, addr: SocketAddr) -> SocketAddr {
    if !(cfg.lab && ladder_lab::netns::inside() && addr.ip().is_loopback()) {
        return addr;
    }
    let any: IpAddr = match addr.ip() {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(any, addr.port())
}

/// `/api/info`'s `lab` member: the server's own origin (`direct`), the
/// conditions with their URLs, and those not offered here with the reason.
pub(crate) fn info(lab: &Lab, http: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "direct": format!("http://{}", reachable(http)),
        "conditions": lab.conditions,
        "unavailable": lab.unavailable,
    })
}

/// The page origins the lab's relays serve it under.
pub(crate) fn origins(lab: &Lab) -> impl Iterator<Item = &str> {
    lab.conditions.iter().map(|c| c.http.as_str())
}

/// A listener bound to "any address" is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}
