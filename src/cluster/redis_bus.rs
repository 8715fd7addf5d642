//! [`RedisBus`]: the chat [`Bus`] over Redis (spec §5).
//!
//! * Room message: one Lua script does `INCR` (the id), `RPUSH`+`LTRIM` (the
//!   history) and one `PUBLISH` on [`keys::EVENTS`] — constant work whatever the
//!   room size or node count. The publishing node fans out to its own members
//!   at once, under a per-room lock so local delivery follows id order; every
//!   node *skips envelopes whose origin is itself* on receipt, so nothing is
//!   delivered twice. Per-sender order holds everywhere (one sender publishes
//!   in order; Redis delivers one channel in order).
//! * DMs and pushes: an id from `INCR`, local delivery, and one publication
//!   only when the recipient (or the echoed sender) is on another node.
//! * Presence: membership is a sorted set of `user\tnode` per room; Lua scripts
//!   add/remove an entry and publish `join`/`leave` only on the user's first /
//!   last entry, so each transition is announced exactly once cluster-wide.
//! * Liveness: a heartbeat task refreshes this node's alive key (TTL three
//!   beats) and the TTL of its registry sets, and sweeps dead nodes (claim by
//!   `SET NX`; the removal script itself is idempotent).
//! * Outage: while Redis is down every call falls back to this node's mirror
//!   of its own users and memberships, so local clients keep chatting; the
//!   heartbeat retries with backoff, and on recovery re-registers the mirror.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Script, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::keys;
use super::ClusterError;
use crate::apps::chat::bus::{Bus, BusError, Deliver, OnlineUser, Published};
use crate::apps::chat::protocol::{
    now_ms, ChatMessage, DirectMessage, Event, Presence, PresenceState, RoomName, UserName,
};
use crate::config::ClusterConfig;

/// Per-room publish locks (hashed), keeping local delivery in id order.
const STRIPES: usize = 64;
/// Registry sets of a node outlive its alive key so a sweeper still finds them.
const REGISTRY_TTL_BEATS: u32 = 10;
/// Entries written per pipeline when re-registering.
const BATCH: usize = 500;

/// `INCR` the id, store the history, publish once. KEYS: id, history.
/// ARGV: json before the id, json after it, history cap, channel, envelope prefix.
const PUBLISH_ROOM: &str = r#"
local id = redis.call('INCR', KEYS[1])
local m = ARGV[1] .. id .. ARGV[2]
local cap = tonumber(ARGV[3])
if cap > 0 then
  redis.call('RPUSH', KEYS[2], m)
  redis.call('LTRIM', KEYS[2], -cap, -1)
end
local n = redis.call('PUBLISH', ARGV[4], ARGV[5] .. m .. '}')
return {id, n}
"#;

/// Adds `user\tnode` to a room; publishes the join when it is the user's first
/// entry. KEYS: room members, node rooms. ARGV: user, node, `room\tuser`,
/// channel, envelope, registry TTL (ms).
const JOIN: &str = r#"
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
const LEAVE: &str = r#"
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
const ID_FLOOR: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"#;

/// What travels on [`keys::EVENTS`]. `o` is the origin node ("" for sweeper
/// announcements, which every node delivers).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Envelope {
    Msg {
        o: String,
        msg: ChatMessage,
    },
    Presence {
        o: String,
        p: Presence,
    },
    Users {
        o: String,
        users: Vec<UserName>,
        dm: DirectMessage,
    },
}

