//! [`LocalBus`], the single-node [`Bus`]: every room's ids, history and
//! members in memory, delivery a direct call into the hub. Bounded: rooms
//! without members are forgotten, least recently used first, at the room cap
//! and when history outgrows `history_memory`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use dashmap::DashMap;
use futures_util::future::BoxFuture;

use super::{history_cutoff, Bus, BusError, Deliver, OnlineUser, Published};
use crate::apps::chat::protocol::{
    new_epoch, now_ms, ChatMessage, DirectMessage, Event, Head, Presence, PresenceState, RoomName,
    UserName,
};

/// One room's shared state in the local bus.
struct RoomLog {
    /// The epoch its ids count in: the bus's epoch when the room was made.
    epoch: Arc<str>,
    /// The last id given out; ids start at 1.
    last_id: u64,
    /// The last `history` messages, oldest first.
    ring: VecDeque<ChatMessage>,
    /// What `ring` holds, as counted against `history_memory`.
    bytes: u64,
    members: BTreeSet<UserName>,
    /// When a message, join or leave last touched it ([`LocalBus::tick`]):
    /// memberless rooms are forgotten least recently touched first.
    touched: u64,
    /// Set when the room is removed from the map, so a caller that fetched it
    /// just before knows to fetch a fresh one.
    dead: bool,
}

impl RoomLog {
    fn new(epoch: Arc<str>, touched: u64) -> Self {
        Self {
            epoch,
            last_id: 0,
            ring: VecDeque::new(),
            bytes: 0,
            members: BTreeSet::new(),
            touched,
            dead: false,
        }
    }

    /// A room is dropped when nothing about it needs remembering. Rooms that
    /// ever had a message stay, so their ids keep increasing, until the room
    /// cap or the history memory needs them gone ([`LocalBus::forget_idle`]).
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.last_id == 0
    }

    /// Drops the oldest message; returns its size.
    fn pop_oldest(&mut self) -> u64 {
        let size = self.ring.pop_front().map_or(0, |m| message_size(&m));
        self.bytes -= size;
        size
    }
}

/// A stored message's weight against `history_memory`: its text and names,
/// and about what the ring entry and its allocations cost beside them.
fn message_size(m: &ChatMessage) -> u64 {
    (m.text.len() + m.room.as_str().len() + m.from.as_str().len() + 96) as u64
}

