//! Presence shared by every node through Redis: one hash per channel,
//! `ladder:{C}:presence` (the braces keep it in the channel's cluster slot,
//! beside its log), with an expiry per member, and the channel's joins and
//! leaves published on `ladder:{C}:presence:events` for every node's
//! watchers (never a message: they take no offset).
//!
//! A field is `<client id>\n<node>` and its value `<deadline ms>\n<info>`.
//! Each node writes only its own fields and pushes their deadlines on
//! every third of the lapse, so a member stays while any node holds it,
//! and when a node dies its fields pass their deadlines. Redis 7.0 has no
//! per-field expiry (`HPEXPIRE` came in 7.4), so the deadline lives in the
//! value and the scripts compare it with Redis's own clock (`TIME`): nodes
//! whose clocks disagree still agree on who has expired. Which script
//! deletes a field, and so tells its leave, is in `scripts`; every node
//! sweeps the channels it watches so a dead node's members are told gone
//! within a sweep of their deadline. The whole hash expires two lapses
//! after its last write, so an abandoned channel leaves nothing.
//!
//! A node's writes for one member are taken in turn ([`RedisPresence::turn`]),
//! so a leave still in flight cannot delete the field of a join that came
//! after it.

mod listen;
mod scripts;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use redis::ConnectionInfo;
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

use self::scripts::Scripts;
use super::member::{ClientId, Info, Member, PresenceError};
use super::registry::Change;
use crate::hub::ChannelName;
use crate::hub::backend::redis::{Commands, Target};

/// How long one Redis call may take before the request fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Locks that take one member's writes in turn; a member maps to one by
/// hash, so unrelated members rarely wait on each other.
const TURNS: usize = 64;

fn key(channel: &ChannelName) -> String {
    format!("ladder:{{{channel}}}:presence")
}

fn unavailable(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(format!("redis: {e}"))
}

/// This node's connection to the shared presence hashes.
pub(crate) struct RedisPresence {
    /// The servers the events may be heard from (tried in turn).
    listen_to: Vec<ConnectionInfo>,
    conn: Commands,
    scripts: Scripts,
    /// Names this node's fields; random per start, so a restarted node does
    /// not take over (or delete) the fields of its previous life.
    node: String,
    lapse: Duration,
    turns: Vec<Mutex<()>>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// Connects to `url`; members expire `lapse` after their node last
    /// wrote them.
    pub(crate) async fn connect(
        url: &str,
        lapse: Duration,
        node: String,
    ) -> Result<Self, PresenceError> {
        // One server or a Cluster, like the log backend (the hash's key
        // carries the channel's hash tag).
        let target = Target::parse(url).map_err(unavailable)?;
        let conn = target.commands().await.map_err(unavailable)?;
        // Events are published with plain PUBLISH, which a Cluster passes
        // to every node: any one node's pub/sub hears every channel's.
        let listen_to = match target {
            Target::Single(info) => vec![info],
            Target::Cluster(seeds) => seeds,
        };
        Ok(Self {
            listen_to,
            conn,
            scripts: Scripts::new(),
            node,
            lapse,
            turns: (0..TURNS).map(|_| Mutex::new(())).collect(),
        })
    }

    /// Waits for `id`'s turn to write in `channel`: hold it across the
    /// Redis write and the registry change it goes with.
    pub(crate) async fn turn(&self, channel: &ChannelName, id: &ClientId) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        (channel, id).hash(&mut h);
        self.turns[(h.finish() % TURNS as u64) as usize]
            .lock()
            .await
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, PresenceError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
    }

    /// Adds `member` from this node unless the channel already has `max`
    /// members across all nodes. Returns whether it was admitted.
    pub(crate) async fn join(
        &self,
        channel: &ChannelName,
        member: &Member,
        max: usize,
    ) -> Result<bool, PresenceError> {
        // `max` of 0 means "unchecked" to the script; a limit of zero
        // admits nobody.
        if max == 0 {
            return Ok(false);
        }
        let mut call = self.scripts.put.prepare_invoke();
        call.key(key(channel))
            .arg(channel.as_str())
            .arg(self.lapse.as_millis() as u64)
            .arg(max)
            .arg(&self.node)
            .arg(member.id.as_str())
            .arg(member.info.as_str());
        Ok(self.invoke::<i64>(&call).await? == 1)
    }

    /// Writes `member` from this node whatever the channel holds (one the
    /// node still holds, whose field was reaped while the node was late).
    pub(crate) async fn rejoin(
        &self,
        channel: &ChannelName,
        member: &Member,
    ) -> Result<(), PresenceError> {
        let mut call = self.scripts.put.prepare_invoke();
        call.key(key(channel))
            .arg(channel.as_str())
            .arg(self.lapse.as_millis() as u64)
            .arg(0)
            .arg(&self.node)
            .arg(member.id.as_str())
            .arg(member.info.as_str());
        self.invoke::<i64>(&call).await.map(drop)
    }

    /// Pushes on the deadlines of this node's fields for `ids` in
    /// `channel`, and reaps the channel's expired members. Returns the ids
    /// whose field was gone.
    pub(crate) async fn refresh(
        &self,
        channel: &ChannelName,
        ids: &[ClientId],
    ) -> Result<Vec<String>, PresenceError> {
        let mut call = self.scripts.refresh.prepare_invoke();
        call.key(key(channel))
            .arg(channel.as_str())
            .arg(self.lapse.as_millis() as u64)
            .arg(&self.node);
        for id in ids {
            call.arg(id.as_str());
        }
        self.invoke(&call).await
    }

    /// Removes this node's field for `id` (other nodes' stay).
    pub(crate) async fn leave(
        &self,
        channel: &ChannelName,
        id: &ClientId,
    ) -> Result<(), PresenceError> {
        let mut call = self.scripts.leave.prepare_invoke();
        call.key(key(channel))
            .arg(channel.as_str())
            .arg(&self.node)
            .arg(id.as_str());
        self.invoke::<i64>(&call).await.map(drop)
    }

    /// Every member of `channel` on any node, ordered by id.
    pub(crate) async fn members(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, PresenceError> {
        let mut call = self.scripts.list.prepare_invoke();
        call.key(key(channel)).arg(channel.as_str());
        let flat: Vec<String> = self.invoke(&call).await?;
        let mut by_id = BTreeMap::new();
        for pair in flat.chunks_exact(2) {
            // Written by a node after checking; a field that no longer
            // parses is skipped rather than failing the whole list.
            if let Ok(id) = ClientId::parse_stored(&pair[0]) {
                by_id.insert(id, Info::trusted(&pair[1]));
            }
        }
        Ok(by_id
            .into_iter()
            .map(|(id, info)| Member { id, info })
            .collect())
    }

    /// Hands every node's joins and leaves to `tell` until `stop`.
    pub(crate) async fn listen(&self, stop: CancellationToken, tell: impl Fn(ChannelName, Change)) {
        listen::run(&self.listen_to, stop, tell).await;
    }
}