/// This node's own users and memberships: the fallback while Redis is down
/// and what is re-registered when it returns.
#[derive(Default)]
struct Mirror {
    users: HashSet<UserName>,
    rooms: HashSet<(RoomName, UserName)>,
    /// Highest message id seen per room (ids during an outage continue from it).
    last_ids: HashMap<RoomName, u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct RedisBus {
    node: Arc<str>,
    history_cap: usize,
    beat: Duration,
    conn: ConnectionManager,
    sink: OnceLock<Weak<dyn Deliver>>,
    mirror: Mutex<Mirror>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// False while Redis is unreachable: calls use the mirror without waiting.
    up: AtomicBool,
    /// `None` when Redis is up, else why not (for `/readyz`).
    status: watch::Sender<Option<String>>,
    local_dm_seq: AtomicU64,
    /// Heartbeat ticks (two per beat).
    ticks: AtomicU64,
    publish_room: Script,
    join: Script,
    leave: Script,
    id_floor: Script,
}

/// The message's JSON split around its id, so the publish script can insert
/// the id it assigns (`before .. id .. after`). Names never contain `"id":`
/// unescaped and the id follows the text, so the last match is the field.
fn split_at_id(msg: &ChatMessage) -> Result<(String, String), ClusterError> {
    let mut probe = msg.clone();
    probe.id = u64::MAX;
    let json = serde_json::to_string(&probe)?;
    let marker = format!("\"id\":{}", u64::MAX);
    let at = json
        .rfind(&marker)
        .ok_or_else(|| ClusterError::Reply("message JSON without id".into()))?;
    let id_key = "\"id\":".len();
    Ok((
        json[..at + id_key].to_string(),
        json[at + marker.len()..].to_string(),
    ))
}

fn resp3_url(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisBus {
    /// Builds the bus (connecting lazily) and starts its push and heartbeat
    /// tasks, which stop when `stop` is cancelled.
    pub fn start(
        cfg: &ClusterConfig,
        node: &str,
        history_cap: usize,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, ClusterError> {
        let url = resp3_url(&cfg.redis);
        let client = redis::Client::open(url.as_str()).map_err(|source| ClusterError::Url {
            url: cfg.redis.clone(),
            source,
        })?;
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let timeout = cfg.heartbeat.max(Duration::from_millis(100));
        let mcfg = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(cfg.heartbeat)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = ConnectionManager::new_lazy_with_config(client, mcfg)?;
        let (status, _) = watch::channel(Some("redis: connecting".to_string()));
        let bus = Arc::new(Self {
            node: Arc::from(node),
            history_cap,
            beat: cfg.heartbeat,
            conn,
            sink: OnceLock::new(),
            mirror: Mutex::new(Mirror::default()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            up: AtomicBool::new(false),
            status,
            local_dm_seq: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            publish_room: Script::new(PUBLISH_ROOM),
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            id_floor: Script::new(ID_FLOOR),
        });
        tokio::spawn(bus.clone().run_pushes(push_rx, stop.clone()));
        tokio::spawn(bus.clone().run_heartbeat(stop));
        Ok(bus)
    }

    /// `None` while Redis is reachable, else the reason (for `/readyz` and
    /// `wsgate_cluster_redis_up`).
    pub fn status(&self) -> watch::Receiver<Option<String>> {
        self.status.subscribe()
    }

    fn sink(&self) -> Option<Arc<dyn Deliver>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn set_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(node = %self.node, "cluster: redis is up");
        }
        self.status.send_if_modified(|s| s.take().is_some());
    }

    fn set_down(&self, e: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(node = %self.node, error = %e, "cluster: redis unreachable; serving local clients only");
        }
        let reason = format!("redis unreachable: {e}");
        self.status.send_if_modified(|s| {
            let changed = s.is_none();
            *s = Some(reason);
            changed
        });
    }

    /// Runs `f` against Redis unless it is known to be down; a failure marks it
    /// down. `None` means "use the fallback".
    async fn try_redis<T, F>(&self, f: F) -> Option<T>
    where
        F: std::future::Future<Output = Result<T, ClusterError>>,
    {
        if !self.is_up() {
            return None;
        }
        match f.await {
            Ok(v) => Some(v),
            Err(e) if e.is_unreachable() => {
                self.set_down(&e);
                None
            }
            Err(e) => {
                // A bad reply, not an outage: serve this call locally and let
                // the heartbeat judge Redis's health.
                tracing::warn!(node = %self.node, error = %e, "cluster: redis call failed");
                None
            }
        }
    }

    fn registry_ttl(&self) -> u64 {
        ms(self.beat * REGISTRY_TTL_BEATS)
    }

    fn stripe(&self, room: &RoomName) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    fn note_id(&self, room: &RoomName, id: u64) {
        let mut m = lock(&self.mirror);
        let e = m.last_ids.entry(room.clone()).or_insert(0);
        *e = (*e).max(id);
    }

    fn presence_envelope(
        &self,
        origin: &str,
        room: &RoomName,
        user: &UserName,
        state: PresenceState,
    ) -> Result<String, ClusterError> {
        Ok(serde_json::to_string(&Envelope::Presence {
            o: origin.to_string(),
            p: Presence {
                room: room.clone(),
                user: user.clone(),
                state,
            },
        })?)
    }

    fn deliver_presence(&self, room: &RoomName, user: &UserName, state: PresenceState) {
        let ev = Event::encode(&Presence {
            room: room.clone(),
            user: user.clone(),
            state,
        });
        if let (Some(s), Ok(ev)) = (self.sink(), ev) {
            s.to_room(room, &ev);
        }
    }

    // ---- pub/sub receipt ---------------------------------------------------------

    async fn run_pushes(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<PushInfo>,
        stop: CancellationToken,
    ) {
        loop {
            let push = tokio::select! {
                _ = stop.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            match push.kind {
                PushKind::Message => {
                    if let Some(Value::BulkString(payload)) = push.data.get(1) {
                        self.on_envelope(payload);
                    }
                }
                PushKind::Disconnection => self.set_down(&"connection closed"),
                _ => {}
            }
        }
    }

    fn on_envelope(&self, payload: &[u8]) {
        let env: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: undecodable envelope");
                return;
            }
        };
        let Some(sink) = self.sink() else { return };
        match env {
            Envelope::Msg { o, msg } => {
                self.note_id(&msg.room, msg.id);
                if *o == *self.node {
                    return;
                }
                if let Ok(ev) = Event::msg(&msg) {
                    sink.to_room(&msg.room, &ev);
                }
            }
            Envelope::Presence { o, p } => {
                if *o == *self.node {
                    return;
                }
                if let Ok(ev) = Event::encode(&p) {
                    sink.to_room(&p.room, &ev);
                }
            }
            Envelope::Users { o, users, dm } => {
                if *o == *self.node {
                    return;
                }
                if let Ok(ev) = Event::encode(&dm) {
                    let refs: Vec<&UserName> = users.iter().collect();
                    sink.to_users(&refs, &ev);
                }
            }
        }
    }

