//! Server configuration: one struct, parsed once by clap (flags and their
//! `LADDER_*` environment twins) and passed down by value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::hub::{BackendConfig, Fsync, PresenceConfig};
use crate::stats::Transport;

/// Every setting of the server. `Config::default()` equals running with no
/// flags; tests start from it and override the addresses with port 0.
#[derive(Debug, Clone, Parser)]
#[command(name = "ladder", version, about)]
pub struct Config {
    /// HTTP/1.1 listener (poll, long poll, SSE, WebSocket, API, page).
    #[arg(long, env = "LADDER_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,

    /// UDP address of the HTTP/3 + WebTransport endpoint.
    #[arg(long, env = "LADDER_H3", default_value = "127.0.0.1:4433")]
    pub h3: SocketAddr,

    /// TLS listener serving the same routes over HTTP/1.1 and HTTP/2 (by
    /// ALPN), and HTTP/3 on the UDP port with the same number. Off unless
    /// given (port 0 = pick a free port).
    #[arg(long, env = "LADDER_HTTPS")]
    pub https: Option<SocketAddr>,

    /// PEM certificate chain; with --key, no development certificate is made.
    #[arg(long, env = "LADDER_CERT", requires = "key")]
    pub cert: Option<PathBuf>,

    /// PEM private key for --cert.
    #[arg(long, env = "LADDER_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Where the development certificate is kept.
    #[arg(long, env = "LADDER_CERTS_DIR", default_value = "certs")]
    pub certs_dir: PathBuf,

    /// Directory of the demo page served at `/`.
    #[arg(long, env = "LADDER_WEB_DIR", default_value = "web")]
    pub web_dir: PathBuf,

    /// Messages retained per channel.
    #[arg(long, env = "LADDER_HISTORY", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub history: u32,

    /// Largest message `data`, serialised, in bytes.
    #[arg(long, env = "LADDER_MAX_MESSAGE_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub max_message_bytes: u32,

    /// Most channels held at once; creating one more answers 503.
    #[arg(long, env = "LADDER_MAX_CHANNELS", default_value_t = 100_000)]
    pub max_channels: usize,

    /// Seconds a channel with no subscriber and no publish is kept.
    #[arg(long, env = "LADDER_CHANNEL_IDLE_SECS", default_value_t = 300)]
    pub channel_idle_secs: u64,

    /// Seconds between SSE `: ping` comments and WebSocket pings, sent on
    /// an idle connection so a NAT or proxy never sees it idle for longer
    /// (carriers forget idle flows after 30–60 s). 0 turns them off.
    #[arg(long, env = "LADDER_HEARTBEAT", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub heartbeat: u64,

    /// Most simultaneous TCP connections on the HTTP listener.
    #[arg(long, env = "LADDER_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Most channels one WebSocket or WebTransport stream may subscribe to.
    #[arg(long, env = "LADDER_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    pub max_subscriptions: usize,

    /// Seconds a client may take to send its request headers.
    #[arg(long, env = "LADDER_HEADER_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,

    /// Seconds a write to a subscriber may block before it is cut off as too
    /// slow.
    #[arg(long, env = "LADDER_SEND_TIMEOUT", default_value_t = 30)]
    pub send_timeout: u64,

    /// Seconds allowed for a graceful shutdown before the rest is dropped.
    #[arg(long, env = "LADDER_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// Turn a transport off (repeatable): its routes answer 404 and
    /// `/api/info` leaves it out. Used to demonstrate and test fallback.
    #[arg(long = "disable", env = "LADDER_DISABLE", value_delimiter = ',')]
    pub disable: Vec<Transport>,

