//! The lossy wire and `lossy-link`: the kernel drops real packets inside a
//! user and network namespace, TCP retransmits until every byte is
//! through, UDP simply loses, and the delay sits between the two real
//! endpoints. Each namespace test re-runs itself inside `unshare -Urn` (no
//! root needed, a fresh namespace each); outside one, the lab must say
//! loss is unavailable rather than run clean.

use std::net::SocketAddr;
use std::time::Duration;

use ladder_lab::netns;
use ladder_lab::wire::{self, Wire, WireCounters};
use ladder_lab::{Lab, LabConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(60);

/// Runs test `name` of this binary again inside a fresh namespace.
fn rerun_inside(name: &str) {
    match netns::rerun_test_inside(name) {
        Ok(text) => println!("{text}"),
        Err(text) => panic!("inside the namespace:\n{text}"),
    }
}

fn block_on<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Runtime::new().unwrap().block_on(f);
}

/// A value of the kernel's TCP counters in this namespace.
fn tcp_counter(name: &str) -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// TCP and UDP echo servers on `ip` (port 0), their ports.
async fn echoes(ip: &str) -> (SocketAddr, SocketAddr) {
    let echo = TcpListener::bind((ip, 0)).await.unwrap();
    let tcp = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let uecho = UdpSocket::bind((ip, 0)).await.unwrap();
    let udp = uecho.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = uecho.recv_from(&mut buf).await {
            let _ = uecho.send_to(&buf[..n], from).await;
        }
    });
    (tcp, udp)
}

/// One small TCP echo through `to`, then 512 KiB of a known pattern,
/// echoed back whole; returns the first round trip.
async fn tcp_through(to: SocketAddr) -> Duration {
    let mut s = timeout(BOUND, TcpStream::connect(to))
        .await
        .expect("connects within bound")
        .unwrap();
    let started = Instant::now();
    s.write_all(b"abc").await.unwrap();
    let mut three = [0u8; 3];
    timeout(BOUND, s.read_exact(&mut three))
        .await
        .expect("echo within bound")
        .unwrap();
    let rtt = started.elapsed();
    let data: Vec<u8> = (0..512 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let (mut r, mut w) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move { w.write_all(&sent).await.unwrap() });
    let mut back = vec![0u8; data.len()];
    timeout(BOUND, r.read_exact(&mut back))
        .await
        .expect("all bytes back within bound")
        .unwrap();
    writer.await.unwrap();
    assert!(back == data, "TCP delivered every byte, in order");
    rtt
}