    // ---- heartbeat, re-registration, sweeper ---------------------------------

    async fn run_heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let tick = self.beat / 2;
        let mut subscribed = false;
        let mut reregister = true;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.beat_once(&mut subscribed, &mut reregister).await {
                Ok(()) => {
                    self.set_up();
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::debug!(node = %self.node, error = %e, "cluster: heartbeat failed");
                    self.set_down(&e);
                    reregister = true;
                }
            }
            let wait = if self.is_up() {
                tick
            } else {
                backoff = (backoff * 2).min(self.beat);
                backoff
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn beat_once(
        &self,
        subscribed: &mut bool,
        reregister: &mut bool,
    ) -> Result<(), ClusterError> {
        let mut c = self.conn.clone();
        tracing::trace!(node = %self.node, subscribed = *subscribed, "cluster: beat");
        if !*subscribed {
            c.subscribe(keys::EVENTS).await?;
            *subscribed = true;
        }
        let prev: Option<String> = redis::cmd("SET")
            .arg(keys::alive(&self.node))
            .arg(now_ms())
            .arg("PX")
            .arg(ms(self.beat * 3))
            .arg("GET")
            .query_async(&mut c)
            .await?;
        let ttl = self.registry_ttl();
        let _: () = redis::pipe()
            .sadd(keys::NODES, &*self.node)
            .ignore()
            .pexpire(keys::node_rooms(&self.node), ttl as i64)
            .ignore()
            .pexpire(keys::node_users(&self.node), ttl as i64)
            .ignore()
            .query_async(&mut c)
            .await?;
        // Our alive key was gone: Redis restarted or we were swept as dead.
        if prev.is_none() || *reregister {
            self.reregister(&mut c).await?;
            *reregister = false;
        } else if self.ticks.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
            self.sync_users(&mut c).await?;
        }
        self.sweep_dead(&mut c).await
    }

