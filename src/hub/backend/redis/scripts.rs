//! What a channel is in Redis — its key names — and the Lua scripts that
//! read and change it atomically. Every script starts with [`PRELUDE`],
//! which is where expiry and rollbacks turn into a new epoch.
//!
//! Entry points: [`Scripts::append`] and [`Scripts::load`] build the calls,
//! [`messages`] reads the stream entries they return;
//! `mod.rs` runs them.

use std::sync::Arc;

use redis::{Script, ScriptInvocation};

use super::BackendError;
use crate::hub::{ChannelName, Epoch};
use crate::protocol::{Data, Message};

/// The keys of one channel: head, epoch, log, seen, seen-index (all with
/// the channel's hash tag, so under Cluster they share a slot).
pub(super) fn keys(name: &ChannelName) -> [String; 5] {
    ["head", "epoch", "log", "seen", "seenq"].map(|k| format!("ladder:{{{name}}}:{k}"))
}

/// The pub/sub channel a channel's publishes are announced on; it shares
/// the channel's hash tag, so under Cluster it lives on the same shard.
pub(super) fn fanout_channel(name: &ChannelName) -> String {
    format!("ladder:{{{name}}}:fan")
}

/// Most idempotency keys Redis remembers per channel.
pub(super) const KEYS_PER_CHANNEL: usize = 10_000;

/// The start of every script: makes sure the channel has a head and an
/// epoch, and that the epoch is not one whose offsets Redis is reusing.
///
/// - No head or no epoch: the channel is new, or expired, or Redis lost it.
///   It starts afresh: new epoch `ARGV[1]`, head 0, no history, every key
///   expiring after `ARGV[4]` ms (0 = never).
/// - The head is below the one the caller saw in the same epoch (`ARGV[2]`,
///   `ARGV[3]`): a restore from an older snapshot, a failover to a lagging
///   replica, a hand edit. The epoch rotates to `ARGV[1]` and history above
///   the head is dropped, so reused offsets are never taken for lost ones.
///
/// Leaves `epoch`, `head` and `ttl` set. KEYS: head, epoch, log.
const PRELUDE: &str = r"
local epoch = redis.call('GET', KEYS[2])
local head = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[4])
if not head or not epoch then
  epoch = ARGV[1]
  head = 0
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], 0)
  redis.call('DEL', KEYS[3])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
else
  head = tonumber(head)
  if epoch == ARGV[2] and head < tonumber(ARGV[3]) then
    epoch = ARGV[1]
    redis.call('SET', KEYS[2], epoch, 'KEEPTTL')
    while true do
      local above = redis.call('XRANGE', KEYS[3], string.format('0-%d', head + 1), '+', 'COUNT', 100)
      if #above == 0 then break end
      for _, e in ipairs(above) do
        redis.call('XDEL', KEYS[3], e[1])
      end
    end
    -- A stream remembers its highest ID even once deleted; XADD must
    -- be able to use head + 1 again.
    if redis.call('EXISTS', KEYS[3]) == 1 then
      redis.call('XSETID', KEYS[3], string.format('0-%d', head))
    end
  end
end
";

/// Numbers, stores, trims and announces one message, and renews every
/// key's expiry — unless its idempotency key (`ARGV[9]`, `''` for none) was
/// seen within the window, in which case it returns the first publish's
/// `{epoch, offset}` and appends nothing. Idempotency keys live in a hash
/// (key → `epoch offset`) indexed by a sorted set (key → first use, ms);
/// expired ones are pruned a few at a time, and past the per-channel limit
/// the oldest go first.
/// KEYS: head, epoch, log, seen, seen-index. ARGV 5–12: history, ts, data,
/// channel, key, window ms, limit, and `PUBLISH` (one server) or
/// `SPUBLISH` (Cluster: sharded pub/sub, on the channel's own shard).
const APPEND: &str = r"
local key = ARGV[9]
if key ~= '' then
  local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. (tonumber(ARGV[6]) - tonumber(ARGV[10])), 'LIMIT', 0, 64)
  if #old > 0 then
    redis.call('HDEL', KEYS[4], unpack(old))
    redis.call('ZREM', KEYS[5], unpack(old))
  end
  local seen = redis.call('HGET', KEYS[4], key)
  if seen then
    local sp = string.find(seen, ' ', 1, true)
    return {string.sub(seen, 1, sp - 1), tonumber(string.sub(seen, sp + 1))}
  end
end
local off = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], string.format('0-%d', off), 't', ARGV[6], 'd', ARGV[7])
redis.call(ARGV[12], 'ladder:{' .. ARGV[8] .. '}:fan', ARGV[8] .. '\n' .. epoch .. '\n' .. string.format('%d', off) .. '\n' .. ARGV[6] .. '\n' .. ARGV[7])
if key ~= '' then
  redis.call('HSET', KEYS[4], key, epoch .. ' ' .. string.format('%d', off))
  redis.call('ZADD', KEYS[5], ARGV[6], key)
  local over = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[11])
  if over > 0 then
    local gone = redis.call('ZPOPMIN', KEYS[5], over)
    for i = 1, #gone, 2 do
      redis.call('HDEL', KEYS[4], gone[i])
    end
  end
