//! The [`Bus`]: everything about the chat that is shared between nodes — message
//! ids and history per room, room membership by user, the online registry, and
//! delivery of room messages, DMs and presence events to every node. A node's
//! [`Hub`](super::hub::Hub) owns only its own connections and hands the bus a
//! [`Deliver`] sink through which events come back for local fan-out.
//!
//! [`LocalBus`] is the single-node implementation: all of it in memory, with
//! delivery a direct call into the sink. The cluster issue adds a Redis
//! implementation behind the same trait (docs/cluster.md): one publication per room
//! message plus its history write and id, each node fanning out to its own
//! members; membership and the registry keyed by node so a dead node's users
//! can be announced as left.
//!
//! Membership here is per (room, user) *on a node*: the hub calls
//! [`Bus::room_join`] only when the first of a user's local connections joins a
//! room and [`Bus::room_leave`] when the last one leaves, so the bus decides
//! whether the user is new to (or gone from) the room cluster-wide and announces
//! the presence change exactly once.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use dashmap::DashMap;
use futures_util::future::BoxFuture;
use serde::Serialize;

pub use super::bus_error::{BusError, MAX_ROOMS};
use super::protocol::{
    new_epoch, now_ms, ChatMessage, DirectMessage, Event, Head, Presence, PresenceState, RoomName,
    UserName,
};

/// How long messages stay in history (`[app.chat] history_ttl`); zero: until
/// `history` newer ones push them out.
pub fn history_cutoff(ttl: std::time::Duration) -> Option<u64> {
    (!ttl.is_zero())
        .then(|| now_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)))
}

/// Where the bus delivers events for this node's connections (implemented by
/// the hub). Calls must not block: they only queue.
pub trait Deliver: Send + Sync {
    /// Queues `event` for every local connection in `room`; returns how many.
    fn to_room(&self, room: &RoomName, event: &Event) -> usize;
    /// Queues `event` for every local connection of each user (a user listed
    /// twice is served once); returns how many connections.
    fn to_users(&self, users: &[&UserName], event: &Event) -> usize;
    /// How many local connections `user` has (the cluster registry's count).
    fn connections(&self, _user: &UserName) -> usize {
        0
    }
}

/// The result of a publication: what was stored and how many connections it
/// reached (cluster-wide).
#[derive(Debug)]
pub struct Published<T> {
    pub item: T,
    pub delivered: usize,
}

/// One entry of `/chat/api/online`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct OnlineUser {
    pub user: UserName,
    #[serde(serialize_with = "super::protocol::arc_str::serialize")]
    pub node: Arc<str>,
}

/// Cluster-wide chat state and delivery. Methods return boxed futures so the
/// trait stays object-safe (`Arc<dyn Bus>`) and a networked implementation can
/// await its store; the local one completes at once.
pub trait Bus: Send + Sync {
    /// This node's id (the `node` of `welcome` and `/chat/api/online`).
    fn node(&self) -> &str;

    /// Sets the sink events for this node are delivered to. Called once, by
    /// the chat app, right after the hub is built.
    fn attach(&self, sink: Weak<dyn Deliver>);

    /// Assigns the next id of `room` and a timestamp, appends the message to the
    /// room's history and delivers it to every member on every node. Messages of
    /// one room are delivered in id order everywhere.
    fn publish_room(
        &self,
        room: RoomName,
        from: UserName,
        text: Arc<str>,
    ) -> BoxFuture<'_, Result<Published<ChatMessage>, BusError>>;

    /// Delivers a DM to every connection of `to` and, when `echo`, of `from`.
    /// `delivered` counts the recipient's connections only.
    fn publish_dm(
        &self,
        from: UserName,
        to: UserName,
        text: Arc<str>,
        echo: bool,
    ) -> BoxFuture<'_, Result<Published<DirectMessage>, BusError>>;

