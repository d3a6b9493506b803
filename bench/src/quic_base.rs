//! The cost of HTTP/3 + WebTransport framing (and of Ladder on top) as a
//! ratio: the same bulk download and echo over a plain quinn bidirectional
//! stream (a tiny raw-quinn server, `ladder-bench quinn-server`, run as its
//! own process so it can be pinned like Ladder) and over a Ladder
//! WebTransport stream.
//!
//! - bulk download: raw quinn writes N bytes; Ladder replays a channel
//!   whose history holds N bytes of large messages (`since=0`).
//! - bulk echo: M payloads of S bytes written and read back concurrently;
//!   Ladder answers `{"op":"echo"}` lines.
//! - echo round trip: one small payload at a time, p50/p99.
//!
//! Both sides use the TLS and transport settings wtransport builds (the
//! raw-quinn configs are taken from wtransport's builders), so the ratio is
//! framing and application, not congestion or crypto settings.
//!
//! The same server also gives fan-out's QUIC floor ([`floor`]): N
//! connections, one stream each, and a 64-byte write per stream per
//! message from one task, which is all quinn needs to do for a Ladder
//! WebTransport delivery. Its server CPU per delivery is what Ladder's
//! WebTransport fan-out cannot beat while it sends one packet per delivery.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use wtransport::quinn;
use wtransport::tls::{Certificate, CertificateChain, PrivateKey};
use wtransport::{ClientConfig, Identity, ServerConfig};

use crate::clients::wt::digest;
use crate::probe::Target;

/// Streams whose first line was `sub`, waiting for a `fanout` line.
#[derive(Default)]
struct Subscribers {
    streams: Mutex<Vec<quinn::SendStream>>,
    joined: tokio::sync::Notify,
}

/// Serves raw quinn on `addr` until killed. A stream whose first line is
/// `get N` receives N bytes; `sub` subscribes the stream; `fanout N RATE
/// COUNT SIZE` waits for N subscribers, writes COUNT lines of SIZE bytes to
/// each at RATE per second, then answers with one JSON line (the server's
/// CPU for it) and ends the subscribers' streams; any other stream is
/// echoed back. Prints `quinn addr=… cert_sha256=…` once ready.
pub async fn serve(addr: SocketAddr) -> Result<()> {
    // Certificate hashes are accepted only for ECDSA certificates valid at
    // most 14 days (the W3C rule wtransport enforces): yesterday + 10 days.
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    let today = crate::sys::now_us() / 86_400_000_000;
    let ymd = |days: u64| {
        let (y, m, d) = civil(days as i64);
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = ymd(today - 1);
    params.not_after = ymd(today + 10);
    let key_pair = rcgen::KeyPair::generate()?;
    let rc = params.self_signed(&key_pair)?;
    let cert = Certificate::from_der(rc.der().to_vec())?;
    let hash = cert.hash();
    let key = PrivateKey::from_der_pkcs8(key_pair.serialize_der());
    let identity = Identity::new(CertificateChain::single(cert), key);
    let cfg = ServerConfig::builder()
        .with_bind_address(addr)
        .with_identity(identity)
        .build();
    let ep = quinn::Endpoint::server(cfg.quic_config().clone(), addr)?;
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    println!("quinn addr={} cert_sha256={hex}", ep.local_addr()?);
    let subs = Arc::new(Subscribers::default());
    while let Some(inc) = ep.accept().await {
        let subs = subs.clone();
        tokio::spawn(async move {
            let Ok(conn) = inc.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(stream(send, recv, subs.clone()));
            }
        });
    }
    Ok(())
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

async fn stream(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    subs: Arc<Subscribers>,
) -> Result<()> {
    let mut recv = BufReader::with_capacity(64 * 1024, recv);
    let first = recv.fill_buf().await?;
    if first.starts_with(b"sub\n") {
        subs.streams.lock().unwrap().push(send);
        subs.joined.notify_one();
        return Ok(());
    }
    if first.starts_with(b"fanout ") {
        let mut line = String::new();
        recv.read_line(&mut line).await?;
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let [n, rate, count, size] = args[..] else {
            bail!("bad fanout line {line:?}")
        };
        let result = fan_out(
            &subs,
            n.parse()?,
            rate.parse()?,
            count.parse()?,
            size.parse()?,
        )
        .await;
        let reply = result.unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        send.write_all(format!("{reply}\n").as_bytes()).await?;
        send.finish()?;
        let _ = send.stopped().await;
        return Ok(());
    }
    if first.starts_with(b"get ") {
        let mut line = String::new();
        recv.read_line(&mut line).await?;
        let n: usize = line[4..].trim().parse()?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            send.write_all(&chunk[..k]).await?;
            left -= k;
        }
    } else {
        tokio::io::copy_buf(&mut recv, &mut send).await?;
    }
    send.finish()?;
    let _ = send.stopped().await;
    Ok(())
}