    /// Origins allowed to open WebSocket and WebTransport sessions
    /// (repeatable). Default: the HTTP listener's own origin and its
    /// localhost forms. `*` allows any.
    #[arg(
        long = "allowed-origin",
        env = "LADDER_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Shared secret for HS256 JSON Web Tokens; when set (or
    /// --jwt-secret-file), every subscribe and publish needs a token.
    #[arg(
        long,
        env = "LADDER_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_secret_file"
    )]
    pub jwt_secret: Option<String>,

    /// File holding the JWT shared secret (trailing newline ignored).
    #[arg(long, env = "LADDER_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Most TCP connections from one client IP (0 = no limit).
    #[arg(long, env = "LADDER_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: usize,

    /// Most waiting long polls from one client IP (0 = no limit).
    #[arg(long, env = "LADDER_MAX_LONG_POLLS_PER_IP", default_value_t = 200)]
    pub max_long_polls_per_ip: usize,

    /// Publishes per second per WebSocket / WebTransport connection, and per
    /// client IP over HTTP (0 = no limit). Over it: `rate_limited`.
    #[arg(long, env = "LADDER_PUBLISH_RATE", default_value_t = 2000)]
    pub publish_rate: u32,

    /// Most WebTransport sessions from one client IP (0 = no limit).
    #[arg(long, env = "LADDER_WT_MAX_SESSIONS_PER_IP", default_value_t = 1000)]
    pub wt_max_sessions_per_ip: usize,

    /// Most concurrent WebTransport sessions. An idle session holds about
    /// 70 KiB of server memory (QUIC, TLS and HTTP/3 state), so the default
    /// caps that at about 280 MiB.
    #[arg(long, env = "LADDER_WT_MAX_SESSIONS", default_value_t = 4_000)]
    pub wt_max_sessions: usize,

    /// Most concurrent client-opened bidirectional streams per session.
    #[arg(long, env = "LADDER_WT_MAX_STREAMS", default_value_t = 64)]
    pub wt_max_streams: u32,

    /// How WebSocket subscribers get their messages. `uring`: caught-up
    /// sockets are lent to their channel's fan-out, which writes each batch
    /// to all of them with `io_uring` (one system call per 64 sockets; one
    /// write per socket where `io_uring` is refused, or in a build without
    /// the `uring` feature). `send`: the same with one write per socket.
    /// `task`: every socket's own task wakes and writes. Default: `uring`
    /// where built with it, else `send`.
    #[arg(long, env = "LADDER_WS_FANOUT", value_enum, default_value_t = WsFanout::DEFAULT)]
    pub ws_fanout: WsFanout,

    /// Whether connections that open with an event stream or a poll are
    /// served by the lean HTTP/1.1 path (`src/http/lean.rs`) rather than
    /// hyper. `false` sends every request through hyper: the reference the
    /// lean path is tested against, and a way out should it misbehave.
    #[arg(long, env = "LADDER_LEAN_HTTP", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub lean_http: bool,

    /// How WebTransport stream subscribers get their messages. `lend`: a
    /// caught-up stream is lent to its channel's fan-out, which puts each
    /// batch into its send buffer directly. `task`: every stream's own task
    /// wakes and writes.
    #[arg(long, env = "LADDER_WT_FANOUT", value_enum, default_value_t = WtFanout::Lend)]
    pub wt_fanout: WtFanout,

    /// Seconds of silence after which a QUIC connection is closed.
    #[arg(long, env = "LADDER_WT_IDLE_TIMEOUT", default_value_t = 30)]
    pub wt_idle_timeout: u64,

    /// Seconds between QUIC keep-alive packets (0: none).
    #[arg(long, env = "LADDER_WT_KEEP_ALIVE", default_value_t = 10)]
    pub wt_keep_alive: u64,

    /// Kernel buffer, bytes, asked for in each direction of the UDP socket
    /// all sessions share; the kernel caps it at `net.core.rmem_max` /
    /// `wmem_max`. A publish to N sessions sends N packets and gets up to
    /// N acknowledgements back at once: what does not fit is dropped and
    /// resent by QUIC's loss recovery. 0 keeps the system's default.
    #[arg(long, env = "LADDER_WT_UDP_BUFFER", default_value_t = 4 << 20,
          value_parser = clap::value_parser!(u32).range(0..=1 << 30))]
    pub wt_udp_buffer: u32,

    /// Keep every channel's history, offsets and epoch in an embedded
    /// database in this directory, so they survive restarts (durable
    /// backend). Default: memory only.
    #[arg(long, env = "LADDER_DATA_DIR", conflicts_with = "redis")]
    pub data_dir: Option<PathBuf>,

    /// With --data-dir: when a publish counts as durable. `group` shares one
    /// fsync among concurrent publishes; `per-publish` fsyncs each alone.
    /// Either way a publish is acknowledged only after its fsync.
    #[arg(long, env = "LADDER_FSYNC", value_enum, default_value_t = Fsync::Group)]
    pub fsync: Fsync,

    /// With --fsync group: longest extra wait, in ms, for more publishes to
    /// join a commit. 0 = no extra wait: a commit takes every publish queued
    /// while the previous fsync ran (batching without added latency).
    #[arg(long, env = "LADDER_GROUP_COMMIT_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub group_commit_ms: u64,

    /// Share channels with other Ladder nodes through Redis: offsets,
    /// history and fan-out live there. One server: `redis://HOST:PORT[/DB]`.
    /// A Redis Cluster (7+, sharded pub/sub): its seed nodes as
    /// comma-separated URLs, or `redis+cluster://HOST:PORT[,HOST:PORT…]`.
    #[arg(long, env = "LADDER_REDIS")]
    pub redis: Option<String>,

    /// With --redis: seconds a channel's keys live after its last publish
    /// (then it starts afresh under a new epoch, and resuming clients are
    /// told `truncated`). 0 = never expire.
    #[arg(long, env = "LADDER_REDIS_KEY_TTL", default_value_t = 86_400)]
    pub redis_key_ttl: u64,

    /// Most presence members per channel; a client joining beyond it gets
    /// an error and keeps its subscription.
    #[arg(long, env = "LADDER_MAX_PRESENCE", default_value_t = 1000)]
    pub max_presence: usize,

    /// Largest presence `info` a client may send, compact JSON bytes.
    #[arg(long, env = "LADDER_MAX_PRESENCE_INFO", default_value_t = 512)]
    pub max_presence_info: usize,

    /// Seconds a polling client stays present after its last poll; with
    /// --redis also how long a dead node's members linger there.
    #[arg(long, env = "LADDER_PRESENCE_LAPSE", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub presence_lapse: u64,

    /// Run the network lab beside the server: relays that each stand for
    /// one real network (UDP blocked, a proxy without upgrades or with
    /// buffering, a NAT timeout, a network switch, a lossy link), listed
    /// in `/api/info` and offered by the page's Network choice. Inside
    /// `ladder-lab netns -- …`, --http and --h3 given a loopback address
    /// bind every address instead, so lossy-link's wire reaches them.
    #[arg(long, env = "LADDER_LAB")]
    pub lab: bool,

    /// With --lab: seconds a flow may idle before the NAT forgets it.
    #[arg(long, env = "LADDER_LAB_NAT_TIMEOUT", default_value_t = 30.0,
          value_parser = positive_secs)]
    pub lab_nat_timeout: f64,

    /// With --lab: percent of packets the lossy link drops (it runs only
    /// inside `ladder-lab netns -- …`).
    #[arg(long, env = "LADDER_LAB_LOSS", default_value_t = 2.0,
          value_parser = percent)]
    pub lab_loss: f64,

    /// With --lab: a second node's HTTP address, for the round-robin
    /// condition (with --lab-peer-h3).
    #[arg(long, env = "LADDER_LAB_PEER_HTTP", requires = "lab_peer_h3")]
    pub lab_peer_http: Option<SocketAddr>,

    /// With --lab: the second node's QUIC address.
    #[arg(long, env = "LADDER_LAB_PEER_H3", requires = "lab_peer_http")]
    pub lab_peer_h3: Option<SocketAddr>,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a percentage in [0, 100]")),
    }
}

