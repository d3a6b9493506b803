//! Which Redis a node talks to — one server, or a Redis Cluster — and the
//! command connection to it, shared by the log backend and presence.
//!
//! `--redis` takes one URL (`redis://HOST:PORT[/DB]`: one server, as
//! before), several comma-separated URLs (the seeds of a Cluster), or
//! `redis+cluster://HOST:PORT[,HOST:PORT…]` (the same, shorter). A Cluster's
//! commands go through redis-rs's cluster client, which routes each script
//! by its keys' hash tag and follows `MOVED`, `ASK` and `TRYAGAIN` with a
//! bounded number of retries.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use super::connect::tcp_settings;

/// How long one Redis call may take before the request fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Retries of a cluster command redirected (`MOVED`, `ASK`) or told to
/// wait (`TRYAGAIN`, during a slot migration); with the waits below they
/// fit within [`CALL_TIMEOUT`].
const CLUSTER_RETRIES: u32 = 6;

/// Where `--redis` points.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One Redis server.
    Single(ConnectionInfo),
    /// A Redis Cluster, known by some of its nodes.
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    /// Reads a `--redis` value (see the module doc).
    pub(crate) fn parse(spec: &str) -> Result<Self, String> {
        let info = |url: &str| {
            url.into_connection_info()
                .map(|i| i.set_tcp_settings(tcp_settings()))
                .map_err(|e| format!("{url}: {e}"))
        };
        if let Some(seeds) = spec.strip_prefix("redis+cluster://") {
            let seeds: Vec<ConnectionInfo> = seeds
                .split(',')
                .map(|s| info(&format!("redis://{}", s.trim())))
                .collect::<Result<_, _>>()?;
            return Ok(Self::Cluster(seeds));
        }
        if spec.contains(',') {
            let seeds = spec
                .split(',')
                .map(|s| info(s.trim()))
                .collect::<Result<_, _>>()?;
            return Ok(Self::Cluster(seeds));
        }
        Ok(Self::Single(info(spec)?))
    }

    /// True for a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Opens the command connection (reconnecting on its own).
    pub(crate) async fn commands(&self) -> Result<Commands, String> {
        let conn = match self {
            Self::Single(info) => {
                let client = Client::open(info.clone()).map_err(|e| e.to_string())?;
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CALL_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                let conn = ConnectionManager::new_with_config(client, cfg);
                Commands::Single(timed(conn).await?)
            }
            Self::Cluster(seeds) => {
                let client = ClusterClientBuilder::new(seeds.clone())
                    .tcp_settings(tcp_settings())
                    .connection_timeout(CALL_TIMEOUT)
                    .response_timeout(CALL_TIMEOUT)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(20)
                    .max_retry_wait(400)
                    .build()
                    .map_err(|e| e.to_string())?;
                Commands::Cluster(timed(client.get_async_connection()).await?)
            }
        };
        Ok(conn)
    }
}

async fn timed<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    tokio::time::timeout(CALL_TIMEOUT * 2, fut)
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())
}

/// The connection commands and scripts go through: to one server, or
/// routed by key across a Cluster. Cheap to clone (both multiplex).
#[derive(Clone)]
pub(crate) enum Commands {
    /// One server.
    Single(ConnectionManager),
    /// A Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn one_url_is_one_server_and_lists_are_clusters() {
        assert!(
            !Target::parse("redis://127.0.0.1:6379")
                .unwrap()
                .is_cluster()
        );
        let Target::Cluster(seeds) =
            Target::parse("redis+cluster://127.0.0.1:7000, 127.0.0.1:7001").unwrap()
        else {
            panic!("a cluster");
        };
        assert_eq!(seeds.len(), 2);
        let Target::Cluster(seeds) =
            Target::parse("redis://127.0.0.1:7000,redis://127.0.0.1:7001").unwrap()
        else {
            panic!("a cluster");
        };
        assert_eq!(seeds.len(), 2);
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("http://x,y").is_err());
    }
}
