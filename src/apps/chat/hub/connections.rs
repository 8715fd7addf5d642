//! This node's connections: registering and removing them (with the online
//! registry), room membership counted per (room, user) so the bus hears only a
//! user's first join and last leave here, and the [`Deliver`] fan-out of events
//! to local members.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::conn::{Conn, ConnKind, LiveRing, Outbox};
use super::{lock, ConnId, Hub};
use crate::apps::chat::bus::BusError;
use crate::apps::chat::bus::Deliver;
use crate::apps::chat::identity::Grants;
use crate::apps::chat::protocol::{
    complete, ChatError, Event, JoinAck, Presence, PresenceState, RoomName, Since, UserName,
    Verdict,
};

/// A connection about to register: its user, what its token allows, and the
/// user's connection cap on this node (`max_connections_per_user`, 0 = none).
pub struct Newcomer {
    pub user: UserName,
    pub grants: Grants,
    pub cap: usize,
    /// The client's address (after `trusted_proxies`).
    pub addr: IpAddr,
}

#[derive(Default)]
pub(super) struct LocalRoom {
    members: HashMap<ConnId, Arc<Conn>>,
    /// Connections per user, for "first join" and "last leave".
    users: HashMap<UserName, usize>,
    /// Set when removed from the map (see `Hub::add_member`).
    dead: bool,
}