    /// Writes this node's users with their connection counts (`HSET` into its
    /// users hash, `ZADD` into the online set) in pipelined batches, and removes
    /// users Redis still has but this node no longer does. Runs once per
    /// heartbeat: connection counts are refreshed here, never per message.
    async fn sync_users(&self, c: &mut ConnectionManager) -> Result<(), ClusterError> {
        let node = &*self.node;
        let users: Vec<UserName> = lock(&self.mirror).users.iter().cloned().collect();
        let sink = self.sink();
        let stored: Vec<String> = redis::cmd("HKEYS")
            .arg(keys::node_users(node))
            .query_async(c)
            .await?;
        let current: HashSet<&str> = users.iter().map(|u| u.as_str()).collect();
        let stale: Vec<&String> = stored
            .iter()
            .filter(|u| !current.contains(u.as_str()))
            .collect();
        for chunk in stale.chunks(BATCH) {
            let mut p = redis::pipe();
            for u in chunk {
                p.zrem(keys::ONLINE, keys::user_at(u, node)).ignore();
                p.hdel(keys::node_users(node), u.as_str()).ignore();
            }
            let _: () = p.query_async(c).await?;
        }
        for chunk in users.chunks(BATCH) {
            let mut p = redis::pipe();
            for u in chunk {
                let n = sink.as_ref().map(|s| s.connections(u)).unwrap_or(0).max(1);
                p.hset(keys::node_users(node), u.as_str(), n).ignore();
                p.zadd(keys::ONLINE, keys::user_at(u.as_str(), node), 0)
                    .ignore();
            }
            p.pexpire(keys::node_users(node), self.registry_ttl() as i64)
                .ignore();
            let _: () = p.query_async(c).await?;
        }
        Ok(())
    }

