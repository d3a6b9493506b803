//! The syscall floor of fan-out on this machine: a plain blocking server
//! (`ladder-bench floor-server`, its own pinned process) that writes a
//! prebuilt 66-byte WebSocket text frame to each of N sockets, one `send()`
//! per socket per message (or `batch` frames coalesced per `send()`),
//! against N reading clients. Server CPU per delivery here is what no
//! server doing one write per delivery can beat on this kernel.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::sys::{process_cpu_s as cpu_s, src_ip, tcp_connect};

/// A 66-byte unmasked text frame (2-byte header + 64 bytes of payload).
fn frame() -> Vec<u8> {
    let mut f = vec![0x81, 64];
    f.extend(std::iter::repeat_n(b'x', 64));
    f
}

/// Serves: accepts `subs` connections, then writes `count` rounds at
/// `rate` rounds/s, `batch` frames per write; prints one JSON line.
pub fn serve(subs: usize, rate: f64, count: u64, batch: usize) -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    println!("floor addr={}", l.local_addr()?);
    let mut socks = Vec::with_capacity(subs);
    for _ in 0..subs {
        let (s, _) = l.accept()?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    let one = frame();
    let buf: Vec<u8> = one.repeat(batch.max(1));
    let cpu0 = cpu_s();
    let t0 = Instant::now();
    let rounds = count / batch.max(1) as u64;
    for k in 0..rounds {
        let due = t0 + Duration::from_secs_f64(k as f64 * batch as f64 / rate);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        for s in &mut socks {
            s.write_all(&buf)?;
        }
    }
    let cpu = cpu_s() - cpu0;
    let deliveries = rounds * batch as u64 * subs as u64;
    println!(
        "{}",
        json!({"kind": "floor", "subs": subs, "rate": rate, "batch": batch,
               "deliveries": deliveries, "elapsed_s": t0.elapsed().as_secs_f64(),
               "server_cpu_s": cpu, "server_cpu_us_per_delivery": cpu * 1e6 / deliveries.max(1) as f64})
    );
    // Let the clients drain before the sockets close.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// Starts the floor server (pinned to `cpu`), connects `subs` readers, and
/// returns its JSON line.
pub async fn run(
    cpu: Option<&str>,
    subs: usize,
    rate: f64,
    count: u64,
    batch: usize,
) -> Result<Value> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe()?;
    let mut cmd = match cpu {
        Some(c) => {
            let mut t = tokio::process::Command::new("taskset");
            t.args(["-c", c]).arg(&exe);
            t
        }
        None => tokio::process::Command::new(&exe),
    };
    let mut child = cmd
        .args(["floor-server", "--subs", &subs.to_string()])
        .args(["--rate", &rate.to_string(), "--count", &count.to_string()])
        .args(["--batch", &batch.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = lines
        .next_line()
        .await?
        .context("floor-server printed nothing")?;
    let addr: SocketAddr = first
        .strip_prefix("floor addr=")
        .context("floor banner")?
        .parse()?;
    let mut readers = Vec::with_capacity(subs);
    for i in 0..subs {
        let mut s = tcp_connect(src_ip(i, 4), addr).await?;
        readers.push(tokio::spawn(async move {
            let mut b = vec![0u8; 16 * 1024];
            while let Ok(n) = s.read(&mut b).await {
                if n == 0 {
                    break;
                }
            }
        }));
    }
    let line = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
        .await??
        .context("floor-server result")?;
    for r in readers {
        r.abort();
    }
    let _ = child.wait().await;
    Ok(serde_json::from_str(&line)?)
}
