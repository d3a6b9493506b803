//! `lossy-link`: the kernel drops real packets inside a user and network
//! namespace, TCP retransmits until every byte is through, UDP simply
//! loses. The test re-runs itself inside `unshare -Urn` (no root needed);
//! outside one, the lab must say loss is unavailable rather than run clean.

use std::net::SocketAddr;
use std::time::Duration;

use ladder_lab::netns::{self, Loss};
use ladder_lab::{Lab, LabConfig, NetworkSwitch, TcpImpair, TcpRelay, UdpImpair, UdpRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(60);

/// Runs test `name` of this binary again inside a fresh namespace.
fn rerun_inside(name: &str) {
    match netns::rerun_test_inside(name) {
        Ok(text) => println!("{text}"),
        Err(text) => panic!("inside the namespace:\n{text}"),
    }
}

/// `(name, value)` of the kernel's TCP counters in this namespace.
fn tcp_counter(name: &str) -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Packets the rules dropped so far (sum of the rules' counters).
fn dropped_packets() -> u64 {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", "ladder_lab"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("packets ")
        .skip(1)
        .map(|s| s.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn lossy_link_drops_real_packets_that_tcp_retransmits_and_udp_loses() {
    if !netns::inside() {
        return rerun_inside("lossy_link_drops_real_packets_that_tcp_retransmits_and_udp_loses");
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let stop = CancellationToken::new();
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let uecho = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let uecho_addr = uecho.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = uecho.recv_from(&mut buf).await {
                let _ = uecho.send_to(&buf[..n], from).await;
            }
        });
        let delay = Duration::from_millis(5);
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let tcp = TcpRelay::bind(local, vec![echo_addr], TcpImpair { delay, ..Default::default() }, NetworkSwitch::default(), stop.clone())
            .await
            .unwrap();
        let udp = UdpRelay::bind(local, vec![uecho_addr], UdpImpair { delay, ..Default::default() }, NetworkSwitch::default(), stop.clone())
            .await
            .unwrap();
        Loss { percent: 10.0, ports: vec![tcp.local_addr().port(), udp.local_addr().port()] }.apply().unwrap();
        let retrans_before = tcp_counter("RetransSegs");

        // 512 KiB of a known pattern through TCP, echoed back whole.
        let data: Vec<u8> = (0..512 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let s = TcpStream::connect(tcp.local_addr()).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move { w.write_all(&sent).await.unwrap() });
        let mut back = vec![0u8; data.len()];
        timeout(BOUND, r.read_exact(&mut back)).await.expect("all bytes back within bound").unwrap();
        writer.await.unwrap();
        assert!(back == data, "TCP delivered every byte, in order");
        let retrans = tcp_counter("RetransSegs") - retrans_before;
        let tcp_dropped = dropped_packets();
        assert!(tcp_dropped > 0, "the kernel dropped no packet");
        assert!(retrans > 0, "TCP retransmitted nothing: the loss was not real");

        // UDP: what is dropped stays lost.
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..400u32 {
            client.send_to(&i.to_be_bytes(), udp.local_addr()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Answers come back within milliseconds; a second of silence
        // after the last one means the rest were dropped.
        let mut echoed = 0u32;
        let mut buf = [0u8; 16];
        while timeout(Duration::from_secs(1), client.recv_from(&mut buf)).await.is_ok() {
            echoed += 1;
        }
        assert!(echoed < 400 && echoed > 200, "{echoed}/400 UDP round trips at 10 % loss each way");
        println!(
            "10 % loss each way: {} packets dropped by nft, {retrans} TCP segments retransmitted, 512 KiB intact; UDP {echoed}/400 round trips",
            dropped_packets()
        );

        // The lab offers lossy-link here, with its loss applied.
        let mut cfg = LabConfig::new(echo_addr, uecho_addr);
        cfg.conditions = vec!["lossy-link".parse().unwrap()];
        let lab = Lab::start(&cfg, stop.clone()).await.unwrap();
        assert_eq!(lab.conditions.len(), 1, "unavailable: {:?}", lab.unavailable);
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
    let rr = lab
        .unavailable
        .iter()
        .find(|u| u.name == "round-robin")
        .expect("round-robin listed as unavailable");
    assert!(rr.reason.contains("two nodes"), "{}", rr.reason);
    stop.cancel();
}
