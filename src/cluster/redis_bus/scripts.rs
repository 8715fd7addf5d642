//! The Lua scripts that make each multi-key change atomic in Redis — a room
//! message's id, history and publication; a membership change and its presence
//! announcement — and their invocation for joins and leaves.

use redis::aio::ConnectionManager;

use super::{ClusterError, RedisBus};
use crate::apps::chat::protocol::{PresenceState, RoomName, UserName};
use crate::cluster::keys;

/// `INCR` the id, store the history, publish once; the room's epoch is made
/// if the stream is new, and with a TTL (ARGV[7] ms > 0) messages older than
/// ARGV[8] (ms since the epoch) leave the front of the history.
/// KEYS: id, history, epoch. ARGV: json before the id, json after it, history
/// cap, channel, envelope prefix, a fresh epoch, TTL, cutoff.
pub(super) const PUBLISH_ROOM: &str = r#"
redis.call('SET', KEYS[3], ARGV[6], 'NX')
local id = redis.call('INCR', KEYS[1])
local m = ARGV[1] .. id .. ARGV[2]
local cap = tonumber(ARGV[3])
if cap > 0 then
  redis.call('RPUSH', KEYS[2], m)
  redis.call('LTRIM', KEYS[2], -cap, -1)
  if tonumber(ARGV[7]) > 0 then
    local cutoff = tonumber(ARGV[8])
    while true do
      local first = redis.call('LINDEX', KEYS[2], 0)
      if not first then break end
      local ok, old = pcall(cjson.decode, first)
      if ok and type(old) == 'table' and tonumber(old.ts) and tonumber(old.ts) < cutoff then
        redis.call('LPOP', KEYS[2])
      else
        break
      end
    end
  end
end
local n = redis.call('PUBLISH', ARGV[4], ARGV[5] .. m .. '}')
return {id, n}
"#;

/// Each room's epoch (made if missing) and last id. KEYS: epoch, id, epoch,
/// id… ARGV: a fresh epoch.
pub(super) const HEADS: &str = r#"
local out = {}
for i = 1, #KEYS, 2 do
  redis.call('SET', KEYS[i], ARGV[1], 'NX')
  out[#out + 1] = redis.call('GET', KEYS[i])
  out[#out + 1] = redis.call('GET', KEYS[i + 1]) or '0'
end
return out
"#;

/// Adds `user\tnode` to a room; publishes the join when it is the user's first
/// entry. KEYS: room members, node rooms. ARGV: user, node, `room\tuser`,
/// channel, envelope, registry TTL (ms).
pub(super) const JOIN: &str = r#"
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
local added = redis.call('ZADD', KEYS[1], 0, ARGV[1] .. '\t' .. ARGV[2])
if added == 1 and redis.call('ZLEXCOUNT', KEYS[1], '[' .. ARGV[1] .. '\t', '(' .. ARGV[1] .. '\n') == 1 then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return 1
end
return 0
"#;

/// Removes `user\tnode` from a room; publishes the leave when it was the user's
/// last entry. Idempotent, so a sweep and a late leave never announce twice.
/// KEYS: room members, node rooms. ARGV: user, node, `room\tuser`, channel, envelope.
pub(super) const LEAVE: &str = r#"
redis.call('SREM', KEYS[2], ARGV[3])
local removed = redis.call('ZREM', KEYS[1], ARGV[1] .. '\t' .. ARGV[2])
if removed == 1 and redis.call('ZLEXCOUNT', KEYS[1], '[' .. ARGV[1] .. '\t', '(' .. ARGV[1] .. '\n') == 0 then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return 1
end
return 0
"#;

/// Raises a room's id counter to at least ARGV[1] (after Redis lost it, ids
/// must keep increasing). KEYS: id.
pub(super) const ID_FLOOR: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"#;

impl RedisBus {
    pub(super) async fn run_join(
        &self,
        c: &mut ConnectionManager,
        room: &RoomName,
        user: &UserName,
    ) -> Result<bool, ClusterError> {
        let env = self.presence_envelope(&self.node, room, user, PresenceState::Join)?;
        let n: i64 = self
            .join
            .key(keys::room_members(room.as_str()))
            .key(keys::node_rooms(&self.node))
            .arg(user.as_str())
            .arg(&*self.node)
            .arg(format!("{room}\t{user}"))
            .arg(keys::EVENTS)
            .arg(env)
            .arg(self.registry_ttl())
            .invoke_async(c)
            .await?;
        Ok(n == 1)
    }

    /// Removes `user` of `node` from `room`; the announcement carries `origin`.
    pub(super) async fn run_leave(
        &self,
        c: &mut ConnectionManager,
        node: &str,
        origin: &str,
        room: &RoomName,
        user: &UserName,
    ) -> Result<bool, ClusterError> {
        let env = self.presence_envelope(origin, room, user, PresenceState::Leave)?;
        let n: i64 = self
            .leave
            .key(keys::room_members(room.as_str()))
            .key(keys::node_rooms(node))
            .arg(user.as_str())
            .arg(node)
            .arg(format!("{room}\t{user}"))
            .arg(keys::EVENTS)
            .arg(env)
            .invoke_async(c)
            .await?;
        Ok(n == 1)
    }
}
