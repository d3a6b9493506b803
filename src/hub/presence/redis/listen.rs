//! Hears every node's joins and leaves: one pub/sub connection per node,
//! subscribed by pattern to the presence events of every channel, handing
//! each to the node's watchers and pollers. PINGs Redis so a vanished host
//! is noticed, and reconnects with backoff.
//!
//! One pattern rather than a subscription per watched channel: presence
//! events are few next to messages, and a node then never misses a
//! channel's events in the moment it starts watching it. Events published
//! while the connection is down are lost; the member lists are not (they
//! live in the hashes), and every watcher that reconnects starts from one.
//!
//! Entry point: [`run`], driven by `Presence::run`.

use std::time::Duration;

use futures_util::StreamExt;
use redis::{Client, ConnectionInfo};
use tokio_util::sync::CancellationToken;

use super::{CALL_TIMEOUT, unavailable};
use crate::hub::ChannelName;
use crate::hub::presence::member::{ClientId, Info, Member, PresenceError};
use crate::hub::presence::registry::Change;

/// The pattern every channel's presence events match (see `scripts`).
const PATTERN: &str = "ladder:{*}:presence:events";

/// How often the connection is sent a `PING`.
const PING_EVERY: Duration = Duration::from_secs(5);

/// First and longest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Hands every join and leave heard to `tell` until `stop`, from the
/// first of `servers` and, whenever the connection fails, the next.
pub(super) async fn run(
    servers: &[ConnectionInfo],
    stop: CancellationToken,
    tell: impl Fn(ChannelName, Change),
) {
    let mut backoff = BACKOFF_MIN;
    for server in servers.iter().cycle() {
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            r = session(server, &tell, &mut backoff) => r,
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, "presence events from redis interrupted; reconnecting");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn session(
    server: &ConnectionInfo,
    tell: &impl Fn(ChannelName, Change),
    backoff: &mut Duration,
) -> Result<(), PresenceError> {
    let client = Client::open(server.clone()).map_err(unavailable)?;
    let pubsub = bounded(client.get_async_pubsub()).await?;
    let (mut sink, mut messages) = pubsub.split();
    bounded(sink.psubscribe(PATTERN)).await?;
    *backoff = BACKOFF_MIN;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { return Ok(()) };
                match parse(msg.get_payload_bytes()) {
                    Some((channel, change)) => tell(channel, change),
                    None => tracing::warn!("malformed presence event skipped"),
                }
            }
            _ = ping.tick() => {
                let _: redis::Value = bounded(sink.ping()).await?;
            }
        }
    }
}

async fn bounded<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, PresenceError> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
}

/// `join|leave \n channel \n id \n info`, as the scripts write it.
fn parse(payload: &[u8]) -> Option<(ChannelName, Change)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, '\n');
    let (kind, channel, id, info) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let member = Member {
        id: ClientId::parse_stored(id).ok()?,
        info: Info::trusted(info),
    };
    let change = match kind {
        "join" => Change::Join(member),
        "leave" => Change::Leave(member),
        _ => return None,
    };
    Some((ChannelName::parse(channel).ok()?, change))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_as_the_scripts_write_them() {
        let (ch, c) = parse(b"leave\nroom\nann\n{\"n\":1}").unwrap();
        assert_eq!(
            (ch.as_str(), c.kind(), c.member().id.as_str()),
            ("room", "leave", "ann")
        );
        assert_eq!(c.member().info.as_str(), r#"{"n":1}"#);
        assert_eq!(parse(b"join\nroom\nbo\n{}").unwrap().1.kind(), "join");
        for bad in [
            &b"wave\nroom\nann\n{}"[..],
            b"join\nroom\n\n{}",
            b"join\nroom",
            b"\xff",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
