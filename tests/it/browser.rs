//! The browser tests: `tests/browser/run.mjs` drives the comparison page
//! and `web/ladder.js` in Debian's headless Chromium (playwright-core),
//! against this crate's own `ladder` binary.
//!
//! They never skip: without `node` or `/usr/bin/chromium` the test fails and
//! says how to install them (`scripts/setup`), so a CI machine that lost its
//! browser cannot pass silently.

use std::path::{Path, PathBuf};
use std::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args…` in the repository root and returns its combined
/// output, or panics with `hint` if it cannot be started at all.
fn run(program: &str, args: &[&str], envs: &[(&str, &str)], hint: &str) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e}. {hint}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn comparison_page_in_headless_chromium() {
    let setup = "Install Node.js, npm and Debian's chromium with `scripts/setup`.";
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the browser tests need Debian's chromium. {setup}"
    );
    let (node_ok, node_version) = run("node", &["--version"], &[], setup);
    assert!(node_ok, "`node --version` failed: {node_version}. {setup}");

    let browser_dir = repo_root().join("tests/browser");
    if !browser_dir.join("node_modules/playwright-core").exists() {
        let (ok, out) = run(
            "npm",
            &["ci", "--prefix", "tests/browser", "--no-audit", "--no-fund"],
            &[("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")],
            setup,
        );
        assert!(ok, "`npm ci --prefix tests/browser` failed:\n{out}");
    }

    let (ok, out) = run(
        "node",
        &["tests/browser/run.mjs"],
        &[("LADDER_BIN", env!("CARGO_BIN_EXE_ladder"))],
        setup,
    );
    println!("{out}");
    assert!(
        ok,
        "browser tests failed (node {}):\n{out}",
        node_version.trim()
    );
}

/// The network lab's scenarios (tests/browser/lab.mjs): the page through
/// `ladder --lab`'s relays — UDP blocked, no upgrade, buffering proxy, NAT
/// timeout with and without heartbeats, a network switch, round-robin over
/// two nodes on a real redis-server, and the page's measured row per
/// network (round-robin's on the two nodes; nat-timeout's with every rung
/// through an idle past the NAT).
#[test]
fn network_lab_in_headless_chromium() {
    let setup = "Install Node.js, npm, Debian's chromium and redis-server with `scripts/setup`.";
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing. {setup}"
    );
    let scenarios = ["lab-fallback", "lab-nat", "lab-switch", "lab-round-robin"];
    let mut args = vec!["tests/browser/run.mjs"];
    args.extend(scenarios);
    let (ok, out) = run(
        "node",
        &args,
        &[("LADDER_BIN", env!("CARGO_BIN_EXE_ladder"))],
        setup,
    );
    println!("{out}");
    assert!(ok, "network lab browser tests failed:\n{out}");
}

/// The lossy-link scenario needs real kernel packet loss, so the server,
/// its lab and Chromium all run inside one user and network namespace
/// (`unshare -Urn`, no root), where the lab installs its nftables rules.
#[test]
fn lossy_link_in_headless_chromium_inside_a_namespace() {
    let setup = "Install Node.js, npm, Debian's chromium, nftables, iproute2 and util-linux with `scripts/setup`.";
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing. {setup}"
    );
    if let Err(e) = ladder_lab::netns::namespaces_available() {
        panic!("cannot make a network namespace with packet loss here: {e}. {setup}");
    }
    let output = ladder_lab::netns::in_namespace("node", &["tests/browser/run.mjs", "lab-lossy"])
        .env("LADDER_BIN", env!("CARGO_BIN_EXE_ladder"))
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare: {e}. {setup}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success(),
        "lossy-link browser test failed:\n{text}"
    );
    assert!(
        text.contains("lab lossy-link"),
        "the scenario did not run:\n{text}"
    );
}
