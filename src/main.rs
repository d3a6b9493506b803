//! `ladder`: parse the configuration, start the server, stop on SIGINT or
//! SIGTERM.

use anyhow::Context as _;
use clap::Parser;
use ladder::config::Config;
use ladder::server::Server;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ladder=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let server = Server::bind(cfg).await.context("starting ladder")?;
    println!("{}", server.banner());
    server.run(shutdown).await;
    Ok(())
}

/// Cancels `token` on the first SIGINT or SIGTERM.
async fn signals(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    token.cancel();
}