impl Hub {
    fn new_conn(&self, who: Newcomer, kind: ConnKind, outbox: Outbox) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(Conn::new(id, who.user, who.grants, kind, outbox, who.addr))
    }

    /// Registers a queued connection (WebSocket or SSE). `first` is queued
    /// before anything else can reach the connection (the `welcome` frame).
    pub async fn connect(
        &self,
        who: Newcomer,
        kind: ConnKind,
        first: Option<&Event>,
    ) -> Result<(Arc<Conn>, mpsc::Receiver<Event>), ChatError> {
        let cap = who.cap;
        let (tx, rx) = mpsc::channel(self.send_queue);
        let conn = self.new_conn(who, kind, Outbox::Queue(tx));
        if let Some(first) = first {
            conn.offer(first);
        }
        self.register(&conn, cap).await?;
        Ok((conn, rx))
    }

    /// Registers a long-poll session; its live events go to the returned ring.
    pub async fn connect_poll(
        &self,
        who: Newcomer,
    ) -> Result<(Arc<Conn>, Arc<LiveRing>), ChatError> {
        let cap = who.cap;
        let ring = Arc::new(LiveRing::new(self.send_queue, self.live_seq.clone()));
        let conn = self.new_conn(who, ConnKind::Poll, Outbox::Poll(ring.clone()));
        self.register(&conn, cap).await?;
        Ok((conn, ring))
    }

    /// Adds `conn` to its user's connections unless the user already holds
    /// `cap` of them here (0: no cap); checked and added under the user's
    /// stripe lock, so racing connects cannot overshoot.
    async fn register(&self, conn: &Arc<Conn>, cap: usize) -> Result<(), ChatError> {
        let _g = self.stripe(&conn.user).lock().await;
        let first = {
            let mut m = self.users.entry(conn.user.clone()).or_default();
            if cap > 0 && m.len() >= cap {
                return Err(ChatError::TooManyConnections(cap));
            }
            m.insert(conn.id, conn.clone());
            m.len() == 1
        };
        if first {
            if let Err(e) = self.bus.user_online(conn.user.clone()).await {
                // Undo, so the registry and the hub agree.
                self.users.remove_if_mut(&conn.user, |_, m| {
                    m.remove(&conn.id);
                    m.is_empty()
                });
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Removes a connection: leaves its rooms (presence leave where it was the
    /// user's last) and the online registry. Idempotent.
    pub async fn disconnect(&self, conn: &Arc<Conn>) {
        let rooms = {
            let mut s = lock(&conn.state);
            if s.closed {
                return;
            }
            s.closed = true;
            s.rooms.iter().cloned().collect::<Vec<_>>()
        };
        for room in rooms {
            if let Err(e) = self.leave(conn, &room, false).await {
                tracing::debug!(error = %e, room = %room, "chat leave on disconnect");
            }
        }
        let _g = self.stripe(&conn.user).lock().await;
        let mut last = false;
        self.users.remove_if_mut(&conn.user, |_, m| {
            m.remove(&conn.id);
            last = m.is_empty();
            last
        });
        if last {
            if let Err(e) = self.bus.user_offline(conn.user.clone()).await {
                tracing::warn!(error = %e, user = %conn.user, "chat: could not mark user offline");
            }
        }
    }

    /// Adds `conn` to `room`. The joining connection always receives its own
    /// acknowledgement (a presence `join` with the room's epoch and offset);
    /// the other members receive a presence `join` when the user is new to
    /// the room.
    ///
    /// With `since` (a recovery), the messages the client missed are queued
    /// first, in order, then the acknowledgement says `recovered`; live
    /// messages of the room that arrive meanwhile are held back and queued
    /// after them, each exactly once. A room already joined ignores `since`.
    ///
    /// Returns the offset acknowledged: the room's head when the connection
    /// had joined (every later message reaches it live).
    pub async fn join(
        &self,
        conn: &Arc<Conn>,
        room: &RoomName,
        since: Option<Since>,
    ) -> Result<u64, ChatError> {
        let _g = self.stripe((room, &conn.user)).lock().await;
        let newly = {
            let mut s = lock(&conn.state);
            if s.closed {
                // Gone: nothing reaches it, whatever the offset says.
                return Ok(0);
            }
            if s.rooms.contains(room) {
                false
            } else {
                if s.rooms.len() >= self.max_rooms {
                    return Err(ChatError::RoomsPerConnection(self.max_rooms));
                }
                self.addresses.enter(conn.addr, room)?;
                s.rooms.insert(room.clone())
            }
        };
        let since = since.filter(|_| newly);
        if since.is_some() {
            conn.hold(room);
        }
        let done = self.join_held(conn, room, newly, since.as_ref()).await;
        match done {
            Ok(upto) => {
                if since.is_some() {
                    conn.release(room, upto);
                }
                Ok(upto)
            }
            Err(e) => {
                conn.release(room, u64::MAX);
                if newly {
                    lock(&conn.state).rooms.remove(room);
                    self.addresses.exit(conn.addr, room);
                    if self.remove_member(conn, room) {
                        let _ = self.bus.room_leave(room.clone(), conn.user.clone()).await;
                    }
                }
                Err(e)
            }
        }
    }

    /// The part of [`Hub::join`] under the stripe lock: membership, the
    /// replay and the acknowledgement. Returns the offset acknowledged.
    async fn join_held(
        &self,
        conn: &Arc<Conn>,
        room: &RoomName,
        newly: bool,
        since: Option<&Since>,
    ) -> Result<u64, ChatError> {
        if newly {
            // Announced before the connection is a member, so the members
            // hear it and the joiner gets its own acknowledgement instead.
            if !self.has_local(room, &conn.user) {
                self.bus.room_join(room.clone(), conn.user.clone()).await?;
            }
            self.add_member(conn, room);
        }
        // Read after joining: a message past this offset reaches the
        // connection live (held back during a recovery).
        let head = self
            .bus
            .heads(vec![room.clone()])
            .await?
            .pop()
            .ok_or_else(|| BusError::Unavailable("no head for the room".into()))?;
        let mut recovered = None;
        if let Some(s) = since {
            let replay = match s.verdict(&head) {
                Verdict::Lost => None,
                // History out of reach (the shared store is down) is no
                // reason to refuse the join: it is just not recovered.
                Verdict::Replay { after } => match self
                    .bus
                    .history(room.clone(), after, self.history_cap)
                    .await
                {
                    Ok(history) => {
                        let missed: Vec<_> = history
                            .into_iter()
                            .filter(|m| m.id <= head.offset)
                            .collect();
                        complete(after, head.offset, missed.iter().map(|m| m.id)).then_some(missed)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, room = %room, "chat: recovery without history");
                        None
                    }
                },
            };
            recovered = Some(replay.is_some());
            for m in replay.iter().flatten() {
                conn.offer_now(&Event::msg(m)?);
            }
        }
        conn.offer_now(&Event::encode(&JoinAck {
            room,
            user: &conn.user,
            state: "join",
            epoch: head.epoch,
            offset: head.offset,
            recovered,
        })?);
        Ok(head.offset)
    }

    /// Whether `user` already has a connection in `room` on this node.
    fn has_local(&self, room: &RoomName, user: &UserName) -> bool {
        self.rooms
            .get(room)
            .map(|r| r.clone())
            .is_some_and(|r| lock(&r).users.contains_key(user))
    }

    /// Removes `conn` from `room`; `ack` sends the leaving connection its own
    /// presence `leave` (the others get one when it was the user's last).
    pub async fn leave(
        &self,
        conn: &Arc<Conn>,
        room: &RoomName,
        ack: bool,
    ) -> Result<(), ChatError> {
        let _g = self.stripe((room, &conn.user)).lock().await;
        let was_in = {
            let mut s = lock(&conn.state);
            // A closed connection's rooms are emptied by `disconnect` itself.
            if s.closed && ack {
                return Ok(());
            }
            s.rooms.remove(room)
        };
        if !was_in {
            return Err(ChatError::NotJoined(room.clone()));
        }
        self.addresses.exit(conn.addr, room);
        let last_local = self.remove_member(conn, room);
        if last_local {
            self.bus.room_leave(room.clone(), conn.user.clone()).await?;
        }
        if ack {
            conn.offer(&Event::encode(&Presence {
                room: room.clone(),
                user: conn.user.clone(),
                state: PresenceState::Leave,
            })?);
        }
        Ok(())
    }

    /// Returns whether `conn` is its user's first connection in the room here.
    fn add_member(&self, conn: &Arc<Conn>, room: &RoomName) -> bool {
        loop {
            let r = self.rooms.entry(room.clone()).or_default().clone();
            let mut g = lock(&r);
            if g.dead {
                // Removed between the lookup and the lock: fetch the new one.
                continue;
            }
            g.members.insert(conn.id, conn.clone());
            let n = g.users.entry(conn.user.clone()).or_insert(0);
            *n += 1;
            return *n == 1;
        }
    }

    /// Returns whether `conn` was its user's last connection in the room here.
    fn remove_member(&self, conn: &Arc<Conn>, room: &RoomName) -> bool {
        let Some(r) = self.rooms.get(room).map(|r| r.clone()) else {
            return false;
        };
        let last = {
            let mut g = lock(&r);
            if g.members.remove(&conn.id).is_none() {
                return false;
            }
            match g.users.get_mut(&conn.user) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    g.users.remove(&conn.user);
                    true
                }
                None => false,
            }
        };
        self.rooms.remove_if(room, |_, r| {
            let mut g = lock(r);
            g.dead = g.members.is_empty();
            g.dead
        });
        last
    }

    /// This node's SSE streams and poll sessions of `user`.
    pub fn fallback_conns(&self, user: &UserName) -> Vec<Arc<Conn>> {
        self.users
            .get(user)
            .map(|m| {
                m.values()
                    .filter(|c| c.kind.is_fallback())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Deliver for Hub {
    fn to_room(&self, room: &RoomName, event: &Event) -> usize {
        let Some(r) = self.rooms.get(room).map(|r| r.clone()) else {
            return 0;
        };
        let g = lock(&r);
        g.members.values().filter(|c| c.offer(event)).count()
    }

    fn to_users(&self, users: &[&UserName], event: &Event) -> usize {
        let mut n = 0;
        for (i, u) in users.iter().enumerate() {
            if users[..i].contains(u) {
                continue;
            }
            // Cloned out so no map guard is held while offering.
            let conns: Vec<Arc<Conn>> = self
                .users
                .get(*u)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            n += conns.iter().filter(|c| c.offer(event)).count();
        }
        n
    }

    fn connections(&self, user: &UserName) -> usize {
        self.users.get(user).map(|m| m.len()).unwrap_or(0)
    }
}
