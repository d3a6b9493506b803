//! The real server in this process: [`TestServer`] binds loopback port 0
//! (HTTP and QUIC), runs until shut down, and carries an HTTP client for
//! the API routes.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use ladder::config::Config;
use ladder::context::Ctx;
use ladder::server::Server;
use ladder::transport::Fanouts;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Base, temp_dir, within};

/// A running server on loopback with OS-chosen ports.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The HTTP listener's address.
    pub addr: std::net::SocketAddr,
    /// Shared server state, for looking at counters.
    pub ctx: Ctx,
    /// The channels' fan-outs, for seeing which run.
    pub fanouts: Fanouts,
    /// A pooled HTTP client for the API routes.
    pub http: reqwest::Client,
    token: CancellationToken,
    handle: JoinHandle<()>,
}

impl Base for TestServer {
    fn base(&self) -> &str {
        &self.base
    }
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn spawn() -> Result<Self> {
        Self::spawn_with(|_| {}).await
    }

    /// A server with the configuration adjusted by `f` (the addresses start
    /// as loopback port 0 and the certificates in a fresh directory).
    pub async fn spawn_with(f: impl FnOnce(&mut Config)) -> Result<Self> {
        let mut cfg = Config {
            http: "127.0.0.1:0".parse()?,
            h3: "127.0.0.1:0".parse()?,
            certs_dir: temp_dir("certs"),
            ..Config::default()
        };
        f(&mut cfg);
        let server = Server::bind(cfg).await?;
        let addr = server.http_addr();
        let base = format!("http://{addr}");
        let ctx = server.ctx().clone();
        let fanouts = server.fanouts().clone();
        let token = CancellationToken::new();
        let handle = tokio::spawn(server.run(token.clone()));
        Ok(Self {
            base,
            addr,
            ctx,
            fanouts,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            token,
            handle,
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        Base::ws_url(self)
    }

    /// A token that, cancelled, shuts the server down (as ctrl-c would).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Starts a graceful shutdown and waits for the server to finish.
    pub async fn shutdown(self) -> Result<()> {
        self.token.cancel();
        within("server shutdown", self.handle).await??;
        Ok(())
    }

    /// Starts a graceful shutdown without waiting.
    pub fn begin_shutdown(&self) {
        self.token.cancel();
    }

    /// Waits until the server's `run` returns.
    pub async fn finished(self) -> Result<()> {
        within("server to finish", self.handle).await??;
        Ok(())
    }

    /// Publishes over HTTP; returns the ack.
    pub async fn publish(&self, channel: &str, data: Value) -> Result<Value> {
        publish(&self.http, &self.base, channel, &data).await
    }

    /// Publishes the numbers `1..=n` to `channel`; returns the epoch of the
    /// last ack.
    pub async fn publish_count(&self, channel: &str, n: u64) -> Result<String> {
        let mut epoch = String::new();
        for i in 1..=n {
            let ack = self.publish(channel, i.into()).await?;
            epoch = ack["epoch"].as_str().context("epoch")?.to_owned();
        }
        Ok(epoch)
    }

    /// GETs a path and returns status and JSON body.
    pub async fn get_json(&self, path: &str) -> Result<(u16, Value)> {
        let resp = within(path, self.http.get(self.url(path)).send()).await??;
        let status = resp.status().as_u16();
        Ok((status, within(path, resp.json()).await??))
    }

    /// The `/api/stats` row of one transport.
    pub async fn stats(&self, transport: &str) -> Result<Value> {
        let (_, body) = self.get_json("/api/stats").await?;
        Ok(body["transports"][transport].clone())
    }

    /// Waits until `/api/stats` satisfies `ok` for `transport`.
    pub async fn wait_stats(&self, transport: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
        within("stats condition", async {
            loop {
                let row = self.stats(transport).await?;
                if ok(&row) {
                    return Ok::<_, anyhow::Error>(row);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await?
    }
}

/// `POST {base}/api/channels/{channel}/messages` with `data`; the ack, or an
/// error naming the status when it is not 201.
pub async fn publish(
    http: &reqwest::Client,
    base: &str,
    channel: &str,
    data: &Value,
) -> Result<Value> {
    let url = format!("{base}/api/channels/{channel}/messages");
    let resp = within("publish", http.post(url).json(data).send()).await??;
    if resp.status() != 201 {
        bail!("publish answered {}: {}", resp.status(), resp.text().await?);
    }
    Ok(within("publish ack", resp.json()).await??)
}