    /// Makes Redis agree with this node's mirror: entries it no longer has are
    /// removed (announcing leaves), the rest (re-)added in batches.
    async fn reregister(&self, c: &mut ConnectionManager) -> Result<(), ClusterError> {
        let (users, rooms, last_ids) = {
            let m = lock(&self.mirror);
            (m.users.clone(), m.rooms.clone(), m.last_ids.clone())
        };
        let node = &*self.node;
        for (room, id) in &last_ids {
            let _: i64 = self
                .id_floor
                .key(keys::room_id(room.as_str()))
                .arg(*id)
                .invoke_async(c)
                .await?;
        }
        let stored: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::node_rooms(node))
            .query_async(c)
            .await?;
        for entry in stored {
            let Some((room, user)) = entry.split_once('\t') else {
                continue;
            };
            let (Ok(r), Ok(u)) = (RoomName::parse(room), UserName::parse(user)) else {
                continue;
            };
            if !rooms.contains(&(r.clone(), u.clone())) {
                self.run_leave(c, node, node, &r, &u).await?;
            }
        }
        for (room, user) in &rooms {
            self.run_join(c, room, user).await?;
        }
        self.sync_users(c).await?;
        tracing::info!(
            node,
            users = users.len(),
            memberships = rooms.len(),
            "cluster: registered"
        );
        Ok(())
    }

    async fn run_join(
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
    async fn run_leave(
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

    /// Finds nodes whose alive key expired and, holding the claim, removes their
    /// users and announces their leaves (origin "", so every node delivers).
    async fn sweep_dead(&self, c: &mut ConnectionManager) -> Result<(), ClusterError> {
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::NODES)
            .query_async(c)
            .await?;
        for dead in nodes.iter().filter(|n| n.as_str() != &*self.node) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(keys::alive(dead))
                .query_async(c)
                .await?;
            if alive {
                continue;
            }
            let claimed: Option<String> = redis::cmd("SET")
                .arg(keys::sweep_claim(dead))
                .arg(&*self.node)
                .arg("NX")
                .arg("PX")
                .arg(ms(self.beat * 3))
                .query_async(c)
                .await?;
            if claimed.is_none() {
                continue;
            }
            self.sweep_node(c, dead).await?;
        }
        Ok(())
    }

    /// Removes a dead node: its users leave the online registry first (so a
    /// client hearing the leave already finds them gone), then each of its
    /// memberships is removed, the user's last one announcing the leave.
    async fn sweep_node(&self, c: &mut ConnectionManager, dead: &str) -> Result<(), ClusterError> {
        let users: Vec<String> = redis::cmd("HKEYS")
            .arg(keys::node_users(dead))
            .query_async(c)
            .await?;
        let mut p = redis::pipe();
        for u in &users {
            p.zrem(keys::ONLINE, keys::user_at(u, dead)).ignore();
        }
        p.del(keys::node_users(dead)).ignore();
        let _: () = p.query_async(c).await?;
        let entries: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::node_rooms(dead))
            .query_async(c)
            .await?;
        let mut announced = 0;
        for entry in &entries {
            let Some((room, user)) = entry.split_once('\t') else {
                continue;
            };
            let (Ok(r), Ok(u)) = (RoomName::parse(room), UserName::parse(user)) else {
                continue;
            };
            if self.run_leave(c, dead, "", &r, &u).await? {
                announced += 1;
            }
        }
        let _: () = redis::pipe()
            .del(keys::node_rooms(dead))
            .ignore()
            .srem(keys::NODES, dead)
            .ignore()
            .query_async(c)
            .await?;
        tracing::warn!(
            node = %self.node,
            dead,
            users = users.len(),
            announced,
            "cluster: swept a dead node"
        );
        Ok(())
    }

    // ---- the Bus operations --------------------------------------------------------

    async fn publish_room_redis(&self, msg: &ChatMessage) -> Result<(u64, usize), ClusterError> {
        let (before, after) = split_at_id(msg)?;
        let env_prefix = format!(
            "{{\"k\":\"msg\",\"o\":{},\"msg\":",
            serde_json::to_string(&*self.node)?
        );
        let (id, receivers): (u64, u64) = self
            .publish_room
            .key(keys::room_id(msg.room.as_str()))
            .key(keys::room_history(msg.room.as_str()))
            .arg(&before)
            .arg(&after)
            .arg(self.history_cap)
            .arg(keys::EVENTS)
            .arg(env_prefix)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((id, receivers as usize))
    }

    async fn publish_room_now(
        &self,
        room: RoomName,
        from: UserName,
        text: Arc<str>,
    ) -> Result<Published<ChatMessage>, BusError> {
        let _g = self.stripe(&room).lock().await;
        let mut msg = ChatMessage {
            room: room.clone(),
            from,
            text,
            id: 0,
            ts: now_ms(),
        };
        let remote = match self.try_redis(self.publish_room_redis(&msg)).await {
            Some((id, receivers)) => {
                msg.id = id;
                // Subscribers other than this node.
                receivers.saturating_sub(1)
            }
            None => {
                // Outage: local delivery only, ids continue from the last seen.
                let mut m = lock(&self.mirror);
                let e = m.last_ids.entry(room.clone()).or_insert(0);
                *e += 1;
                msg.id = *e;
                0
            }
        };
        self.note_id(&room, msg.id);
        let event = Event::msg(&msg)?;
        let local = self.sink().map(|s| s.to_room(&room, &event)).unwrap_or(0);
        Ok(Published {
            item: msg,
            delivered: local + remote,
        })
    }

    async fn nodes_of(
        &self,
        c: &mut ConnectionManager,
        user: &UserName,
    ) -> Result<Vec<String>, ClusterError> {
        let (lo, hi) = keys::user_range(user.as_str());
        let entries: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(keys::ONLINE)
            .arg(lo)
            .arg(hi)
            .query_async(c)
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|e| e.split_once('\t').map(|(_, n)| n.to_string()))
            .collect())
    }

    /// Assigns the DM id and publishes to other nodes when needed. Returns how
    /// many connections of the recipient other nodes hold.
    async fn publish_dm_redis(
        &self,
        dm: &mut DirectMessage,
        echo: bool,
    ) -> Result<usize, ClusterError> {
        let mut c = self.conn.clone();
        dm.id = redis::cmd("INCR")
            .arg(keys::DM_ID)
            .query_async(&mut c)
            .await?;
        let to_nodes = self.nodes_of(&mut c, &dm.to).await?;
        let remote_nodes: Vec<&String> = to_nodes
            .iter()
            .filter(|n| n.as_str() != &*self.node)
            .collect();
        let mut remote = !remote_nodes.is_empty();
        // The recipient's connections on other nodes, from the registry's
        // counts (refreshed every heartbeat).
        let mut remote_to = 0;
        if remote {
            let mut p = redis::pipe();
            for n in &remote_nodes {
                p.hget(keys::node_users(n), dm.to.as_str());
            }
            let counts: Vec<Option<u64>> = p.query_async(&mut c).await?;
            remote_to = counts
                .into_iter()
                .map(|n| usize::try_from(n.unwrap_or(1)).unwrap_or(1))
                .sum();
        }
        let mut users = vec![dm.to.clone()];
        if echo && dm.from != dm.to {
            users.push(dm.from.clone());
            let from_nodes = self.nodes_of(&mut c, &dm.from).await?;
            remote |= from_nodes.iter().any(|n| n.as_str() != &*self.node);
        }
        if remote {
            let env = serde_json::to_string(&Envelope::Users {
                o: self.node.to_string(),
                users,
                dm: dm.clone(),
            })?;
            let _: i64 = redis::cmd("PUBLISH")
                .arg(keys::EVENTS)
                .arg(env)
                .query_async(&mut c)
                .await?;
        }
        Ok(remote_to)
    }

    async fn publish_dm_now(
        &self,
        from: UserName,
        to: UserName,
        text: Arc<str>,
        echo: bool,
    ) -> Result<Published<DirectMessage>, BusError> {
        let mut dm = DirectMessage {
            from,
            to,
            text,
            id: 0,
            ts: now_ms(),
        };
        let remote = match self
            .try_redis(async {
                let mut d = dm.clone();
                let r = self.publish_dm_redis(&mut d, echo).await?;
                Ok((d.id, r))
            })
            .await
        {
            Some((id, r)) => {
                dm.id = id;
                r
            }
            None => {
                dm.id = self.local_dm_seq.fetch_add(1, Ordering::Relaxed) + 1;
                0
            }
        };
        let event = Event::encode(&dm)?;
        let mut delivered = 0;
        if let Some(sink) = self.sink() {
            delivered = sink.to_users(&[&dm.to], &event);
            if echo && dm.from != dm.to {
                sink.to_users(&[&dm.from], &event);
            }
        }
        Ok(Published {
            item: dm,
            delivered: delivered + remote,
        })
    }

    async fn room_join_now(&self, room: RoomName, user: UserName) -> Result<bool, BusError> {
        lock(&self.mirror)
            .rooms
            .insert((room.clone(), user.clone()));
        let new = self
            .try_redis(async { self.run_join(&mut self.conn.clone(), &room, &user).await })
            .await
            // Outage: the hub only calls this for the first local connection.
            .unwrap_or(true);
        if new {
            self.deliver_presence(&room, &user, PresenceState::Join);
        }
        Ok(new)
    }

    async fn room_leave_now(&self, room: RoomName, user: UserName) -> Result<bool, BusError> {
        let was = lock(&self.mirror)
            .rooms
            .remove(&(room.clone(), user.clone()));
        let node = self.node.clone();
        let gone = self
            .try_redis(async {
                self.run_leave(&mut self.conn.clone(), &node, &node, &room, &user)
                    .await
            })
            .await
            .unwrap_or(was);
        if gone {
            self.deliver_presence(&room, &user, PresenceState::Leave);
        }
        Ok(gone)
    }

    fn local_members(&self, room: &RoomName) -> Vec<UserName> {
        let set: BTreeSet<UserName> = lock(&self.mirror)
            .rooms
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, u)| u.clone())
            .collect();
        set.into_iter().collect()
    }

    async fn members_now(&self, room: RoomName) -> Result<Vec<UserName>, BusError> {
        let got = self
            .try_redis(async {
                let entries: Vec<String> = redis::cmd("ZRANGE")
                    .arg(keys::room_members(room.as_str()))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut self.conn.clone())
                    .await?;
                Ok(entries)
            })
            .await;
        Ok(match got {
            Some(entries) => {
                let set: BTreeSet<UserName> = entries
                    .iter()
                    .filter_map(|e| e.split_once('\t'))
                    .filter_map(|(u, _)| UserName::parse(u).ok())
                    .collect();
                set.into_iter().collect()
            }
            None => self.local_members(&room),
        })
    }

    async fn lex_count(&self, key: String, user: &UserName) -> Result<bool, ClusterError> {
        let (lo, hi) = keys::user_range(user.as_str());
        let n: u64 = redis::cmd("ZLEXCOUNT")
            .arg(key)
            .arg(lo)
            .arg(hi)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }

    async fn online_now(&self) -> Result<Vec<OnlineUser>, BusError> {
        let got = self
            .try_redis(async {
                let entries: Vec<String> = redis::cmd("ZRANGE")
                    .arg(keys::ONLINE)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut self.conn.clone())
                    .await?;
                Ok(entries)
            })
            .await;
        let mut out: Vec<OnlineUser> = match got {
            Some(entries) => entries
                .iter()
                .filter_map(|e| e.split_once('\t'))
                .filter_map(|(u, n)| {
                    Some(OnlineUser {
                        user: UserName::parse(u).ok()?,
                        node: Arc::from(n),
                    })
                })
                .collect(),
            None => lock(&self.mirror)
                .users
                .iter()
                .map(|u| OnlineUser {
                    user: u.clone(),
                    node: self.node.clone(),
                })
                .collect(),
        };
        out.sort();
        Ok(out)
    }

    async fn history_now(
        &self,
        room: RoomName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, BusError> {
        if !self.is_up() {
            return Err(BusError::Unavailable("history: redis unreachable".into()));
        }
        let raw: Vec<String> = match redis::cmd("LRANGE")
            .arg(keys::room_history(room.as_str()))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.set_down(&e);
                return Err(ClusterError::from(e).into());
            }
        };
        let newer: Vec<ChatMessage> = raw
            .iter()
            .filter_map(|s| serde_json::from_str::<ChatMessage>(s).ok())
            .filter(|m| m.id > after)
            .collect();
        let skip = newer.len().saturating_sub(limit);
        Ok(newer.into_iter().skip(skip).collect())
    }

    async fn heads_now(&self, rooms: Vec<RoomName>) -> Result<Vec<u64>, BusError> {
        let got = self
            .try_redis(async {
                let mut p = redis::pipe();
                for r in &rooms {
                    p.get(keys::room_id(r.as_str()));
                }
                let ids: Vec<Option<u64>> = p.query_async(&mut self.conn.clone()).await?;
                Ok(ids)
            })
            .await;
        Ok(match got {
            Some(ids) => ids.into_iter().map(|i| i.unwrap_or(0)).collect(),
            None => {
                let m = lock(&self.mirror);
                rooms
                    .iter()
                    .map(|r| m.last_ids.get(r).copied().unwrap_or(0))
                    .collect()
            }
        })
    }
}

