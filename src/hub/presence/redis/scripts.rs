//! The Lua scripts behind shared presence. Each runs atomically in Redis,
//! so a change to a channel's hash and the join or leave it causes are told
//! together, once, whichever node made it.
//!
//! Every script starts by *reaping*: it deletes the fields whose deadline
//! passed (by Redis's clock, `TIME`) and announces a leave for each id
//! left with no live field. A field is deleted by exactly one script, and
//! that script alone decides whether its id is gone, so a dead node's
//! member leaves once however many nodes notice. A join is announced by
//! the script that writes a field for an id that had no live one.
//!
//! Announcements go to the channel's presence events, published as
//! `join|leave \n channel \n id \n info` (see `super::listen`).

use redis::Script;

/// The reaping every script starts with. Expects `KEYS[1]` (the hash) and
/// `ARGV[1]` (the channel's name); defines `now`, `ev` (the events' pub/sub
/// channel), `tell(kind, id, info)` and `reap()`, which returns the live
/// ids with their info.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ev = KEYS[1] .. ':events'
local function tell(kind, id, info)
  redis.call('PUBLISH', ev, kind .. '\n' .. ARGV[1] .. '\n' .. id .. '\n' .. info)
end
local function split(field, value)
  local id = string.match(field, '^(.-)\n')
  local dl, info = string.match(value, '^(%d+)\n(.*)$')
  return id, tonumber(dl), info
end
local function reap()
  local all = redis.call('HGETALL', KEYS[1])
  local live, dead = {}, {}
  for i = 1, #all, 2 do
    local id, dl, info = split(all[i], all[i + 1])
    if id and dl and dl > now then
      live[id] = info
    else
      redis.call('HDEL', KEYS[1], all[i])
      if id then dead[id] = info or '{}' end
    end
  end
  for id, info in pairs(dead) do
    if not live[id] then tell('leave', id, info) end
  end
  return live
end
";

/// Writes this node's field for members, refusing a new member when the
/// channel already has `max` (0 = no check). Announces the joins.
/// KEYS: hash. ARGV: channel, lapse ms, max, node, then id, info pairs.
/// Returns 1, or 0 when refused.
const PUT: &str = r"
local live = reap()
local lapse = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
if max > 0 and not live[ARGV[5]] then
  local n = 0
  for _ in pairs(live) do n = n + 1 end
  if n >= max then return 0 end
end
for i = 5, #ARGV, 2 do
  local id, info = ARGV[i], ARGV[i + 1]
  redis.call('HSET', KEYS[1], id .. '\n' .. ARGV[4], string.format('%d', now + lapse) .. '\n' .. info)
  if not live[id] then
    tell('join', id, info)
    live[id] = info
  end
end
-- Kept a second lapse past the deadlines, so a node that reaps after
-- they pass still finds the fields and tells their leaves.
redis.call('PEXPIRE', KEYS[1], 2 * lapse)
return 1
";

/// Pushes on the deadlines of this node's fields that still exist, and
/// returns the ids whose field is gone (reaped while the node was late):
/// the node joins those again if it still holds them.
/// KEYS: hash. ARGV: channel, lapse ms, node, then ids.
const REFRESH: &str = r"
reap()
local lapse = tonumber(ARGV[2])
local missing = {}
for i = 4, #ARGV do
  local field = ARGV[i] .. '\n' .. ARGV[3]
  local v = redis.call('HGET', KEYS[1], field)
  local _, _, info = split(field, v or '')
  if info then
    redis.call('HSET', KEYS[1], field, string.format('%d', now + lapse) .. '\n' .. info)
  else
    missing[#missing + 1] = ARGV[i]
  end
end
if #ARGV > 3 then redis.call('PEXPIRE', KEYS[1], 2 * lapse) end
return missing
";

/// Deletes this node's field for an id, announcing the leave when no
/// other node holds it. KEYS: hash. ARGV: channel, node, id.
const LEAVE: &str = r"
local field = ARGV[3] .. '\n' .. ARGV[2]
local v = redis.call('HGET', KEYS[1], field)
redis.call('HDEL', KEYS[1], field)
local live = reap()
if v and not live[ARGV[3]] then
  local _, _, info = split(field, v)
  tell('leave', ARGV[3], info or '{}')
end
return 1
";

/// Every live member as id, info pairs, one per id however many nodes
/// hold it. KEYS: hash. ARGV: channel.
const LIST: &str = r"
local live = reap()
local out = {}
for id, info in pairs(live) do
  out[#out + 1] = id
  out[#out + 1] = info
end
return out
";

/// The scripts, each loaded once and called by its SHA.
pub(super) struct Scripts {
    pub(super) put: Script,
    pub(super) refresh: Script,
    pub(super) leave: Script,
    pub(super) list: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            put: with(PUT),
            refresh: with(REFRESH),
            leave: with(LEAVE),
            list: with(LIST),
        }
    }
}
