//! Each relay on real loopback sockets, without a browser: what a client
//! and a server on either side of it see.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ladder_lab::{NetworkSwitch, RelayStats, TcpImpair, TcpRelay, UdpImpair, UdpRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(10);
const LOCAL: &str = "127.0.0.1:0";

fn local() -> SocketAddr {
    LOCAL.parse().unwrap()
}

/// A UDP echo server that remembers every source address it heard from.
async fn udp_echo() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let sock = UdpSocket::bind(LOCAL).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            seen.lock().unwrap().push(from);
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    (addr, peers)
}

/// A TCP echo server; counts the connections it accepted.
async fn tcp_echo() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind(LOCAL).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, accepted)
}

/// A UDP relay on loopback in front of `servers`, until `stop`.
async fn udp_relay(
    servers: Vec<SocketAddr>,
    impair: UdpImpair,
    switch: &NetworkSwitch,
    stop: &CancellationToken,
) -> UdpRelay {
    UdpRelay::bind(local(), servers, impair, switch.clone(), stop.clone())
        .await
        .unwrap()
}

/// A TCP relay on loopback in front of `servers`, until `stop`.
async fn tcp_relay(
    servers: Vec<SocketAddr>,
    impair: TcpImpair,
    switch: &NetworkSwitch,
    stop: &CancellationToken,
) -> TcpRelay {
    TcpRelay::bind(local(), servers, impair, switch.clone(), stop.clone())
        .await
        .unwrap()
}