    /// This node now has `user` in `room`. Returns whether the user is new to
    /// the room (then a presence join went to every member, the user's own
    /// connections included).
    fn room_join(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>>;

    /// This node no longer has `user` in `room`. Returns whether that was the
    /// user's last presence there (then a presence leave went to the members).
    fn room_leave(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>>;

    /// The room's users, sorted.
    fn members(&self, room: RoomName) -> BoxFuture<'_, Result<Vec<UserName>, BusError>>;

    fn is_member(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>>;

    /// This node has its first connection of `user`.
    fn user_online(&self, user: UserName) -> BoxFuture<'_, Result<(), BusError>>;

    /// This node's last connection of `user` is gone.
    fn user_offline(&self, user: UserName) -> BoxFuture<'_, Result<(), BusError>>;

    /// Every online user with the node holding it, sorted by user.
    fn online(&self) -> BoxFuture<'_, Result<Vec<OnlineUser>, BusError>>;

    fn is_online(&self, user: UserName) -> BoxFuture<'_, Result<bool, BusError>>;

    /// Up to the last `limit` messages of `room` with an id above `after`, oldest first.
    fn history(
        &self,
        room: RoomName,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChatMessage>, BusError>>;

    /// Where each room's history stands: its epoch (made when the stream is
    /// new) and the last id given out (0 for a room without messages).
    fn heads(&self, rooms: Vec<RoomName>) -> BoxFuture<'_, Result<Vec<Head>, BusError>>;
}

/// One room's shared state in the local bus.
#[derive(Default)]
struct RoomLog {
    /// The last id given out; ids start at 1.
    last_id: u64,
    /// The last `history` messages, oldest first.
    ring: VecDeque<ChatMessage>,
    members: BTreeSet<UserName>,
    /// Set when the room is removed from the map, so a caller that fetched it
    /// just before knows to fetch a fresh one.
    dead: bool,
}

impl RoomLog {
    /// A room is dropped when nothing about it needs remembering. Rooms that
    /// ever had a message stay, so their ids keep increasing.
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.last_id == 0
    }
}

/// The single-node [`Bus`].
pub struct LocalBus {
    node: Arc<str>,
    history_cap: usize,
    history_ttl: std::time::Duration,
    /// Every room's epoch: all local history is lost together, at a restart.
    epoch: Arc<str>,
    rooms: DashMap<RoomName, Arc<Mutex<RoomLog>>>,
    online: DashMap<UserName, ()>,
    dm_seq: AtomicU64,
    sink: OnceLock<Weak<dyn Deliver>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind (no invariant is
    // spread over several locks), so keep serving rather than poison the room.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalBus {
    pub fn new(node: &str, history_cap: usize, history_ttl: std::time::Duration) -> Arc<Self> {
        Arc::new(Self {
            node: Arc::from(node),
            history_cap,
            history_ttl,
            epoch: new_epoch(),
            rooms: DashMap::new(),
            online: DashMap::new(),
            dm_seq: AtomicU64::new(0),
            sink: OnceLock::new(),
        })
    }

    fn sink(&self) -> Option<Arc<dyn Deliver>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    /// Runs `f` on the room's log, creating the room if needed.
    fn with_room<R>(
        &self,
        room: &RoomName,
        f: impl FnOnce(&mut RoomLog) -> R,
    ) -> Result<R, BusError> {
        loop {
            let log = match self.rooms.get(room) {
                Some(l) => l.clone(),
                None => {
                    if self.rooms.len() >= MAX_ROOMS {
                        return Err(BusError::TooManyRooms);
                    }
                    self.rooms.entry(room.clone()).or_default().clone()
                }
            };
            let mut g = lock(&log);
            if g.dead {
                continue;
            }
            let out = f(&mut g);
            let empty = g.is_empty();
            drop(g);
            if empty {
                self.rooms.remove_if(room, |_, l| {
                    let mut g = lock(l);
                    g.dead = g.is_empty();
                    g.dead
                });
            }
            return Ok(out);
        }
    }

    /// Runs `f` on an existing room's log without creating it.
    fn read_room<R>(&self, room: &RoomName, f: impl FnOnce(&RoomLog) -> R) -> Option<R> {
        let log = self.rooms.get(room).map(|l| l.clone())?;
        let g = lock(&log);
        Some(f(&g))
    }

    fn presence(
        &self,
        room: &RoomName,
        user: &UserName,
        state: PresenceState,
    ) -> Result<Event, BusError> {
        Event::encode(&Presence {
            room: room.clone(),
            user: user.clone(),
            state,
        })
    }

    fn publish_room_now(
        &self,
        room: RoomName,
        from: UserName,
        text: Arc<str>,
    ) -> Result<Published<ChatMessage>, BusError> {
        let sink = self.sink();
        let cap = self.history_cap;
        let cutoff = history_cutoff(self.history_ttl);
        self.with_room(&room, |log| {
            log.last_id += 1;
            let msg = ChatMessage {
                room: room.clone(),
                from,
                text,
                id: log.last_id,
                ts: now_ms(),
            };
            let event = Event::msg(&msg)?;
            if cap > 0 {
                if log.ring.len() >= cap {
                    log.ring.pop_front();
                }
                log.ring.push_back(msg.clone());
                while cutoff.is_some_and(|c| log.ring.front().is_some_and(|m| m.ts < c)) {
                    log.ring.pop_front();
                }
            }
            // Delivered while the room is locked: that is what makes every member
            // see the room's messages in id order.
            let delivered = sink.map(|s| s.to_room(&room, &event)).unwrap_or(0);
            Ok(Published {
                item: msg,
                delivered,
            })
        })?
    }

    fn publish_dm_now(
        &self,
        from: UserName,
        to: UserName,
        text: Arc<str>,
        echo: bool,
    ) -> Result<Published<DirectMessage>, BusError> {
        let id = self.dm_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let dm = DirectMessage {
            from,
            to,
            text,
            id,
            ts: now_ms(),
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
            delivered,
        })
    }

    fn room_join_now(&self, room: RoomName, user: UserName) -> Result<bool, BusError> {
        let sink = self.sink();
        let event = self.presence(&room, &user, PresenceState::Join)?;
        self.with_room(&room, |log| {
            let new = log.members.insert(user.clone());
            if new {
                if let Some(s) = &sink {
                    s.to_room(&room, &event);
                }
            }
            new
        })
    }

    fn room_leave_now(&self, room: RoomName, user: UserName) -> Result<bool, BusError> {
        let sink = self.sink();
        let event = self.presence(&room, &user, PresenceState::Leave)?;
        let Some(log) = self.rooms.get(&room).map(|l| l.clone()) else {
            return Ok(false);
        };
        let gone = {
            let mut g = lock(&log);
            let gone = g.members.remove(&user);
            if gone {
                if let Some(s) = &sink {
                    s.to_room(&room, &event);
                }
            }
            gone
        };
        self.rooms.remove_if(&room, |_, l| {
            let mut g = lock(l);
            g.dead = g.is_empty();
            g.dead
        });
        Ok(gone)
    }

    fn history_now(&self, room: &RoomName, after: u64, limit: usize) -> Vec<ChatMessage> {
        let cutoff = history_cutoff(self.history_ttl).unwrap_or(0);
        self.read_room(room, |log| {
            let newer = log.ring.iter().filter(|m| m.id > after && m.ts >= cutoff);
            let n = newer.clone().count();
            newer.skip(n.saturating_sub(limit)).cloned().collect()
        })
        .unwrap_or_default()
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl Bus for LocalBus {
    fn node(&self) -> &str {
        &self.node
    }

    fn attach(&self, sink: Weak<dyn Deliver>) {
        if self.sink.set(sink).is_err() {
            tracing::warn!("chat bus: a delivery sink is already attached; ignoring the second");
        }
    }

    fn publish_room(
        &self,
        room: RoomName,
        from: UserName,
        text: Arc<str>,
    ) -> BoxFuture<'_, Result<Published<ChatMessage>, BusError>> {
        ready(self.publish_room_now(room, from, text))
    }

    fn publish_dm(
        &self,
        from: UserName,
        to: UserName,
        text: Arc<str>,
        echo: bool,
    ) -> BoxFuture<'_, Result<Published<DirectMessage>, BusError>> {
        ready(self.publish_dm_now(from, to, text, echo))
    }

    fn room_join(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        ready(self.room_join_now(room, user))
    }

    fn room_leave(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        ready(self.room_leave_now(room, user))
    }

    fn members(&self, room: RoomName) -> BoxFuture<'_, Result<Vec<UserName>, BusError>> {
        ready(Ok(self
            .read_room(&room, |l| l.members.iter().cloned().collect())
            .unwrap_or_default()))
    }

    fn is_member(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        ready(Ok(self
            .read_room(&room, |l| l.members.contains(&user))
            .unwrap_or(false)))
    }

    fn user_online(&self, user: UserName) -> BoxFuture<'_, Result<(), BusError>> {
        self.online.insert(user, ());
        ready(Ok(()))
    }

    fn user_offline(&self, user: UserName) -> BoxFuture<'_, Result<(), BusError>> {
        self.online.remove(&user);
        ready(Ok(()))
    }

    fn online(&self) -> BoxFuture<'_, Result<Vec<OnlineUser>, BusError>> {
        let mut users: Vec<OnlineUser> = self
            .online
            .iter()
            .map(|e| OnlineUser {
                user: e.key().clone(),
                node: self.node.clone(),
            })
            .collect();
        users.sort();
        ready(Ok(users))
    }

    fn is_online(&self, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        ready(Ok(self.online.contains_key(&user)))
    }

    fn history(
        &self,
        room: RoomName,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChatMessage>, BusError>> {
        ready(Ok(self.history_now(&room, after, limit)))
    }

    fn heads(&self, rooms: Vec<RoomName>) -> BoxFuture<'_, Result<Vec<Head>, BusError>> {
        ready(Ok(rooms
            .iter()
            .map(|r| Head {
                epoch: self.epoch.clone(),
                offset: self.read_room(r, |l| l.last_id).unwrap_or(0),
            })
            .collect()))
    }
}

#[cfg(test)]
mod tests;