/// Sends 400 numbered datagrams to `to`; returns how many came back and
/// the first round trip.
async fn udp_through(to: SocketAddr) -> (u32, Duration) {
    let client = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let mut buf = [0u8; 16];
    // The first one alone, numbered and resent until its own echo comes
    // back (a late echo of an earlier try would shorten the round trip).
    let rtt = timeout(BOUND, async {
        for attempt in 1_000_000u32.. {
            let started = Instant::now();
            client.send_to(&attempt.to_be_bytes(), to).await.unwrap();
            while let Ok(r) = timeout(Duration::from_secs(1), client.recv_from(&mut buf)).await {
                if r.unwrap().0 == 4 && buf[..4] == attempt.to_be_bytes() {
                    return started.elapsed();
                }
            }
        }
        unreachable!("attempts run out only after the bound")
    })
    .await
    .expect("one datagram answered within bound");
    for i in 0..400u32 {
        client.send_to(&i.to_be_bytes(), to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Answers come back within a round trip; two seconds of silence after
    // the last one means the rest were dropped.
    let mut echoed = 0u32;
    while timeout(Duration::from_secs(2), client.recv_from(&mut buf))
        .await
        .is_ok()
    {
        echoed += 1;
    }
    (echoed, rtt)
}

fn check_counters(c: &WireCounters) {
    assert!(
        c.tcp > 0 && c.udp > 0,
        "TCP and UDP crossed the wire: {c:?}"
    );
    assert!(
        c.tcp_dropped > 0 && c.udp_dropped > 0,
        "the kernel dropped packets of both kinds: {c:?}"
    );
    assert_eq!(c.overflow, 0, "the wire's delay queue dropped nothing");
}

const WIRE: &str = "the_wire_delays_each_way_and_drops_real_packets_tcp_retransmits_udp_loses";

#[test]
fn the_wire_delays_each_way_and_drops_real_packets_tcp_retransmits_udp_loses() {
    if !netns::inside() {
        return rerun_inside(WIRE);
    }
    block_on(async {
        let delay = Duration::from_millis(20);
        let w = Wire::start(delay).unwrap();
        let (tcp, udp) = echoes("0.0.0.0").await;
        w.set_loss(10.0).unwrap();
        let retrans_before = tcp_counter("RetransSegs");
        let tcp_rtt = tcp_through(wire::across(tcp.port())).await;
        let retrans = tcp_counter("RetransSegs") - retrans_before;
        assert!(
            retrans > 0,
            "TCP retransmitted nothing: the loss was not real"
        );
        let (echoed, udp_rtt) = udp_through(wire::across(udp.port())).await;
        assert!(
            echoed < 400 && echoed > 200,
            "{echoed}/400 UDP round trips at 10 % loss each way"
        );
        // Floors, not speeds: every crossing waits the delay.
        assert!(tcp_rtt >= delay * 2, "TCP round trip {tcp_rtt:?}");
        assert!(udp_rtt >= delay * 2, "UDP round trip {udp_rtt:?}");
        let c = w.counters().unwrap();
        check_counters(&c);
        println!(
            "wire, {delay:?} each way, 10 % loss: round trip TCP {tcp_rtt:?} UDP {udp_rtt:?}; {retrans} TCP segments retransmitted, 512 KiB intact; UDP {echoed}/400 round trips; {c:?}"
        );
    });
}

const LOSSY: &str = "lossy_link_relays_reach_the_server_across_the_wire";

#[test]
fn lossy_link_relays_reach_the_server_across_the_wire() {
    if !netns::inside() {
        return rerun_inside(LOSSY);
    }
    block_on(async {
        let stop = CancellationToken::new();
        // Listening on every address, as `ladder --lab` does in here.
        let (tcp, udp) = echoes("0.0.0.0").await;
        let mut cfg = LabConfig::new(tcp, udp);
        cfg.conditions = vec!["lossy-link".parse().unwrap()];
        cfg.delay = Duration::from_millis(20);
        cfg.loss_percent = 10.0;
        let lab = Lab::start(&cfg, stop.clone()).await.unwrap();
        assert!(lab.unavailable.is_empty(), "{:?}", lab.unavailable);
        let cond = lab.get("lossy-link").expect("lossy-link runs");
        assert!(
            cond.tcp_addr().ip().is_loopback(),
            "clients reach the relay on loopback"
        );
        let retrans_before = tcp_counter("RetransSegs");
        let tcp_rtt = tcp_through(cond.tcp_addr()).await;
        let retrans = tcp_counter("RetransSegs") - retrans_before;
        assert!(
            retrans > 0,
            "TCP retransmitted nothing: the loss was not real"
        );
        let (echoed, udp_rtt) = udp_through(cond.udp_addr()).await;
        assert!(
            echoed < 400 && echoed > 200,
            "{echoed}/400 UDP round trips through lossy-link"
        );
        // The relay's own hop is loopback: the delay can only be the
        // wire's, between the relay and the server.
        assert!(tcp_rtt >= cfg.delay * 2, "TCP round trip {tcp_rtt:?}");
        assert!(udp_rtt >= cfg.delay * 2, "UDP round trip {udp_rtt:?}");
        let c = lab
            .wire_counters()
            .expect("lossy-link runs on the wire")
            .unwrap();
        check_counters(&c);
        println!(
            "lossy-link, 20 ms each way, 10 % loss: round trip TCP {tcp_rtt:?} UDP {udp_rtt:?}; {retrans} TCP segments retransmitted, 512 KiB intact; UDP {echoed}/400; {c:?}"
        );
        stop.cancel();
    });
}

const LOOPBACK_ONLY: &str = "a_server_on_loopback_only_gets_no_lossy_link_and_the_reason";

#[test]
fn a_server_on_loopback_only_gets_no_lossy_link_and_the_reason() {
    if !netns::inside() {
        return rerun_inside(LOOPBACK_ONLY);
    }
    block_on(async {
        let stop = CancellationToken::new();
        let (tcp, udp) = echoes("127.0.0.1").await;
        let lab = Lab::start(&LabConfig::new(tcp, udp), stop.clone())
            .await
            .unwrap();
        assert!(
            lab.get("lossy-link").is_none(),
            "lossy-link must not run clean"
        );
        assert!(lab.wire_counters().is_none());
        let lossy = lab
            .unavailable
            .iter()
            .find(|u| u.name == "lossy-link")
            .expect("lossy-link listed as unavailable");
        assert!(lossy.reason.contains("every address"), "{}", lossy.reason);
        assert!(lab.get("udp-blocked").is_some(), "the other conditions run");
        stop.cancel();
    });
}

#[tokio::test]
async fn outside_a_namespace_the_lab_offers_no_lossy_link_and_says_why() {
    if netns::inside() {
        return;
    }
    let stop = CancellationToken::new();
    let cfg = LabConfig::new(
        "127.0.0.1:9".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    );
    let lab = Lab::start(&cfg, stop.clone()).await.unwrap();
    let names: Vec<_> = lab.conditions.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "udp-blocked",
            "no-upgrade",
            "buffering-proxy",
            "nat-timeout",
            "network-switch",
            "udp-blocked+no-upgrade",
            "udp-blocked+no-upgrade+buffering-proxy"
        ]
    );
    let lossy = lab
        .unavailable
        .iter()
        .find(|u| u.name == "lossy-link")
        .expect("lossy-link listed as unavailable");
    assert!(
        lossy.reason.contains("CAP_NET_ADMIN") && lossy.reason.contains("namespace"),
        "{}",
        lossy.reason
    );
    assert!(lab.wire_counters().is_none());
    let rr = lab
        .unavailable
        .iter()
        .find(|u| u.name == "round-robin")
        .expect("round-robin listed as unavailable");
    assert!(rr.reason.contains("two nodes"), "{}", rr.reason);
    stop.cancel();
}