impl Bus for RedisBus {
    fn node(&self) -> &str {
        &self.node
    }

    fn attach(&self, sink: Weak<dyn Deliver>) {
        if self.sink.set(sink).is_err() {
            tracing::warn!("cluster bus: a delivery sink is already attached; ignoring the second");
        }
    }

    fn publish_room(
        &self,
        room: RoomName,
        from: UserName,
        text: Arc<str>,
    ) -> BoxFuture<'_, Result<Published<ChatMessage>, BusError>> {
        Box::pin(self.publish_room_now(room, from, text))
    }

    fn publish_dm(
        &self,
        from: UserName,
        to: UserName,
        text: Arc<str>,
        echo: bool,
    ) -> BoxFuture<'_, Result<Published<DirectMessage>, BusError>> {
        Box::pin(self.publish_dm_now(from, to, text, echo))
    }

    fn room_join(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(self.room_join_now(room, user))
    }

    fn room_leave(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(self.room_leave_now(room, user))
    }

    fn members(&self, room: RoomName) -> BoxFuture<'_, Result<Vec<UserName>, BusError>> {
        Box::pin(self.members_now(room))
    }

    fn is_member(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async move {
            let key = keys::room_members(room.as_str());
            match self.try_redis(self.lex_count(key, &user)).await {
                Some(b) => Ok(b),
                None => Ok(lock(&self.mirror).rooms.contains(&(room, user))),
            }
        })
    }

    fn user_online(&self, user: UserName) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            lock(&self.mirror).users.insert(user.clone());
            let node = &*self.node;
            self.try_redis(async {
                let _: () = redis::pipe()
                    .hset(keys::node_users(node), user.as_str(), 1)
                    .ignore()
                    .pexpire(keys::node_users(node), self.registry_ttl() as i64)
                    .ignore()
                    .zadd(keys::ONLINE, keys::user_at(user.as_str(), node), 0)
                    .ignore()
                    .query_async(&mut self.conn.clone())
                    .await?;
                Ok(())
            })
            .await;
            Ok(())
        })
    }

    fn user_offline(&self, user: UserName) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            lock(&self.mirror).users.remove(&user);
            let node = &*self.node;
            self.try_redis(async {
                let _: () = redis::pipe()
                    .hdel(keys::node_users(node), user.as_str())
                    .ignore()
                    .zrem(keys::ONLINE, keys::user_at(user.as_str(), node))
                    .ignore()
                    .query_async(&mut self.conn.clone())
                    .await?;
                Ok(())
            })
            .await;
            Ok(())
        })
    }

    fn online(&self) -> BoxFuture<'_, Result<Vec<OnlineUser>, BusError>> {
        Box::pin(self.online_now())
    }

    fn is_online(&self, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async move {
            match self
                .try_redis(self.lex_count(keys::ONLINE.to_string(), &user))
                .await
            {
                Some(b) => Ok(b),
                None => Ok(lock(&self.mirror).users.contains(&user)),
            }
        })
    }

    fn history(
        &self,
        room: RoomName,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChatMessage>, BusError>> {
        Box::pin(self.history_now(room, after, limit))
    }

    fn heads(&self, rooms: Vec<RoomName>) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        Box::pin(self.heads_now(rooms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_spliced_into_the_stored_json() {
        let msg = ChatMessage {
            room: RoomName::parse("lobby").unwrap(),
            from: UserName::parse("alice").unwrap(),
            text: Arc::from(r#"tricky "id":18446744073709551615 } text"#),
            id: 0,
            ts: 7,
        };
        let (before, after) = split_at_id(&msg).unwrap();
        let json = format!("{before}42{after}");
        let back: ChatMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back.id, 42);
        assert_eq!(back.text, msg.text);
        // And the envelope the script builds around it decodes.
        let env = format!(r#"{{"k":"msg","o":"n1","msg":{json}}}"#);
        match serde_json::from_str::<Envelope>(&env).unwrap() {
            Envelope::Msg { o, msg } => assert_eq!((o.as_str(), msg.id), ("n1", 42)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resp3_is_requested_once() {
        assert_eq!(resp3_url("redis://h:1"), "redis://h:1?protocol=resp3");
        assert_eq!(
            resp3_url("redis://h:1/?db=2"),
            "redis://h:1/?db=2&protocol=resp3"
        );
        assert_eq!(
            resp3_url("redis://h/?protocol=resp3"),
            "redis://h/?protocol=resp3"
        );
    }
}
