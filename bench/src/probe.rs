//! The server under test: started here (`--server-bin` for Ladder,
//! `--server-cmd` for a peer, optionally pinned with `taskset`) or given by
//! address and pid. Its CPU time and memory come from `/proc/<pid>/stat` and
//! `/proc/<pid>/status`; Ladder's per-transport counters from `/api/stats`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ladder_testkit::process::{LadderCommand, LadderProcess, Stderr};
use serde_json::Value;
use tokio::process::{Child, Command};

/// Which server speaks on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// Ladder itself.
    Ladder,
    /// `bench/peers/ws-server.js`: Node `ws` 8 speaking Ladder's WebSocket ops.
    Ws,
    /// `bench/peers/sio-server.js`: Socket.IO 4.8 (rooms, `emit`).
    Socketio,
}

impl Peer {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ladder => "ladder",
            Self::Ws => "ws",
            Self::Socketio => "socketio",
        }
    }
}

/// Where to reach the server and how to observe it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The HTTP / WebSocket listener.
    pub http: SocketAddr,
    /// Which server it is.
    pub peer: Peer,
    /// WebTransport session URL and pinned certificate hash (Ladder only).
    pub wt: Option<(String, String)>,
    /// The server's pid, for `/proc` figures.
    pub pid: Option<u32>,
    /// Its TLS listeners, when it runs them (Ladder with `--https`).
    pub tls: Option<TlsTarget>,
}

/// Ladder's TLS listeners, from `/api/info`.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    /// HTTP/1.1 + HTTP/2 (TCP).
    pub https: SocketAddr,
    /// HTTP/3 (UDP).
    pub h3: SocketAddr,
    /// SHA-256 of the certificate they present (the WebTransport one).
    pub cert_sha256: String,
}

impl TlsTarget {
    fn from_info(info: &Value) -> Option<Self> {
        let addr = |k: &str| -> Option<SocketAddr> {
            info["listeners"][k]
                .as_str()?
                .strip_prefix("https://")?
                .parse()
                .ok()
        };
        Some(Self {
            https: addr("https")?,
            h3: addr("h3")?,
            cert_sha256: info["webtransport"]["cert_sha256"].as_str()?.to_owned(),
        })
    }
}

impl Target {
    /// Fills in the WebTransport URL and hash from Ladder's `/api/info`.
    pub async fn discover(http: SocketAddr, peer: Peer, pid: Option<u32>) -> Result<Self> {
        let mut t = Self {
            http,
            peer,
            wt: None,
            pid,
            tls: None,
        };
        if peer == Peer::Ladder {
            let info: Value = reqwest::get(format!("http://{http}/api/info"))
                .await?
                .json()
                .await?;
            let wt = &info["webtransport"];
            if let (Some(u), Some(h)) = (wt["url"].as_str(), wt["cert_sha256"].as_str()) {
                t.wt = Some((u.to_owned(), h.to_owned()));
            }
            t.tls = TlsTarget::from_info(&info);
        }
        Ok(t)
    }

    /// `/api/stats` (Ladder), or `Null` for peers.
    pub async fn stats(&self) -> Value {
        if self.peer != Peer::Ladder {
            return Value::Null;
        }
        async {
            reqwest::get(format!("http://{}/api/stats", self.http))
                .await?
                .json::<Value>()
                .await
        }
        .await
        .unwrap_or(Value::Null)
    }

    /// A `/proc` sample of the server, if its pid is known.
    pub fn sample(&self) -> Option<ProcSample> {
        self.pid.and_then(|p| ProcSample::read(p).ok())
    }
}

/// CPU time and memory of a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime, seconds (all threads).
    pub cpu_s: f64,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Peak resident set so far (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// When taken.
    pub at: Option<Instant>,
}

impl ProcSample {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn read(pid: u32) -> Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the `(comm)`, which may hold spaces.
        let rest = stat.rsplit_once(')').context("stat format")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; f[0] is field 3.
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let (rss_kib, hwm_kib) = (field("VmRSS:"), field("VmHWM:"));
        Ok(Self {
            cpu_s: ticks as f64 / hz,
            rss_kib,
            hwm_kib,
            at: Some(Instant::now()),
        })
    }
}

/// A server process started by the tool; killed when dropped.
#[derive(Debug)]
pub struct Spawned {
    proc: Proc,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its pid (`taskset`'s, which execs the server).
    pub pid: u32,
}

#[derive(Debug)]
enum Proc {
    /// The test kit's `ladder` process.
    Ladder(LadderProcess),
    /// A peer command.
    Peer(Child),
}

/// A free TCP port on loopback.
fn free_port() -> Result<u16> {
    ladder_testkit::net::free_port(false)
}

fn pinned(cpu: Option<&str>, program: &str) -> Command {
    match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c, program]);
            cmd
        }
        None => Command::new(program),
    }
}

/// The Ladder flags a load run needs on top of the defaults: no per-IP or
/// total caps below what the run opens, no publish rate limit.
pub const LADDER_LOAD_FLAGS: &[&str] = &[
    "--max-connections",
    "200000",
    "--max-connections-per-ip",
    "0",
    "--max-long-polls-per-ip",
    "0",
    "--publish-rate",
    "0",
    "--wt-max-sessions-per-ip",
    "0",
    "--wt-max-sessions",
    "100000",
    "--max-message-bytes",
    "1048576",
];

impl Spawned {
    /// Starts the Ladder binary on free ports (the test kit's
    /// [`LadderCommand`]) with [`LADDER_LOAD_FLAGS`] and waits for its
    /// start-up line.
    pub async fn ladder(bin: &str, cpu: Option<&str>, extra: &[String]) -> Result<Self> {
        let certs = std::env::temp_dir().join(format!("ladder-bench-certs-{}", std::process::id()));
        let proc = LadderCommand::new(bin)
            .certs_dir(certs)
            .args(LADDER_LOAD_FLAGS)
            .args(extra)
            .cpu(cpu)
            .env("RUST_LOG", "warn")
            .stderr(Stderr::Inherit)
            .start_wait(Duration::from_secs(30))
            .start()
            .await?;
        Ok(Self {
            http: proc.http,
            pid: proc.pid,
            proc: Proc::Ladder(proc),
        })
    }

    /// Starts a peer command (`node bench/peers/…`) with `PORT` set and
    /// waits until it accepts TCP connections.
    pub async fn command(cmdline: &str, cpu: Option<&str>) -> Result<Self> {
        let port = free_port()?;
        let mut parts = cmdline.split_whitespace();
        let program = parts.next().context("empty --server-cmd")?;
        let mut cmd = pinned(cpu, program);
        cmd.args(parts)
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {cmdline}"))?;
        let http: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(http).await.is_err() {
            if Instant::now() > deadline {
                bail!("{cmdline} did not listen on {http}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = child.id().context("pid")?;
        Ok(Self {
            proc: Proc::Peer(child),
            http,
            pid,
        })
    }

    /// Stops the server (SIGTERM, then kill after 5 s).
    pub async fn stop(self) {
        match self.proc {
            Proc::Ladder(p) => p.terminate().await,
            Proc::Peer(mut child) => {
                // SAFETY: sending a signal to our own child.
                unsafe {
                    libc::kill(self.pid as i32, libc::SIGTERM);
                }
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }
}
