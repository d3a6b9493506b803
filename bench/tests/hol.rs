//! Head-of-line run under 5 % real packet loss on 4 channels, in CI.
//!
//! The test re-runs itself inside `unshare -Urn` (a user and network
//! namespace: no root needed), where the lab's wire (`ladder_lab::wire`)
//! drops packets in the kernel and delays them 20 ms each way. Ladder runs in-process, the three
//! subscribers (one WebSocket, a WebTransport stream per channel,
//! WebTransport datagrams) receive across the wire. It asserts delivery and
//! accounting, never speed:
//!
//! - every message arrives exactly once on each stream variant;
//! - the co-stall figure is computed (one per stall event) and printed;
//! - datagram loss is counted: received + lost = published, no copies;
//! - the kernel really dropped packets, and the wire's queue dropped none.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ladder::config::Config;
use ladder::server::Server;
use ladder_bench::hol::{self, Endpoints, Spec};
use ladder_lab::netns;
use ladder_lab::wire::{FAR, Wire};
use tokio_util::sync::CancellationToken;

const NAME: &str = "five_percent_loss_on_four_channels_delivers_and_accounts";

#[test]
fn five_percent_loss_on_four_channels_delivers_and_accounts() {
    if !netns::inside() {
        match netns::rerun_test_inside(NAME) {
            Ok(text) => println!("{text}"),
            Err(text) => panic!("inside the namespace:\n{text}"),
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(inside());
}

async fn inside() {
    let wire = Wire::start(Duration::from_millis(20)).expect("the wire starts in the namespace");
    let certs = std::env::temp_dir().join(format!("ladder-hol-test-{}", std::process::id()));
    let cfg = Config {
        http: "0.0.0.0:0".parse().unwrap(),
        h3: "0.0.0.0:0".parse().unwrap(),
        certs_dir: certs,
        publish_rate: 0,
        ..Config::default()
    };
    let server = Server::bind(cfg).await.unwrap();
    let (hp, qp) = (
        server.http_addr().port(),
        server.quic_addr().unwrap().port(),
    );
    let ep = Endpoints {
        publish_http: SocketAddr::from(([127, 0, 0, 1], hp)),
        http: SocketAddr::new(IpAddr::V4(FAR), hp),
        wt_url: format!("https://{}/wt", SocketAddr::new(IpAddr::V4(FAR), qp)),
        cert_hash: server.cert_sha256().unwrap().to_owned(),
    };
    let token = CancellationToken::new();
    let handle = tokio::spawn(server.run(token.clone()));

    wire.set_loss(5.0).unwrap();
    let (n, count) = (4, 200);
    let spec = Spec {
        channels: n,
        rate: 50.0,
        count,
        size: 64,
        tag: "ci".into(),
        drain: Duration::from_secs(30),
    };
    let out = tokio::time::timeout(Duration::from_secs(90), hol::run(&ep, &spec))
        .await
        .expect("the run ends within its bound")
        .expect("the run succeeds");
    let counters = wire.counters().unwrap();
    println!(
        "{}",
        out.table("5 % loss, N = 4, 200 messages per channel", Some(&counters))
    );

    for (name, v) in [
        ("websocket", &out.websocket),
        ("webtransport", &out.webtransport),
    ] {
        for (k, c) in v.channels.iter().enumerate() {
            assert_eq!(
                (c.unique, c.dups, c.missing),
                (count, 0, 0),
                "{name} channel {k}: every message exactly once"
            );
        }
    }
    for (name, v) in out.variants() {
        assert_eq!(
            v.co_stalls.len() as u64,
            v.stalls(),
            "{name}: a co-stall per stall"
        );
        assert!(
            v.co_stalls.iter().all(|&c| (1..=n).contains(&c)),
            "{name}: {:?}",
            v.co_stalls
        );
    }
    let d = &out.datagram;
    let published = count * n as u64;
    assert_eq!(
        d.unique() + d.missing(),
        published,
        "datagrams: received + lost = published"
    );
    assert_eq!(d.dups(), 0, "datagrams: no copies");
    println!(
        "datagram accounting: {} received ({} on the stream), {} lost of {published}",
        d.unique(),
        d.via_stream(),
        d.missing()
    );
    assert!(
        counters.tcp_dropped > 0 && counters.udp_dropped > 0,
        "the kernel dropped packets of both kinds: {counters:?}"
    );
    assert_eq!(
        counters.overflow, 0,
        "the wire's delay queue dropped nothing"
    );

    token.cancel();
    tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("server stops")
        .unwrap();
}
