//! The namespace real packet loss needs: the [`wire`](crate::wire) of the
//! `lossy-link` condition (and of the head-of-line bench) drops packets by
//! an nftables rule, which TCP must recover by retransmitting (a user-space
//! relay cannot make TCP retransmit, so the lab never fakes loss).
//!
//! Making a network device and changing the firewall need `CAP_NET_ADMIN`.
//! A user and network namespace (`unshare -Urn`) grants it without root,
//! over a network stack of its own. So a lossy run puts everything that
//! talks across the wire (server, relays, clients, browser) in one
//! namespace:
//!
//! - [`in_namespace`] wraps a command so it runs in a fresh namespace with
//!   its loopback up;
//! - [`check_privilege`] says, without changing anything, whether this
//!   process may change its network there, and why not;
//! - [`rerun_test_inside`] runs a test again inside one.
//!
//! The lab changes the network only inside a namespace [`in_namespace`]
//! made (it marks it with [`NAMESPACE_ENV`]): run as root on a host, nft
//! and ip would otherwise change the machine's own firewall and
//! interfaces.

use std::io::Write;
use std::process::{Command, Stdio};

/// Why the network cannot be changed here.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `nft`, `ip` or `unshare` could not be started.
    #[error(
        "cannot run `{program}`: {source} (install iproute2, nftables and util-linux: scripts/setup)"
    )]
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
    /// A share of loss outside 0–100 %.
    #[error("bad loss rule: {0}")]
    Bad(String),
}

/// Set to `1` in the environment of a command [`in_namespace`] starts.
pub const NAMESPACE_ENV: &str = "LADDER_LAB_NETNS";

/// Whether this process runs in a namespace [`in_namespace`] made and may
/// change its firewall. The error says why not.
pub fn check_privilege() -> Result<(), NetnsError> {
    if !inside() {
        return Err(NetnsError::NotInNamespace);
    }
    run("nft", &["list", "tables"]).map(|_| ())
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
/// loopback and nothing else; [`Wire::start`](crate::wire::Wire::start)
/// works there.
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

/// Loads an nftables script (`nft -f -`) in this process's namespace.
pub(crate) fn nft(script: &str) -> Result<(), NetnsError> {
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

/// Runs `program args…` and returns what it printed, or its refusal.
pub(crate) fn run(program: &'static str, args: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn { program, source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Refused {
            program,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
