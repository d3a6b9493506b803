//! Real packet loss for the `lossy-link` condition: kernel drops by an
//! nftables rule, which TCP must recover by retransmitting (a user-space
//! relay cannot make TCP retransmit, so it never fakes loss).
//!
//! Changing the firewall needs `CAP_NET_ADMIN`. A user and network
//! namespace (`unshare -Urn`) grants it without root, over a loopback of
//! its own. So a lossy run puts everything that talks across the lossy
//! ports (server, relays, clients, browser) in one namespace:
//!
//! - [`in_namespace`] wraps a command so it runs in a fresh namespace with
//!   its loopback up;
//! - inside it, [`Loss::apply`] drops packets to and from the given ports;
//! - [`check_privilege`] says, without changing anything, whether this
//!   process may do that, and why not.
//!
//! The lab applies loss only inside a namespace [`in_namespace`] made
//! (it marks it with [`NAMESPACE_ENV`]): run as root on a host, nft would
//! otherwise change the machine's own firewall, and a table left behind
//! would drop packets of whatever later uses those ports.

use std::io::Write;
use std::process::{Command, Stdio};

/// Why loss cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `nft` or `unshare` could not be started.
    #[error("cannot run `{program}`: {source} (install nftables and util-linux)")]
    Spawn {
        /// The program that did not start.
        program: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The program ran and refused; its own words follow.
    #[error("`{program}` failed: {stderr}")]
    Refused {
        /// The program that refused.
        program: &'static str,
        /// What it said.
        stderr: String,
    },
    /// This process is not in a namespace of its own.
    #[error(
        "dropping real packets needs CAP_NET_ADMIN in a network namespace of its own, so this machine's firewall is never touched: start inside `ladder-lab netns -- …` (unshare -Urn, no root needed; it sets {NAMESPACE_ENV}=1)"
    )]
    NotInNamespace,
    /// Nothing to apply the loss to, or a share outside 0–100 %.
    #[error("bad loss rule: {0}")]
    Bad(String),
}

/// Random packet loss on some local ports, both directions.
#[derive(Debug, Clone)]
pub struct Loss {
    /// Share of packets dropped, in percent (0–100, fractions allowed).
    pub percent: f64,
    /// Ports whose packets (to them and from them, TCP and UDP) may drop.
    pub ports: Vec<u16>,
}

/// Set to `1` in the environment of a command [`in_namespace`] starts.
pub const NAMESPACE_ENV: &str = "LADDER_LAB_NETNS";

/// The nftables table this module owns; removed and recreated on apply.
const TABLE: &str = "ladder_lab";

impl Loss {
    /// The nftables ruleset that drops `percent` of the packets to or from
    /// `ports`. Loss is decided per packet on input, where every packet
    /// arrives once, even on loopback: the sender believes it sent the
    /// packet and finds out only as over a real link (duplicate ACKs, a
    /// timeout). A drop on output would instead fail the send locally,
    /// which TCP notices at once and which is not loss on a link.
    pub fn ruleset(&self) -> Result<String, NetnsError> {
        if self.ports.is_empty() {
            return Err(NetnsError::Bad("no ports".into()));
        }
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(NetnsError::Bad(format!(
                "{} % is not a share",
                self.percent
            )));
        }
        // Per hundred thousand, so 0.5 % and the like are exact enough.
        let per_100k = (self.percent * 1000.0).round() as u32;
        let ports = self
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Ok(format!(
            "table inet {TABLE} {{\n  chain lossy {{\n    type filter hook input priority 0; policy accept;\n    \
             meta l4proto {{ tcp, udp }} th dport {{ {ports} }} numgen random mod 100000 < {per_100k} counter drop\n    \
             meta l4proto {{ tcp, udp }} th sport {{ {ports} }} numgen random mod 100000 < {per_100k} counter drop\n  }}\n}}\n"
        ))
    }

    /// Installs the rules in this process's network namespace (replacing
    /// any earlier ones of this module). Needs `CAP_NET_ADMIN` there: run
    /// inside [`in_namespace`].
    pub fn apply(&self) -> Result<(), NetnsError> {
        let rules = self.ruleset()?;
        // Deleting first makes apply repeatable; a missing table is fine.
        let _ = nft(&format!("delete table inet {TABLE}\n"));
        nft(&rules)
    }
}

/// Removes the rules [`Loss::apply`] installed, if any.
pub fn clear() -> Result<(), NetnsError> {
    let listed = nft_args(&["list", "tables"])?;
    if listed
        .lines()
        .any(|l| l.trim() == format!("table inet {TABLE}"))
    {
        nft(&format!("delete table inet {TABLE}\n"))?;
    }
    Ok(())
}

/// Whether this process runs in a namespace [`in_namespace`] made and may
/// change its firewall. The error says why not.
pub fn check_privilege() -> Result<(), NetnsError> {
    if !inside() {
        return Err(NetnsError::NotInNamespace);
    }
    nft_args(&["list", "tables"]).map(|_| ())
}

/// Whether this process runs inside a namespace [`in_namespace`] made.
pub fn inside() -> bool {
    std::env::var_os(NAMESPACE_ENV).is_some_and(|v| v == "1")
}

/// For a test that needs a namespace: runs test `name` of the current test
/// binary again inside a fresh one ([`in_namespace`]), alone and with its
/// output shown. `Ok` with that output when it ran and passed; `Err` with
/// the output (or why it could not start) otherwise, so the caller's
/// assertion shows what happened inside.
pub fn rerun_test_inside(name: &str) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no test binary path: {e}"))?;
    let exe = exe.to_str().ok_or("the test binary path is not UTF-8")?;
    let out = in_namespace(exe, &["--exact", name, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare: {e} (util-linux; scripts/setup installs it)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains("1 passed") {
        Ok(text)
    } else {
        Err(text)
    }
}

/// `program args…` wrapped to run in a new user and network namespace
/// (`unshare -Urn`) whose loopback is up, with the MTU of an Ethernet
/// link (1500) and no segmentation offload, so a megabyte is hundreds of
/// packets on the wire, each of which may be lost, rather than a few
/// 64 KiB ones. Everything inside shares that
/// loopback and nothing else; [`Loss::apply`] works there.
pub fn in_namespace(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-Urn",
        "sh",
        "-c",
        r#"ip link set lo mtu 1500 gso_max_size 1500 gso_max_segs 1 up && exec "$@""#,
        "ladder-netns",
        program,
    ]);
    cmd.args(args);
    cmd.env(NAMESPACE_ENV, "1");
    cmd
}

/// Whether `unshare -Urn` works on this machine (user namespaces allowed,
/// `ip` and `nft` usable inside). The error says what failed.
pub fn namespaces_available() -> Result<(), NetnsError> {
    let out = in_namespace("nft", &["list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            program: "unshare",
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Refused {
            program: "unshare",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn nft(script: &str) -> Result<(), NetnsError> {
    let spawn = |source| NetnsError::Spawn {
        program: "nft",
        source,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Refused {
            program: "nft",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn nft_args(args: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            program: "nft",
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Refused {
            program: "nft",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