/// The single-node [`Bus`].
pub struct LocalBus {
    node: Arc<str>,
    /// Rooms kept at most (`app.chat.max_rooms`). A room lives while it has
    /// members or history; without a cap a client could create rooms until
    /// the process runs out of memory.
    max_rooms: usize,
    history_cap: usize,
    history_ttl: std::time::Duration,
    /// The epoch new rooms get. All local history is lost together at a
    /// restart; a room forgotten to keep the bus bounded loses its own, so
    /// the epoch is renewed then and a room made again counts anew.
    epoch: Mutex<Arc<str>>,
    /// Bytes of history kept at most, over every room (`history_memory`).
    history_memory: u64,
    /// Bytes of history kept now.
    history_bytes: AtomicU64,
    /// Counts room touches: an order of use without ties, which milliseconds
    /// would have.
    clock: AtomicU64,
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
    pub fn new(
        node: &str,
        history_cap: usize,
        history_ttl: std::time::Duration,
        history_memory: u64,
        max_rooms: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            node: Arc::from(node),
            max_rooms,
            history_cap,
            history_ttl,
            epoch: Mutex::new(new_epoch()),
            history_memory,
            history_bytes: AtomicU64::new(0),
            clock: AtomicU64::new(0),
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
                    let max = self.max_rooms;
                    if self.rooms.len() >= max {
                        // A batch, so that the scan is not paid per new room.
                        self.forget_idle(|bus| bus.rooms.len() < max - max / 16);
                        if self.rooms.len() >= max {
                            return Err(BusError::TooManyRooms);
                        }
                    }
                    self.rooms
                        .entry(room.clone())
                        .or_insert_with(|| {
                            Arc::new(Mutex::new(RoomLog::new(self.current_epoch(), self.tick())))
                        })
                        .clone()
                }
            };
            let mut g = lock(&log);
            if g.dead {
                continue;
            }
            g.touched = self.tick();
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

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The epoch a room made now counts in.
    fn current_epoch(&self) -> Arc<str> {
        lock(&self.epoch).clone()
    }

    /// Forgets rooms without members (their history and ids), least recently
    /// touched first, until `enough` holds or none is left: how the room cap
    /// and `history_memory` hold against clients that make rooms, fill them
    /// and leave. Rooms with members are kept (their sessions bound them).
    /// A client's cursor into a forgotten room meets a new epoch, so it is
    /// told that history was lost, not handed ids that start again.
    fn forget_idle(&self, enough: impl Fn(&Self) -> bool) {
        let mut idle: Vec<(u64, RoomName)> = self
            .rooms
            .iter()
            .filter_map(|e| {
                let g = e.value().try_lock().ok()?;
                g.members.is_empty().then(|| (g.touched, e.key().clone()))
            })
            .collect();
        idle.sort_unstable_by_key(|(touched, _)| *touched);
        if idle.is_empty() {
            return;
        }
        // Renewed before the first room goes: a room made again right after
        // it went must not count in the epoch its cursors name.
        *lock(&self.epoch) = new_epoch();
        for (_, room) in idle {
            if enough(self) {
                break;
            }
            let removed = self.rooms.remove_if(&room, |_, l| {
                let mut g = lock(l);
                g.dead = g.members.is_empty();
                g.dead
            });
            if let Some((_, l)) = removed {
                let bytes = lock(&l).bytes;
                self.history_bytes.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
    }

    /// Keeps history within `history_memory` after `room` grew: idle rooms
    /// go first, then `room`'s own oldest messages (the newest one stays).
    fn bound_history(&self, room: &RoomName) {
        let over = |bus: &Self| bus.history_bytes.load(Ordering::Relaxed) > bus.history_memory;
        if !over(self) {
            return;
        }
        self.forget_idle(|bus| {
            bus.history_bytes.load(Ordering::Relaxed) <= bus.history_memory / 8 * 7
        });
        if let Some(log) = self.rooms.get(room).map(|l| l.clone()) {
            let mut g = lock(&log);
            if g.dead {
                // Forgotten meanwhile: its bytes were already given back.
                return;
            }
            while over(self) && g.ring.len() > 1 {
                let size = g.pop_oldest();
                self.history_bytes.fetch_sub(size, Ordering::Relaxed);
            }
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
                let mut freed = 0;
                if log.ring.len() >= cap {
                    freed += log.pop_oldest();
                }
                let size = message_size(&msg);
                log.ring.push_back(msg.clone());
                log.bytes += size;
                while cutoff.is_some_and(|c| log.ring.front().is_some_and(|m| m.ts < c)) {
                    freed += log.pop_oldest();
                }
                // One write to the shared total per message, not two.
                if size >= freed {
                    self.history_bytes
                        .fetch_add(size - freed, Ordering::Relaxed);
                } else {
                    self.history_bytes
                        .fetch_sub(freed - size, Ordering::Relaxed);
                }
            }
            // Delivered while the room is locked: that is what makes every member
            // see the room's messages in id order.
            let delivered = sink.map(|s| s.to_room(&room, &event)).unwrap_or(0);
            Ok(Published {
                item: msg,
                delivered,
            })
        })
        .and_then(|published| {
            self.bound_history(&room);
            published
        })
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
            g.touched = self.tick();
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
            .map(|r| {
                self.read_room(r, |l| Head {
                    epoch: l.epoch.clone(),
                    offset: l.last_id,
                })
                .unwrap_or_else(|| Head {
                    epoch: self.current_epoch(),
                    offset: 0,
                })
            })
            .collect()))
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
