//! Sockets: TCP connections from a chosen 127.0.0.x source address (so tens
//! of thousands of load connections do not run out of ephemeral ports on
//! one address pair), and ports that are free now.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use tokio::net::{TcpSocket, TcpStream};

/// The source address of client `i` when spreading over `k` addresses:
/// 127.0.0.1 … 127.0.0.k.
pub fn src_ip(i: usize, k: usize) -> IpAddr {
    let k = k.clamp(1, 250);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, (i % k) as u8 + 1))
}

/// A TCP connection to `dst` from `src`:0, with Nagle off (as browsers do).
pub async fn tcp_connect(src: IpAddr, dst: SocketAddr) -> Result<TcpStream> {
    let sock = match src {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.bind(SocketAddr::new(src, 0))
        .with_context(|| format!("bind {src}"))?;
    let s = sock
        .connect(dst)
        .await
        .with_context(|| format!("connect {dst} from {src}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A loopback port the OS says is free now, for TCP or for UDP (checked
/// separately: a server restarted in place needs both back).
pub fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// `HOST:PORT` of an `http://`, `ws://` or `https://` URL, resolved.
pub async fn url_addr(url: &str) -> Result<SocketAddr> {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    tokio::net::lookup_host(rest)
        .await
        .with_context(|| format!("resolving {rest}"))?
        .next()
        .with_context(|| format!("no address for {rest}"))
}