async fn udp_round_trip(client: &UdpSocket, relay: SocketAddr, payload: &[u8]) -> Vec<u8> {
    client.send_to(payload, relay).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = timeout(BOUND, client.recv_from(&mut buf))
        .await
        .expect("echo within bound")
        .unwrap();
    buf[..n].to_vec()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    timeout(BOUND, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn get(c: &AtomicU64) -> u64 {
    RelayStats::get(c)
}

#[tokio::test]
async fn udp_blocked_drops_every_datagram_and_the_server_hears_nothing() {
    let (server, peers) = udp_echo().await;
    let stop = CancellationToken::new();
    let impair = UdpImpair {
        blocked: true,
        ..Default::default()
    };
    let relay = udp_relay(vec![server], impair, &NetworkSwitch::default(), &stop).await;
    let client = UdpSocket::bind(LOCAL).await.unwrap();
    for i in 0..5u8 {
        client.send_to(&[i], relay.local_addr()).await.unwrap();
    }
    wait_for("five drops", || get(&relay.stats().dropped_datagrams) == 5).await;
    assert!(
        peers.lock().unwrap().is_empty(),
        "a blocked datagram reached the server"
    );
    assert_eq!(get(&relay.stats().flows), 0);
    stop.cancel();
}

#[tokio::test]
async fn udp_mapping_idles_out_and_the_next_flow_comes_from_a_new_port() {
    let (server, peers) = udp_echo().await;
    let stop = CancellationToken::new();
    let t = Duration::from_millis(200);
    let impair = UdpImpair {
        idle_timeout: Some(t),
        ..Default::default()
    };
    let relay = udp_relay(vec![server], impair, &NetworkSwitch::default(), &stop).await;
    let client = UdpSocket::bind(LOCAL).await.unwrap();
    assert_eq!(
        udp_round_trip(&client, relay.local_addr(), b"one").await,
        b"one"
    );
    assert_eq!(
        udp_round_trip(&client, relay.local_addr(), b"two").await,
        b"two"
    );
    tokio::time::sleep(t * 3).await;
    assert_eq!(
        udp_round_trip(&client, relay.local_addr(), b"three").await,
        b"three"
    );
    let peers = peers.lock().unwrap().clone();
    assert_eq!(peers[0], peers[1], "one mapping while the flow is busy");
    assert_ne!(
        peers[1], peers[2],
        "a forgotten mapping comes back on another port"
    );
    assert_eq!(get(&relay.stats().idle_drops), 1);
    assert_eq!(get(&relay.stats().flows), 2);
    stop.cancel();
}

#[tokio::test]
async fn udp_flow_moves_to_a_new_port_on_a_network_switch() {
    let (server, peers) = udp_echo().await;
    let stop = CancellationToken::new();
    let switch = NetworkSwitch::default();
    let relay = udp_relay(vec![server], UdpImpair::default(), &switch, &stop).await;
    let client = UdpSocket::bind(LOCAL).await.unwrap();
    assert_eq!(
        udp_round_trip(&client, relay.local_addr(), b"wifi").await,
        b"wifi"
    );
    switch.switch();
    assert_eq!(
        udp_round_trip(&client, relay.local_addr(), b"cellular").await,
        b"cellular"
    );
    let peers = peers.lock().unwrap().clone();
    assert_ne!(
        peers[0], peers[1],
        "after a switch the server sees a new source port"
    );
    assert_eq!(get(&relay.stats().switched), 1);
    stop.cancel();
}

#[tokio::test]
async fn tcp_connection_idle_past_the_nat_timeout_is_reset() {
    let (server, _) = tcp_echo().await;
    let stop = CancellationToken::new();
    let t = Duration::from_millis(200);
    let impair = TcpImpair {
        idle_timeout: Some(t),
        ..Default::default()
    };
    let relay = tcp_relay(vec![server], impair, &NetworkSwitch::default(), &stop).await;
    let mut c = TcpStream::connect(relay.local_addr()).await.unwrap();
    // Busy, it lives longer than T.
    for _ in 0..6 {
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        timeout(BOUND, c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
        tokio::time::sleep(t / 3).await;
    }
    // Idle, it is reset.
    let mut buf = [0u8; 4];
    let err = timeout(BOUND, c.read(&mut buf))
        .await
        .expect("reset within bound")
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(get(&relay.stats().idle_drops), 1);
    stop.cancel();
}

#[tokio::test]
async fn tcp_connections_are_cut_on_a_network_switch_and_new_ones_work() {
    let (server, _) = tcp_echo().await;
    let stop = CancellationToken::new();
    let switch = NetworkSwitch::default();
    let relay = tcp_relay(vec![server], TcpImpair::default(), &switch, &stop).await;
    let mut a = TcpStream::connect(relay.local_addr()).await.unwrap();
    let mut b = TcpStream::connect(relay.local_addr()).await.unwrap();
    for s in [&mut a, &mut b] {
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        timeout(BOUND, s.read_exact(&mut one))
            .await
            .unwrap()
            .unwrap();
    }
    switch.switch();
    for s in [&mut a, &mut b] {
        let mut one = [0u8; 1];
        let err = timeout(BOUND, s.read(&mut one))
            .await
            .expect("cut within bound")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    let mut c = TcpStream::connect(relay.local_addr()).await.unwrap();
    c.write_all(b"y").await.unwrap();
    let mut one = [0u8; 1];
    timeout(BOUND, c.read_exact(&mut one))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&one, b"y");
    assert_eq!(get(&relay.stats().switched), 2);
    stop.cancel();
}

#[tokio::test]
async fn round_robin_spreads_connections_and_flows_over_the_nodes() {
    let (a, a_count) = tcp_echo().await;
    let (b, b_count) = tcp_echo().await;
    let stop = CancellationToken::new();
    let relay = tcp_relay(
        vec![a, b],
        TcpImpair::default(),
        &NetworkSwitch::default(),
        &stop,
    )
    .await;
    for _ in 0..4 {
        let mut c = TcpStream::connect(relay.local_addr()).await.unwrap();
        c.write_all(b"r").await.unwrap();
        let mut one = [0u8; 1];
        timeout(BOUND, c.read_exact(&mut one))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        (
            a_count.load(Ordering::SeqCst),
            b_count.load(Ordering::SeqCst)
        ),
        (2, 2)
    );

    let (ua, ua_peers) = udp_echo().await;
    let (ub, ub_peers) = udp_echo().await;
    let urelay = udp_relay(
        vec![ua, ub],
        UdpImpair::default(),
        &NetworkSwitch::default(),
        &stop,
    )
    .await;
    for _ in 0..2 {
        let client = UdpSocket::bind(LOCAL).await.unwrap();
        assert_eq!(
            udp_round_trip(&client, urelay.local_addr(), b"f").await,
            b"f"
        );
    }
    assert_eq!(
        (
            ua_peers.lock().unwrap().len(),
            ub_peers.lock().unwrap().len()
        ),
        (1, 1)
    );
    assert_eq!(*urelay.stats().per_target.lock().unwrap(), vec![1, 1]);
    stop.cancel();
}
