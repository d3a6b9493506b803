//! CI smoke test: Ladder in-process on port 0, the bench's load function at
//! a tiny size over every transport path (both WebTransport deliveries,
//! WebSocket, SSE, long poll, short poll; SSE over HTTP/2 and HTTP/3 too),
//! plus idle mode once (every held
//! connection must receive the message published after the hold). Asserts
//! no loss, duplicate or reordering and that figures were produced; no
//! timing assertions.

use std::time::Duration;

use anyhow::Result;
use ladder_bench::clients::Kind;
use ladder_bench::load::{self, LoadSpec};
use ladder_bench::probe::{Peer, Target};
use ladder_testkit::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_tiny_load() -> Result<()> {
    let server = TestServer::spawn_with(|c| c.publish_rate = 0).await?;
    let http = server.addr;
    // The server runs in this process, so /proc figures are ours: fine for
    // checking that they are produced.
    let target = Target::discover(http, Peer::Ladder, Some(std::process::id())).await?;
    assert!(target.wt.is_some(), "WebTransport URL from /api/info");

    for kind in Kind::LADDER {
        let spec = LoadSpec::tiny(kind, 4, 20);
        let r = tokio::time::timeout(Duration::from_secs(30), load::run(&target, &spec)).await??;
        r.print();
        let j = &r.json;
        assert_eq!(r.errors, 0, "{}: {}", kind.name(), j);
        assert_eq!((r.lost, r.dups, r.reorders, r.lagged), (0, 0, 0, 0), "{j}");
        assert_eq!(r.deliveries, 4 * 20, "{j}");
        assert_eq!(r.complete, 4, "{j}");
        assert!(j["latency_ms"]["p99"].as_f64().is_some(), "{j}");
        assert!(j["server_cpu_s"].as_f64().is_some(), "{j}");
        assert!(j["rss_kib_after"].as_u64().is_some(), "{j}");
        assert!(
            j["bytes_out_per_delivery"].as_f64().unwrap_or(0.0) > 0.0,
            "{j}"
        );
        assert!(j["connect_s"].as_f64().is_some(), "{j}");
    }

    let spec = LoadSpec::tiny(Kind::Ws, 10, 0);
    let v = ladder_bench::idle::run(&target, &spec, Duration::from_millis(200)).await?;
    assert_eq!(v["connected"], 10, "{v}");
    assert_eq!(v["server_reports_open"], 10, "{v}");
    assert_eq!(v["received_after_hold"], 10, "{v}");
    assert!(v["kib_per_conn"].as_f64().is_some(), "{v}");

    server.shutdown().await?;
    Ok(())
}

/// The floors run as their own processes (this package's binary): a tiny
/// run of each must finish and report its CPU, and every subscriber of the
/// QUIC floor must receive every line (the TCP floor's readers only drain).
#[test]
fn the_floors_run_and_the_quic_floor_delivers_everything() -> Result<()> {
    let bench = env!("CARGO_BIN_EXE_ladder-bench");
    for extra in [&[][..], &["--quic", "--endpoints", "2"][..]] {
        let out = std::process::Command::new(bench)
            .args(["floor", "--subs", "4", "--rate", "100", "--count", "20"])
            .args(extra)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{extra:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = stdout
            .lines()
            .find_map(|l| l.strip_prefix("JSON "))
            .expect("a JSON line");
        let v: serde_json::Value = serde_json::from_str(json)?;
        assert_eq!(v["deliveries"], 80, "{v}");
        assert!(v["server_cpu_us_per_delivery"].as_f64().is_some(), "{v}");
        if !extra.is_empty() {
            assert_eq!(v["short_streams"], 0, "{v}");
        }
    }
    Ok(())
}

/// SSE over the TLS listeners (what `sse-versions` compares with HTTP/1.1):
/// a tiny load over HTTP/2 and over HTTP/3, clients pinning the server's
/// certificate hash; every message once, in order, and metered per stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_over_http2_and_http3_tiny_load() -> Result<()> {
    let server = TestServer::spawn_with(|c| {
        c.publish_rate = 0;
        c.https = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await?;
    let target = Target::discover(server.addr, Peer::Ladder, Some(std::process::id())).await?;
    assert!(target.tls.is_some(), "TLS listeners from /api/info");
    for kind in [Kind::SseH2, Kind::SseH3] {
        let spec = LoadSpec::tiny(kind, 4, 20);
        let r = tokio::time::timeout(Duration::from_secs(30), load::run(&target, &spec)).await??;
        r.print();
        let j = &r.json;
        assert_eq!(r.errors, 0, "{}: {}", kind.name(), j);
        assert_eq!((r.lost, r.dups, r.reorders, r.lagged), (0, 0, 0, 0), "{j}");
        assert_eq!(r.deliveries, 4 * 20, "{j}");
        assert!(
            j["bytes_out_per_delivery"].as_f64().unwrap_or(0.0) > 0.0,
            "{j}"
        );
    }
    server.shutdown().await?;
    Ok(())
}
