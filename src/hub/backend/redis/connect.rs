//! How a node connects to Redis: the TCP settings of every connection and
//! the start-up check of Redis's eviction policy (on every master of a
//! Cluster).

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};

use super::CALL_TIMEOUT;

/// Refuses a Redis whose `maxmemory-policy` may evict keys: an evicted
/// `head` restarts a channel's offsets, an evicted `log` loses history that
/// was acknowledged. Only `noeviction` is safe (a full Redis then refuses
/// writes, which Ladder answers with 503). `volatile-*` policies are refused
/// too, since every Ladder key has a TTL. A Redis that does not allow
/// `CONFIG GET` (some managed services) is let through with a warning.
pub(super) async fn check_eviction_policy(conn: &mut impl ConnectionLike) -> Result<(), String> {
    let got: redis::RedisResult<Vec<String>> = tokio::time::timeout(
        CALL_TIMEOUT,
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(conn),
    )
    .await
    .map_err(|_| "CONFIG GET maxmemory-policy was not answered in time".to_owned())?;
    match got.as_deref() {
        Ok([_, policy]) if policy == "noeviction" => Ok(()),
        Ok([_, policy]) => Err(format!(
            "maxmemory-policy is {policy}, which lets Redis evict a channel's keys (its offsets \
             would restart and acknowledged history vanish); set maxmemory-policy noeviction"
        )),
        Ok(_) | Err(_) => {
            tracing::warn!(
                "could not read redis's maxmemory-policy; make sure it is noeviction, or evicted keys will restart channels' offsets"
            );
            Ok(())
        }
    }
}

/// TCP keepalive on every Redis connection: a peer gone without a FIN or
/// RST is dropped by the kernel within about 20 s even when idle (the
/// PING notices sooner on the pub/sub connection), and unacknowledged
/// writes give up after 20 s (`TCP_USER_TIMEOUT`).
pub(super) fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(3))
        .with_retries(3);
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(Duration::from_secs(20))
}
