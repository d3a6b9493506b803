//! Presence shared by every node through Redis: one hash per channel,
//! `ladder:{C}:presence` (the braces keep it in the channel's cluster slot,
//! beside its log), with an expiry per member.
//!
//! A field is `<client id>\n<node>` and its value `<deadline ms>\n<info>`.
//! Each node writes only its own fields and rewrites them every third of
//! the lapse, so a member stays while any node holds it, and when a node
//! dies its fields pass their deadlines and are no longer reported (and
//! are deleted by the next read). Redis 7.0 has no per-field expiry
//! (`HPEXPIRE` came in 7.4), so the deadline lives in the value and the
//! scripts compare it with Redis's own clock (`TIME`): nodes whose clocks
//! disagree still agree on who has expired. The whole hash also expires
//! one lapse after its last write, so an abandoned channel leaves nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Script;

use super::member::{ClientId, Info, Member, PresenceError};
use crate::hub::ChannelName;
use crate::hub::backend::redis::{Commands, Target};

/// How long one Redis call may take before the request fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes this node's fields for some members, refusing a new member when
/// the channel already has `max` (0 = no check, for refreshes).
/// KEYS: hash. ARGV: lapse ms, max, node, then id, info pairs.
const PUT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapse = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
if max > 0 then
  local seen, n = {}, 0
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local id = string.match(all[i], '^(.-)\n')
    local dl = tonumber(string.match(all[i + 1], '^(%d+)\n'))
    if id and dl and dl > now and not seen[id] then
      seen[id] = true
      n = n + 1
    end
  end
  if not seen[ARGV[4]] and n >= max then return 0 end
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i] .. '\n' .. ARGV[3], string.format('%d', now + lapse) .. '\n' .. ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], lapse)
return 1
";

/// Every unexpired field as id, info pairs; expired ones are deleted.
/// KEYS: hash.
const LIST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local id = string.match(all[i], '^(.-)\n')
  local dl, info = string.match(all[i + 1], '^(%d+)\n(.*)$')
  if id and dl and tonumber(dl) > now then
    out[#out + 1] = id
    out[#out + 1] = info
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
";

fn key(channel: &ChannelName) -> String {
    format!("ladder:{{{channel}}}:presence")
}

fn unavailable(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(format!("redis: {e}"))
}

/// This node's connection to the shared presence hashes.
pub(crate) struct RedisPresence {
    conn: Commands,
    put: Script,
    list: Script,
    /// Names this node's fields; random per start, so a restarted node does
    /// not take over (or delete) the fields of its previous life.
    node: String,
    lapse: Duration,
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
        let conn = Target::parse(url)
            .map_err(unavailable)?
            .commands()
            .await
            .map_err(unavailable)?;
        Ok(Self {
            conn,
            put: Script::new(PUT),
            list: Script::new(LIST),
            node,
            lapse,
        })
    }

    async fn call_put(
        &self,
        channel: &ChannelName,
        max: usize,
        members: &[Member],
    ) -> Result<bool, PresenceError> {
        let mut call = self.put.prepare_invoke();
        call.key(key(channel))
            .arg(self.lapse.as_millis() as u64)
            .arg(max)
            .arg(&self.node);
        for m in members {
            call.arg(m.id.as_str()).arg(m.info.as_str());
        }
        let mut conn = self.conn.clone();
        let ok: i64 = tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        Ok(ok == 1)
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
        self.call_put(channel, max, std::slice::from_ref(member))
            .await
    }

    /// Pushes the deadlines of this node's members of `channel` on.
    pub(crate) async fn refresh(
        &self,
        channel: &ChannelName,
        members: &[Member],
    ) -> Result<(), PresenceError> {
        if members.is_empty() {
            return Ok(());
        }
        self.call_put(channel, 0, members).await.map(drop)
    }

    /// Removes this node's field for `id` (other nodes' stay).
    pub(crate) async fn leave(
        &self,
        channel: &ChannelName,
        id: &ClientId,
    ) -> Result<(), PresenceError> {
        let mut conn = self.conn.clone();
        let field = format!("{id}\n{}", self.node);
        let cmd = redis::cmd("HDEL").arg(key(channel)).arg(field).to_owned();
        let _: i64 = tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut conn))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        Ok(())
    }

    /// Every member of `channel` on any node, ordered by id; an id held by
    /// several nodes is one member.
    pub(crate) async fn members(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, PresenceError> {
        let mut conn = self.conn.clone();
        let mut call = self.list.prepare_invoke();
        call.key(key(channel));
        let flat: Vec<String> = tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        let mut by_id = BTreeMap::new();
        for pair in flat.chunks_exact(2) {
            // Written by a node after checking; a field that no longer
            // parses is skipped rather than failing the whole list.
            if let Ok(id) = ClientId::parse(&pair[0]) {
                by_id.insert(id, Info::trusted(&pair[1]));
            }
        }
        Ok(by_id
            .into_iter()
            .map(|(id, info)| Member { id, info })
            .collect())
    }
}
