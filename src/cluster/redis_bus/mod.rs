//! [`RedisBus`]: the chat [`Bus`] over Redis (docs/cluster.md).
//!
//! * Room message: one Lua script does `INCR` (the id), `RPUSH`+`LTRIM` (the
//!   history) and one `PUBLISH` on the room's channel — constant work whatever
//!   the room size or node count. A node subscribes to a room's channel only
//!   while it holds a member of the room (`subs`). A node subscribed to the
//!   room delivers its own members' messages from the channel like everyone
//!   else's, so every member gets the room in id order (the script publishes
//!   in id order); only when not subscribed (yet) does the publishing node
//!   fan out at once, marking the envelope (`l`) so it skips it on receipt.
//! * DMs and pushes: an id from `INCR`, local delivery, and one publication on
//!   the channel of each other node holding the recipient (or the echoed
//!   sender); every node subscribes to its own channel.
//! * Presence: membership is a sorted set of `user\tnode` per room; Lua scripts
//!   add/remove an entry and publish `join`/`leave` only on the user's first /
//!   last entry, so each transition is announced exactly once cluster-wide.
//! * Liveness: a heartbeat task refreshes this node's alive key (TTL three
//!   beats) and the TTL of its registry sets, and sweeps dead nodes (claim by
//!   `SET NX`; the removal script itself is idempotent).
//! * Outage: while Redis is down every call falls back to this node's mirror
//!   of its own users and memberships, so local clients keep chatting; the
//!   heartbeat retries with backoff, and on recovery re-registers the mirror.
//!
//! Files: `scripts` (the Lua and its invocation), `envelope` (what travels on
//! the channel, and its receipt), `liveness` (heartbeat, re-registration,
//! sweeper), `mirror` (Redis up/down and the outage fallback), `subs` (which
//! room channels this node subscribes to), `publish` (room messages and DMs)
//! and `bus` (the [`Bus`] implementation).
//!
//! [`Bus`]: crate::apps::chat::bus::Bus

mod bus;
mod envelope;
mod gap;
mod liveness;
mod mirror;
mod publish;
mod scripts;
mod subs;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use redis::{PushInfo, Script};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::mirror::Mirror;
use super::ClusterError;
use crate::apps::chat::bus::Deliver;
use crate::apps::chat::protocol::RoomName;
use crate::config::ClusterConfig;
use crate::redis_conn::{RedisConn, Settings};

/// Per-room publish locks (hashed), keeping local delivery in id order.
const STRIPES: usize = 64;
/// Room ids a node takes from the channel (and so gives the publish script
/// as its floor) stay below this: the script counts in Lua's doubles, exact
/// below 2^53, and writes the id with `%d` (a plain `..` would write
/// `1e+14` from 10^14 on, which no node decodes). `INCR` never gets there;
/// only a forged publication does.
const MAX_ROOM_ID: u64 = (1 << 53) - 1;

pub struct RedisBus {
    /// This process in the cluster: `server.node_id` and the pid
    /// ([`instance`]). Registry keys, node channels and envelope origins
    /// use it; clients are shown `name`.
    instance: Arc<str>,
    /// `server.node_id`, as clients see it (`welcome`, the online list).
    name: Arc<str>,
    history_cap: usize,
    history_ttl: Duration,
    /// `cluster.room_ttl` in ms (0: room keys never expire).
    room_ttl_ms: u64,
    beat: Duration,
    conn: RedisConn,
    sink: OnceLock<Weak<dyn Deliver>>,
    mirror: Mutex<Mirror>,
    subs: tokio::sync::Mutex<subs::Subs>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// False while Redis is unreachable: calls use the mirror without waiting.
    up: AtomicBool,
    /// How many times Redis was marked down. A down that comes while a beat
    /// runs (a `+switch-master` dropping the connection, and the channels
    /// subscribed on it) must not be undone by that beat marking Redis up:
    /// the beat compares this count with the one it started from.
    downs: AtomicU64,
    /// Set when a join or leave reached only the mirror (Redis down, or its
    /// call failed): the next beat re-registers.
    unsynced: AtomicBool,
    /// Woken when Redis is reached: reads at start wait for it (see
    /// `mirror::settled`) instead of answering from an empty mirror.
    reached: tokio::sync::Notify,
    /// Whether Redis was ever reached since the node started.
    ever_up: AtomicBool,
    /// Whether the failure to reach Redis at start was logged (once: a
    /// wrong password or address would otherwise stay at debug level).
    told_unreached: AtomicBool,
    /// `None` when Redis is up, else why not (for `/readyz`).
    status: watch::Sender<Option<String>>,
    /// The highest DM id this node has given out or delivered: ids during
    /// an outage go on from it, and re-registration raises Redis's counter
    /// to it (after Redis lost its data, DM ids must keep increasing, as room
    /// ids do).
    dm_seen: AtomicU64,
    /// Heartbeat ticks (two per beat).
    ticks: AtomicU64,
    publish_room: Script,
    heads: Script,
    join: Script,
    leave: Script,
    id_floor: Script,
    forget_dead: Script,
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
        history_ttl: Duration,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, ClusterError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let settings = Settings {
            timeout: cfg.heartbeat.max(Duration::from_millis(100)),
            min_retry: Duration::from_millis(50),
            max_retry: cfg.heartbeat,
            push: Some(push_tx),
        };
        let conn = RedisConn::open(&cfg.redis, settings).map_err(|source| ClusterError::Url {
            url: cfg.redis.describe(),
            source,
        })?;
        let (status, _) = watch::channel(Some("redis: connecting".to_string()));
        let bus = Arc::new(Self {
            instance: Arc::from(instance(node, std::process::id())),
            name: Arc::from(node),
            history_cap,
            history_ttl,
            // Never shorter than history is kept: a room's keys would
            // otherwise go before the messages `history_ttl` promises.
            room_ttl_ms: if cfg.room_ttl.is_zero() {
                0
            } else {
                ms(cfg.room_ttl.max(history_ttl))
            },
            beat: cfg.heartbeat,
            conn,
            sink: OnceLock::new(),
            mirror: Mutex::new(Mirror::default()),
            subs: tokio::sync::Mutex::new(subs::Subs::default()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            up: AtomicBool::new(false),
            downs: AtomicU64::new(0),
            unsynced: AtomicBool::new(false),
            reached: tokio::sync::Notify::new(),
            ever_up: AtomicBool::new(false),
            told_unreached: AtomicBool::new(false),
            status,
            dm_seen: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            publish_room: Script::new(scripts::PUBLISH_ROOM),
            join: Script::new(scripts::JOIN),
            leave: Script::new(scripts::LEAVE),
            id_floor: Script::new(scripts::ID_FLOOR),
            forget_dead: Script::new(scripts::FORGET_DEAD),
            heads: Script::new(scripts::HEADS),
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

    fn stripe(&self, room: &RoomName) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }
}

/// The cluster identity of a process named `node`: the name and the pid.
/// With `server.node_id` set, a binary upgrade runs two processes of one
/// name side by side, and each skipped the other's room messages as its
/// own and took the other's users for its own: messages sent through the
/// draining process never reached clients already on the new one.
fn instance(node: &str, pid: u32) -> String {
    format!("{node}#{pid}")
}

/// The node name clients are shown for a cluster identity.
fn shown(instance: &str) -> &str {
    instance.rsplit_once('#').map_or(instance, |(name, _)| name)
}

#[cfg(test)]
mod tests;
