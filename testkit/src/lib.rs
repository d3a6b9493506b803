//! `ladder-testkit`: the clients and server fixtures that the integration
//! tests (`tests/it/`), the soak (`examples/soak.rs`) and the bench
//! (`bench/`) share, so each rung's client exists once.
//!
//! # Layout
//!
//! - [`server`]: [`TestServer`], the real server in this process on
//!   loopback port 0, with an HTTP client for the API routes.
//! - [`process`]: [`LadderProcess`], the `ladder` binary as a child process
//!   (port 0 or fixed ports, so it can be restarted in place), its start-up
//!   line read back.
//! - [`net`]: TCP connections from a chosen 127.0.0.x source address, free
//!   ports.
//! - [`ws`]: [`Ws`], a WebSocket client speaking Ladder's JSON ops; load
//!   options (source address, small buffers) for the bench.
//! - [`wt`]: [`Wt`] sessions that pin the served certificate hash, and
//!   [`Lines`], one bidirectional stream of JSON lines; endpoint options
//!   (keep-alive, idle timeout, bound socket with large buffers).
//! - [`http`]: [`Sse`], an event-stream reader, and [`poll_until`].
//! - [`soak`]: the fault-injecting soak engine, built on the clients above.
//!
//! Every wait is bounded: by [`WAIT`] unless a client is given its own
//! bound. Everything talks to loopback only.

pub mod http;
pub mod net;
pub mod process;
pub mod server;
pub mod soak;
pub mod ws;
pub mod wt;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

pub use http::{Block, Sse, SseEvent, poll_until};
pub use process::LadderProcess;
pub use server::TestServer;
pub use ws::Ws;
pub use wt::{End, Lines, Wt};

/// The longest any single step may wait unless told otherwise. A bound
/// against hangs, not a performance figure: generous, because CI runs the
/// whole suite (Chromium and redis-server included) on two cores at once.
pub const WAIT: Duration = Duration::from_secs(60);

/// Awaits `fut`, failing with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    within_for(WAIT, what, fut).await
}

/// Awaits `fut`, failing with `what` if it takes longer than `bound`.
pub async fn within_for<T>(bound: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(bound, fut)
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

/// A fresh directory of its own (certificates, data, logs), under the
/// system's temporary directory.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ladder-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Something with an HTTP base URL (`http://127.0.0.1:PORT`): a server in
/// this process, a child process, or the URL itself.
pub trait Base {
    /// `http://HOST:PORT`, no trailing slash.
    fn base(&self) -> &str;

    /// The WebSocket URL, `ws://HOST:PORT/api/ws`.
    fn ws_url(&self) -> String {
        format!("{}/api/ws", self.base().replacen("http", "ws", 1))
    }
}

impl Base for str {
    fn base(&self) -> &str {
        self
    }
}

impl Base for String {
    fn base(&self) -> &str {
        self
    }
}

impl<T: Base + ?Sized> Base for std::sync::Arc<T> {
    fn base(&self) -> &str {
        (**self).base()
    }
}

/// The offsets of a list of message objects.
pub fn offsets(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["offset"].as_u64().unwrap_or(0))
        .collect()
}

/// Messages as (offset, data) pairs, for comparing what rungs saw.
pub fn pairs(messages: &[Value]) -> Vec<(u64, Value)> {
    messages
        .iter()
        .map(|m| (m["offset"].as_u64().unwrap_or(0), m["data"].clone()))
        .collect()
}