end
if ttl > 0 then
  for i = 1, 5 do
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return {epoch, off}
";

/// A consistent snapshot of a channel: epoch, head and up to `ARGV[5]`
/// entries — the newest, or those from offset `ARGV[6]` on. Reading does
/// not renew expiry (a channel lives `--redis-key-ttl` past its last
/// publish). KEYS: head, epoch, log.
const LOAD: &str = r"
local entries
if ARGV[6] == '' then
  entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[5])
else
  entries = redis.call('XRANGE', KEYS[3], '0-' .. ARGV[6], '+', 'COUNT', ARGV[5])
end
return {epoch, head, entries}
";

/// What the caller knows of a channel, for [`PRELUDE`]'s checks.
pub(super) struct Seen<'a> {
    /// The epoch to start with if the channel is new or must rotate.
    pub(super) fresh: &'a Epoch,
    /// The epoch and head this node holds, if it holds the channel.
    pub(super) held: Option<(&'a Epoch, u64)>,
    /// `--redis-key-ttl` in ms; 0 = keys never expire.
    pub(super) ttl_ms: u64,
}

/// The compiled scripts (sent by SHA, loaded on first use).
pub(super) struct Scripts {
    append: Script,
    load: Script,
    /// The command announcing a publish: `SPUBLISH` under Cluster.
    publish: &'static str,
}

impl Scripts {
    pub(super) fn new(cluster: bool) -> Self {
        Self {
            append: Script::new(&format!("{PRELUDE}{APPEND}")),
            load: Script::new(&format!("{PRELUDE}{LOAD}")),
            publish: if cluster { "SPUBLISH" } else { "PUBLISH" },
        }
    }

    fn prepare<'s>(
        script: &'s Script,
        name: &ChannelName,
        n_keys: usize,
        seen: &Seen<'_>,
    ) -> ScriptInvocation<'s> {
        let mut call = script.prepare_invoke();
        for k in keys(name).into_iter().take(n_keys) {
            call.key(k);
        }
        let (epoch, head) = seen.held.map_or(("", 0), |(e, h)| (e.as_str(), h));
        call.arg(seen.fresh.as_str())
            .arg(epoch)
            .arg(head)
            .arg(seen.ttl_ms);
        call
    }

    /// The call publishing `data` (at server time `ts`) on `name`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn append<'s>(
        &'s self,
        name: &ChannelName,
        seen: &Seen<'_>,
        history: usize,
        ts: u64,
        data: &str,
        key: &str,
        window_ms: u64,
    ) -> ScriptInvocation<'s> {
        let mut call = Self::prepare(&self.append, name, 5, seen);
        call.arg(history)
            .arg(ts)
            .arg(data)
            .arg(name.as_str())
            .arg(key)
            .arg(window_ms)
            .arg(KEYS_PER_CHANNEL)
            .arg(self.publish);
        call
    }

    /// The call loading `count` entries of `name`: the newest, or those
    /// from offset `from` on.
    pub(super) fn load<'s>(
        &'s self,
        name: &ChannelName,
        seen: &Seen<'_>,
        count: usize,
        from: Option<u64>,
    ) -> ScriptInvocation<'s> {
        let mut call = Self::prepare(&self.load, name, 3, seen);
        call.arg(count)
            .arg(from.map(|f| f.to_string()).unwrap_or_default());
        call
    }
}

/// One stream entry as Redis returns it: ID and `[t, ts, d, data]`.
pub(super) type RawEntry = (String, Vec<String>);

/// Turns stream entries into messages (IDs are `0-<offset>`).
pub(super) fn messages(
    name: &ChannelName,
    epoch: &Epoch,
    raw: Vec<RawEntry>,
) -> Result<Vec<Arc<Message>>, BackendError> {
    let bad = |what: &str| {
        BackendError::Unavailable(format!("channel {name}: malformed stream entry ({what})"))
    };
    raw.into_iter()
        .map(|(id, fields)| {
            let offset = id
                .strip_prefix("0-")
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| bad("id"))?;
            let [t, ts, d, data] = <[String; 4]>::try_from(fields).map_err(|_| bad("fields"))?;
            if t != "t" || d != "d" {
                return Err(bad("field names"));
            }
            let ts = ts.parse().map_err(|_| bad("ts"))?;
            let data = Data::parse(data.as_bytes(), usize::MAX).map_err(|_| bad("data"))?;
            Ok(Arc::new(Message::new(
                name.clone(),
                epoch.clone(),
                offset,
                ts,
                &data,
            )))
        })
        .collect()
}