/// The server side of [`floor`]: waits (at most a minute) for `n`
/// subscribers, then writes `count` rounds of one `size`-byte line to each.
async fn fan_out(
    subs: &Subscribers,
    n: usize,
    rate: f64,
    count: u64,
    size: usize,
) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut streams = loop {
        {
            let mut joined = subs.streams.lock().unwrap();
            if joined.len() >= n {
                break std::mem::take(&mut *joined);
            }
        }
        tokio::time::timeout_at(deadline, subs.joined.notified())
            .await
            .context("the subscribers did not all arrive")?;
    };
    let mut line = vec![b'x'; size.max(1)];
    *line.last_mut().unwrap() = b'\n';
    let line = Bytes::from(line);
    let cpu0 = crate::sys::process_cpu_s();
    let t0 = tokio::time::Instant::now();
    for k in 0..count {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(k as f64 / rate)).await;
        for s in &mut streams {
            s.write_chunk(line.clone()).await?;
        }
    }
    let cpu = crate::sys::process_cpu_s() - cpu0;
    let elapsed = t0.elapsed().as_secs_f64();
    for s in &mut streams {
        s.finish()?;
    }
    let deliveries = count * streams.len() as u64;
    Ok(
        json!({"kind": "quic-floor", "subs": streams.len(), "rate": rate, "count": count,
              "size": size, "deliveries": deliveries, "elapsed_s": elapsed,
              "server_cpu_s": cpu,
              "server_cpu_us_per_delivery": cpu * 1e6 / deliveries.max(1) as f64}),
    )
}

/// A raw-quinn client endpoint that trusts the `quinn-server`'s certificate.
fn quinn_client(hash: &str) -> Result<quinn::Endpoint> {
    let cfg = ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([digest(hash)?])
        .build();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(cfg.quic_config().clone());
    Ok(ep)
}

/// A raw-quinn client connection to the `quinn-server`.
async fn quinn_conn(addr: SocketAddr, hash: &str) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let ep = quinn_client(hash)?;
    let conn = ep.connect(addr, "localhost")?.await?;
    Ok((ep, conn))
}

/// Fan-out's QUIC floor: starts the `quinn-server` (pinned to `cpu`),
/// connects `subs` subscribers over `endpoints` client sockets, has the
/// server write `count` 64-byte lines to each at `rate` per second, and
/// returns the server's JSON with what the subscribers received.
pub async fn floor(
    cpu: Option<&str>,
    subs: usize,
    rate: f64,
    count: u64,
    endpoints: usize,
) -> Result<Value> {
    const SIZE: usize = 64;
    let (addr, hash, _server) = spawn_server(cpu).await?;
    let eps = (0..endpoints.max(1))
        .map(|_| quinn_client(&hash))
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(subs);
    let mut readers = Vec::with_capacity(subs);
    for i in 0..subs {
        let conn = eps[i % eps.len()].connect(addr, "localhost")?.await?;
        let (mut s, mut r) = conn.open_bi().await?;
        s.write_all(b"sub\n").await?;
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while let Some(n) = r.read(&mut buf).await? {
                got += n;
            }
            drop(s);
            anyhow::Ok(got)
        }));
        conns.push(conn);
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let (mut s, r) = conns[0].open_bi().await?;
    s.write_all(format!("fanout {subs} {rate} {count} {SIZE}\n").as_bytes())
        .await?;
    let mut reply = String::new();
    let wait = Duration::from_secs_f64(count as f64 / rate + 120.0);
    tokio::time::timeout(wait, BufReader::new(r).read_line(&mut reply))
        .await
        .context("quinn-server did not answer")??;
    let mut v: Value = serde_json::from_str(&reply)?;
    if let Some(e) = v.get("error") {
        bail!("quinn-server: {e}");
    }
    let want = count as usize * SIZE;
    let mut short = 0;
    for r in readers {
        let got = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .context("a subscriber's stream did not end")???;
        short += usize::from(got != want);
    }
    v["connect_s"] = json!(connect_s);
    v["short_streams"] = json!(short);
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    Ok(v)
}