/// See [`Config::ws_fanout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WsFanout {
    /// Lent sockets, written with `io_uring` (cargo feature `uring`).
    Uring,
    /// Lent sockets, one non-blocking write each.
    Send,
    /// No lending: each socket's task writes.
    Task,
}

impl WsFanout {
    /// `uring` where the build has it (cargo feature `uring`), else `send`.
    pub const DEFAULT: Self = if cfg!(feature = "uring") {
        Self::Uring
    } else {
        Self::Send
    };
}

/// See [`Config::wt_fanout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WtFanout {
    /// Lent streams, written by the channel fan-out.
    Lend,
    /// No lending: each stream's task writes.
    Task,
}

impl Default for Config {
    fn default() -> Self {
        Self::parse_from(["ladder"])
    }
}

impl Config {
    /// The log backend the flags select.
    pub fn backend(&self) -> BackendConfig {
        match (&self.data_dir, &self.redis) {
            (_, Some(url)) => BackendConfig::Redis {
                url: url.clone(),
                key_ttl: Duration::from_secs(self.redis_key_ttl),
            },
            (Some(dir), None) => BackendConfig::Durable {
                dir: dir.clone(),
                fsync: self.fsync,
                group_commit: Duration::from_millis(self.group_commit_ms),
            },
            (None, None) => BackendConfig::Memory,
        }
    }

    /// The presence settings.
    pub fn presence(&self) -> PresenceConfig {
        PresenceConfig {
            max_members: self.max_presence,
            max_info_bytes: self.max_presence_info,
            lapse: Duration::from_secs(self.presence_lapse),
        }
    }

    /// Whether a transport is switched on.
    pub fn enabled(&self, t: Transport) -> bool {
        !self.disable.contains(&t)
    }

    /// The heartbeat, `None` when turned off.
    pub fn heartbeat(&self) -> Option<Duration> {
        (self.heartbeat > 0).then(|| Duration::from_secs(self.heartbeat))
    }

    /// The period of the heartbeat timers: the heartbeat, or when it is
    /// off a period no connection outlives (a year; tokio sleeps at most
    /// about two), so the timers need no second shape.
    pub fn heartbeat_period(&self) -> Duration {
        self.heartbeat()
            .unwrap_or(Duration::from_secs(365 * 24 * 3600))
    }

    /// The send timeout as a duration.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout)
    }

    /// The message size limit in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_of_range_udp_buffer_is_refused_with_its_limit() {
        let parse = |v: &str| Config::try_parse_from(["ladder", "--wt-udp-buffer", v]);
        assert_eq!(parse("0").unwrap().wt_udp_buffer, 0);
        assert_eq!(parse("1073741824").unwrap().wt_udp_buffer, 1 << 30);
        let err = parse("2000000000").unwrap_err().to_string();
        assert!(err.contains("--wt-udp-buffer"), "{err}");
        assert!(err.contains("1073741824"), "{err}");
    }
}
