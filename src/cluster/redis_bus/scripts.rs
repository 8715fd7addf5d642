//! The Lua scripts that make each multi-key change atomic in Redis — a room
//! message's id, history and publication; a membership change and its presence
//! announcement — and their invocation for joins and leaves.
//!
//! Every script touches the keys and the channel of one room only (one hash
//! tag), so on Redis Cluster it runs on that room's shard; the publish
//! command is an argument (`PUBLISH`, or `SPUBLISH` for sharded channels).
//! The node's own registry set of memberships lives on the node's shard and
//! is written beside the script: before a join, after a leave, so a sweeper
//! always finds every membership (removing one twice is harmless).

use crate::redis_conn::RedisConn;

use super::{ClusterError, RedisBus};
use crate::apps::chat::protocol::{PresenceState, RoomName, UserName};
use crate::cluster::keys;

/// `INCR` the id, store the history, publish once; the room's epoch is made
/// if the stream is new, and with a TTL (ARGV[7] ms > 0) messages older than
/// ARGV[8] (ms since the epoch) leave the front of the history. The room's
/// three keys expire together ARGV[10] ms (`cluster.room_ttl`; 0: never)
/// after its last message, so rooms a client made and left do not fill
/// Redis; one made again starts a new epoch.
/// Within the epoch the publishing node knows (ARGV[12]), the id is above
/// ARGV[11], the highest id that node has given out or seen in the room: a
/// counter that never saw the ids the node gave out alone during an outage,
/// or one Redis lost while the epoch stayed, would hand out one of those
/// again. A new epoch (made here, or one the node has not seen) counts from
/// its own start: recovery wants a stream's ids without gaps.
/// KEYS: id, history, epoch. ARGV: json before the id, json after it, history
/// cap, channel, envelope prefix, a fresh epoch, TTL, cutoff, publish command,
/// room TTL, the node's floor, the node's epoch.
pub(super) const PUBLISH_ROOM: &str = r#"
local fresh = redis.call('SET', KEYS[3], ARGV[6], 'NX')
local id = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[11])
if id <= floor and not fresh and redis.call('GET', KEYS[3]) == ARGV[12] then
  id = floor + 1
  redis.call('SET', KEYS[1], id)
end
local m = ARGV[1] .. string.format('%d', id) .. ARGV[2]
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
local room_ttl = tonumber(ARGV[10])
if room_ttl > 0 then
  for i = 1, 3 do
    redis.call('PEXPIRE', KEYS[i], room_ttl)
  end
end
local n = redis.call(ARGV[9], ARGV[4], ARGV[5] .. m .. '}')
return {id, n}
"#;

/// Each room's epoch (made if missing, expiring after the room TTL when it
/// is not 0) and last id. KEYS: epoch, id, epoch, id… ARGV: a fresh epoch,
/// the room TTL in ms.
pub(super) const HEADS: &str = r#"
local out = {}
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS, 2 do
  if ttl > 0 then
    redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ttl)
  else
    redis.call('SET', KEYS[i], ARGV[1], 'NX')
  end
  out[#out + 1] = redis.call('GET', KEYS[i])
  out[#out + 1] = redis.call('GET', KEYS[i + 1]) or '0'
end
return out
"#;

/// Adds `user\tnode` to a room; publishes the join when it is the user's first
/// entry. KEYS: room members. ARGV: user, node, channel, envelope, publish
/// command.
pub(super) const JOIN: &str = r#"
local added = redis.call('ZADD', KEYS[1], 0, ARGV[1] .. '\t' .. ARGV[2])
if added == 1 and redis.call('ZLEXCOUNT', KEYS[1], '[' .. ARGV[1] .. '\t', '(' .. ARGV[1] .. '\n') == 1 then
  redis.call(ARGV[5], ARGV[3], ARGV[4])
  return 1
end
return 0
"#;

/// Removes `user\tnode` from a room; publishes the leave when it was the user's
/// last entry. Idempotent, so a sweep and a late leave never announce twice.
/// KEYS: room members. ARGV: user, node, channel, envelope, publish command.
pub(super) const LEAVE: &str = r#"
local removed = redis.call('ZREM', KEYS[1], ARGV[1] .. '\t' .. ARGV[2])
if removed == 1 and redis.call('ZLEXCOUNT', KEYS[1], '[' .. ARGV[1] .. '\t', '(' .. ARGV[1] .. '\n') == 0 then
  redis.call(ARGV[5], ARGV[3], ARGV[4])
  return 1
end
return 0
"#;

/// Deletes a dead node's memberships set (KEYS[2]) unless the node beats
/// again (its alive key, KEYS[1], is back): a node that came back while it
/// was swept keeps what it re-registered. Returns 1 when deleted.
pub(super) const FORGET_DEAD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[2])
return 1
"#;

/// Raises a room's id counter to at least ARGV[1] (after Redis lost it, ids
/// must keep increasing), expiring after the room TTL ARGV[2] ms as a
/// message would make it (0: never). KEYS: id.
pub(super) const ID_FLOOR: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then
  local ttl = tonumber(ARGV[2])
  if ttl > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
end
return 0
"#;

impl RedisBus {
    pub(super) async fn run_join(
        &self,
        c: &mut RedisConn,
        room: &RoomName,
        user: &UserName,
    ) -> Result<bool, ClusterError> {
        let node = &*self.instance;
        let _: () = redis::pipe()
            .sadd(keys::node_rooms(node), format!("{room}\t{user}"))
            .ignore()
            .query_async(c)
            .await?;
        let env = self.presence_envelope(node, room, user, PresenceState::Join)?;
        let n: i64 = self
            .join
            .key(keys::room_members(room.as_str()))
            .arg(user.as_str())
            .arg(node)
            .arg(keys::room_channel(room.as_str()))
            .arg(env)
            .arg(c.publish_command())
            .invoke_async(c)
            .await?;
        Ok(n == 1)
    }

    /// Removes `user` of `node` from `room`; the announcement carries `origin`.
    pub(super) async fn run_leave(
        &self,
        c: &mut RedisConn,
        node: &str,
        origin: &str,
        room: &RoomName,
        user: &UserName,
    ) -> Result<bool, ClusterError> {
        let env = self.presence_envelope(origin, room, user, PresenceState::Leave)?;
        let n: i64 = self
            .leave
            .key(keys::room_members(room.as_str()))
            .arg(user.as_str())
            .arg(node)
            .arg(keys::room_channel(room.as_str()))
            .arg(env)
            .arg(c.publish_command())
            .invoke_async(c)
            .await?;
        let _: i64 = redis::cmd("SREM")
            .arg(keys::node_rooms(node))
            .arg(format!("{room}\t{user}"))
            .query_async(c)
            .await?;
        Ok(n == 1)
    }
}