fn gbit(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

/// Echo `m` payloads of `s` bytes through `(send, recv)`, writing and
/// reading concurrently; returns the elapsed time.
async fn echo_bulk<W, R>(mut send: W, mut recv: R, frame: Vec<u8>, m: usize) -> Result<Duration>
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    R: tokio::io::AsyncRead + Unpin,
{
    let total = frame.len() * m;
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..m {
            send.write_all(&frame).await?;
        }
        anyhow::Ok(send)
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < total {
        let n = recv.read(&mut buf).await?;
        if n == 0 {
            bail!("echo stream ended after {got} of {total} bytes");
        }
        got += n;
    }
    let d = t0.elapsed();
    let _ = writer.await?;
    Ok(d)
}

/// Sequential round trips of one small frame; (p50, p99) in µs.
async fn echo_rtt<W, R>(send: &mut W, recv: &mut R, frame: &[u8], n: usize) -> Result<(u64, u64)>
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin,
{
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut buf = vec![0u8; frame.len()];
    for _ in 0..n {
        let t0 = Instant::now();
        send.write_all(frame).await?;
        recv.read_exact(&mut buf).await?;
        h.saturating_record(t0.elapsed().as_micros() as u64);
    }
    Ok((h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
}

/// The parameters of one baseline run.
#[derive(Debug, Clone)]
pub struct BaseSpec {
    /// Bytes downloaded in bulk.
    pub bulk_bytes: usize,
    /// Payload size for bulk echo and download messages.
    pub payload: usize,
    /// Payloads echoed in bulk.
    pub echoes: usize,
    /// Round trips measured.
    pub rtts: usize,
    /// Interleaved repetitions of the bulk measurements (best is kept).
    pub reps: usize,
}

async fn raw_download(conn: &quinn::Connection, bytes: usize) -> Result<f64> {
    let (mut s, mut r) = conn.open_bi().await?;
    s.write_all(format!("get {bytes}\n").as_bytes()).await?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while let Some(n) = r.read(&mut buf).await? {
        got += n;
    }
    Ok(gbit(got as u64, t0.elapsed()))
}

async fn raw_echo(conn: &quinn::Connection, spec: &BaseSpec) -> Result<f64> {
    let (s, r) = conn.open_bi().await?;
    let d = echo_bulk(s, r, vec![b'x'; spec.payload], spec.echoes).await?;
    Ok(gbit((spec.payload * spec.echoes) as u64, d))
}

/// Replays `channel` (holding `n_msgs` messages) on a new stream.
async fn ladder_download(wt: &wtransport::Connection, channel: &str, n_msgs: usize) -> Result<f64> {
    let (mut s, r) = wt.open_bi().await?.await?;
    s.write_all(
        format!("{{\"op\":\"subscribe\",\"channel\":\"{channel}\",\"since\":0}}\n").as_bytes(),
    )
    .await?;
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).await?; // subscribed
    let t0 = Instant::now();
    let (mut bytes, mut seen) = (0u64, 0);
    while seen < n_msgs {
        line.clear();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 {
            bail!("ladder stream ended after {seen} messages");
        }
        bytes += n as u64;
        if line.starts_with(b"{\"op\":\"message\"") {
            seen += 1;
        }
    }
    let g = gbit(bytes, t0.elapsed());
    let _ = s.finish().await;
    Ok(g)
}

async fn ladder_echo(wt: &wtransport::Connection, spec: &BaseSpec) -> Result<f64> {
    let (s, r) = wt.open_bi().await?.await?;
    let frame = format!(
        "{{\"op\":\"echo\",\"data\":\"{}\"}}\n",
        "x".repeat(spec.payload.saturating_sub(24))
    );
    let d = echo_bulk(s, r, frame.clone().into_bytes(), spec.echoes).await?;
    Ok(gbit((frame.len() * spec.echoes) as u64, d))
}

/// Runs the baseline against a raw-quinn server and Ladder; one JSON value.
/// Bulk figures are the best of `spec.reps` interleaved repetitions (raw,
/// Ladder, raw, Ladder, …): on a shared machine the best run is the one
/// least disturbed by others.
pub async fn compare(
    quinn_addr: SocketAddr,
    quinn_hash: &str,
    ladder: &Target,
    spec: &BaseSpec,
) -> Result<Value> {
    let (_ep, conn) = quinn_conn(quinn_addr, quinn_hash).await?;
    let (url, hash) = ladder.wt.clone().context("Ladder offers no WebTransport")?;
    let wep = crate::clients::wt::endpoints(1, 1, &hash)?.remove(0);
    let wt = wep.connect(url.as_str()).await?;

    // Fill a channel with the bulk bytes, as `payload`-sized messages.
    let channel = crate::load::fresh_channel("bulk");
    let n_msgs = spec.bulk_bytes.div_ceil(spec.payload).max(1);
    let http = reqwest::Client::new();
    let body = format!("\"{}\"", "x".repeat(spec.payload.saturating_sub(2)));
    for _ in 0..n_msgs {
        let r = http
            .post(format!(
                "http://{}/api/channels/{channel}/messages",
                ladder.http
            ))
            .body(body.clone())
            .send()
            .await?;
        if r.status() != 201 {
            bail!("bulk publish answered {}", r.status());
        }
    }

    let (mut q_dl, mut l_dl, mut q_echo, mut l_echo) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..spec.reps.max(1) {
        q_dl.push(raw_download(&conn, n_msgs * spec.payload).await?);
        l_dl.push(ladder_download(&wt, &channel, n_msgs).await?);
        q_echo.push(raw_echo(&conn, spec).await?);
        l_echo.push(ladder_echo(&wt, spec).await?);
    }
    let (mut s, mut r) = conn.open_bi().await?;
    let q_rtt = echo_rtt(&mut s, &mut r, &[b'x'; 64], spec.rtts).await?;
    let (mut s, mut r) = wt.open_bi().await?.await?;
    let small = b"{\"op\":\"echo\",\"data\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n";
    let l_rtt = echo_rtt(&mut s, &mut r, small, spec.rtts).await?;
    conn.close(0u32.into(), b"done");
    wt.close(0u32.into(), b"done");

    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (qd, ld, qe, le) = (best(&q_dl), best(&l_dl), best(&q_echo), best(&l_echo));
    Ok(json!({
        "kind": "quinn-baseline",
        "bulk_bytes": spec.bulk_bytes, "payload": spec.payload, "echoes": spec.echoes,
        "reps": spec.reps,
        "raw_quinn": {"download_gbit_s": qd, "echo_gbit_s": qe,
                      "download_runs": q_dl, "echo_runs": q_echo,
                      "rtt_us_p50": q_rtt.0, "rtt_us_p99": q_rtt.1},
        "ladder_wt": {"download_gbit_s": ld, "echo_gbit_s": le,
                      "download_runs": l_dl, "echo_runs": l_echo,
                      "rtt_us_p50": l_rtt.0, "rtt_us_p99": l_rtt.1},
        "ratio": {"download": ld / qd, "echo": le / qe,
                  "rtt_p50": l_rtt.0 as f64 / q_rtt.0.max(1) as f64},
    }))
}

/// Starts `ladder-bench quinn-server` (this executable) pinned like the
/// server; returns its address and certificate hash. It dies with us.
pub async fn spawn_server(
    cpu: Option<&str>,
) -> Result<(std::net::SocketAddr, String, tokio::process::Child)> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe()?;
    let mut cmd = match cpu {
        Some(c) => {
            let mut c2 = tokio::process::Command::new("taskset");
            c2.args(["-c", c]).arg(&exe);
            c2
        }
        None => tokio::process::Command::new(&exe),
    };
    let mut child = cmd
        .arg("quinn-server")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .context("quinn-server printed nothing")?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
    };
    let (Some(addr), Some(hash)) = (field("addr="), field("cert_sha256=")) else {
        bail!("bad quinn-server line {line:?}")
    };
    Ok((addr.parse()?, hash, child))
}
