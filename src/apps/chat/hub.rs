//! The hub: this node's connections (WebSocket sessions, SSE streams, long-poll
//! sessions), which of them are in which room, and the execution of client
//! frames. Shared state (ids, history, cluster-wide membership, delivery to
//! other nodes) is the [`Bus`]'s; the hub is the bus's [`Deliver`] sink and fans
//! each event out to its local members.
//!
//! Backpressure: every connection has a bounded outbox and delivery only ever
//! `try_send`s into it, so a slow consumer never blocks the publisher or the
//! other members. A full queue marks the connection as kicked; its owner (the
//! WebSocket session or SSE stream) sees that and closes it (WebSocket: 1008).
//! Long-poll sessions keep a bounded ring of live events instead (room messages
//! come from history), so they cannot overflow.
//!
//! Presence: local membership is counted per (room, user); the bus hears only
//! the first join and the last leave of a user on this node. Those transitions
//! are serialised per (room, user) by a small set of async locks ("stripes") so
//! a leave and a join of two tabs cannot reach the bus in the wrong order.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::bus::{Bus, Deliver};
use super::protocol::{
    ChatError, ClientFrame, Event, HistoryFrame, Presence, PresenceState, RoomName, UserName,
    WhoFrame,
};

pub type ConnId = u64;

/// Number of presence locks; transitions of different (room, user) pairs rarely
/// share one.
const STRIPES: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent at every step, so a panic elsewhere
    // while it was held is no reason to stop serving it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    WebSocket,
    Sse,
    Poll,
}

impl ConnKind {
    /// SSE streams and poll sessions: what `join`/`leave` over `POST /send` act on.
    pub fn is_fallback(self) -> bool {
        !matches!(self, ConnKind::WebSocket)
    }
}

/// Live (non-history) events of a long-poll session, numbered from a
/// node-wide sequence so a cursor stays meaningful across sessions.
pub struct LiveRing {
    events: Mutex<VecDeque<(u64, Event)>>,
    cap: usize,
    seq: Arc<AtomicU64>,
    /// Woken on every event, room messages included (a poll then reads history).
    pub notify: Notify,
}

impl LiveRing {
    fn push(&self, ev: &Event) {
        if ev.pos.is_none() {
            let mut q = lock(&self.events);
            let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            if q.len() >= self.cap {
                q.pop_front();
            }
            q.push_back((n, ev.clone()));
        }
        self.notify.notify_waiters();
    }

    /// Live events numbered above `seq`, oldest first.
    pub fn after(&self, seq: u64) -> Vec<(u64, Event)> {
        lock(&self.events)
            .iter()
            .filter(|(n, _)| *n > seq)
            .cloned()
            .collect()
    }

    /// The current value of the node-wide sequence: a cursor for "nothing yet".
    pub fn now(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }
}

enum Outbox {
    Queue(mpsc::Sender<Event>),
    Poll(Arc<LiveRing>),
}

/// One client on this node: a WebSocket, an SSE stream or a long-poll session.
pub struct Conn {
    pub id: ConnId,
    pub user: UserName,
    pub kind: ConnKind,
    /// Rooms joined, and whether the connection is gone (checked under the same
    /// lock as joins, so a join racing a disconnect cannot leave a member behind).
    state: Mutex<ConnState>,
    outbox: Outbox,
    kicked: CancellationToken,
}

#[derive(Default)]
struct ConnState {
    rooms: BTreeSet<RoomName>,
    closed: bool,
}

impl Conn {
    /// Queues an event without waiting. A full queue kicks the connection.
    pub fn offer(&self, ev: &Event) -> bool {
        match &self.outbox {
            Outbox::Queue(tx) => match tx.try_send(ev.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !self.kicked.is_cancelled() {
                        tracing::debug!(user = %self.user, conn = self.id, "chat send queue full; closing the connection");
                    }
                    self.kicked.cancel();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            Outbox::Poll(ring) => {
                ring.push(ev);
                true
            }
        }
    }

    /// Cancelled when the connection fell too far behind and must be closed.
    pub fn kicked(&self) -> &CancellationToken {
        &self.kicked
    }

    pub fn rooms(&self) -> Vec<RoomName> {
        lock(&self.state).rooms.iter().cloned().collect()
    }

    pub fn in_room(&self, room: &RoomName) -> bool {
        lock(&self.state).rooms.contains(room)
    }

    /// Frames waiting in the outbox.
    fn queued(&self) -> usize {
        match &self.outbox {
            Outbox::Queue(tx) => tx.max_capacity() - tx.capacity(),
            Outbox::Poll(_) => 0,
        }
    }
}

#[derive(Default)]
struct LocalRoom {
    members: HashMap<ConnId, Arc<Conn>>,
    /// Connections per user, for "first join" and "last leave".
    users: HashMap<UserName, usize>,
    /// Set when removed from the map (see `Hub::add_member`).
    dead: bool,
}

/// Who a frame comes from.
#[derive(Clone, Copy)]
pub enum Actor<'a> {
    /// A WebSocket connection: join/leave act on it, replies are queued to it.
    Conn(&'a Arc<Conn>),
    /// `POST /send`: join/leave act on the user's SSE streams and poll sessions
    /// on this node; the reply is the response body.
    Http(&'a UserName),
}

impl Actor<'_> {
    fn user(&self) -> &UserName {
        match self {
            Actor::Conn(c) => &c.user,
            Actor::Http(u) => u,
        }
    }
}

/// A snapshot for tests and diagnostics.
#[derive(Debug, Clone, Default)]
pub struct HubStats {
    pub connections: usize,
    pub users: usize,
    pub rooms: usize,
    /// The fullest outbox right now, in frames (never above `send_queue`).
    pub max_queued: usize,
    /// Connections kicked for falling behind, since start.
    pub overflows: u64,
}

pub struct Hub {
    bus: Arc<dyn Bus>,
    send_queue: usize,
    history_cap: usize,
    next_id: AtomicU64,
    live_seq: Arc<AtomicU64>,
    users: DashMap<UserName, HashMap<ConnId, Arc<Conn>>>,
    rooms: DashMap<RoomName, Arc<Mutex<LocalRoom>>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    overflows: AtomicU64,
}

impl Hub {
    pub fn new(bus: Arc<dyn Bus>, send_queue: usize, history_cap: usize) -> Arc<Self> {
        // Seeded from the clock so live cursors from before a restart are older
        // than every new event.
        let seed = super::protocol::now_ms().saturating_mul(1000);
        Arc::new(Self {
            bus,
            send_queue: send_queue.max(1),
            history_cap,
            next_id: AtomicU64::new(1),
            live_seq: Arc::new(AtomicU64::new(seed)),
            users: DashMap::new(),
            rooms: DashMap::new(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            overflows: AtomicU64::new(0),
        })
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    fn stripe(&self, key: impl Hash) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    fn new_conn(&self, user: UserName, kind: ConnKind, outbox: Outbox) -> Arc<Conn> {
        Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user,
            kind,
            state: Mutex::new(ConnState::default()),
            outbox,
            kicked: CancellationToken::new(),
        })
    }

    /// Registers a queued connection (WebSocket or SSE). `first` is queued
    /// before anything else can reach the connection (the `welcome` frame).
    pub async fn connect(
        &self,
        user: UserName,
        kind: ConnKind,
        first: Option<&Event>,
    ) -> Result<(Arc<Conn>, mpsc::Receiver<Event>), ChatError> {
        let (tx, rx) = mpsc::channel(self.send_queue);
        let conn = self.new_conn(user, kind, Outbox::Queue(tx));
        if let Some(first) = first {
            conn.offer(first);
        }
        self.register(&conn).await?;
        Ok((conn, rx))
    }

    /// Registers a long-poll session; its live events go to the returned ring.
    pub async fn connect_poll(
        &self,
        user: UserName,
    ) -> Result<(Arc<Conn>, Arc<LiveRing>), ChatError> {
        let ring = Arc::new(LiveRing {
            events: Mutex::new(VecDeque::new()),
            cap: self.send_queue,
            seq: self.live_seq.clone(),
            notify: Notify::new(),
        });
        let conn = self.new_conn(user, ConnKind::Poll, Outbox::Poll(ring.clone()));
        self.register(&conn).await?;
        Ok((conn, ring))
    }

    async fn register(&self, conn: &Arc<Conn>) -> Result<(), ChatError> {
        let _g = self.stripe(&conn.user).lock().await;
        let first = {
            let mut m = self.users.entry(conn.user.clone()).or_default();
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

    /// Adds `conn` to `room`. The joining connection always receives a presence
    /// `join` for itself (its acknowledgement); the other members receive it when
    /// the user is new to the room.
    pub async fn join(&self, conn: &Arc<Conn>, room: &RoomName) -> Result<(), ChatError> {
        let _g = self.stripe((room, &conn.user)).lock().await;
        let presence = Event::encode(&Presence {
            room: room.clone(),
            user: conn.user.clone(),
            state: PresenceState::Join,
        })?;
        {
            let mut s = lock(&conn.state);
            if s.closed {
                return Ok(());
            }
            if !s.rooms.insert(room.clone()) {
                drop(s);
                conn.offer(&presence);
                return Ok(());
            }
        }
        let first_local = self.add_member(conn, room);
        let announced = if first_local {
            match self.bus.room_join(room.clone(), conn.user.clone()).await {
                Ok(a) => a,
                Err(e) => {
                    lock(&conn.state).rooms.remove(room);
                    self.remove_member(conn, room);
                    return Err(e.into());
                }
            }
        } else {
            false
        };
        if !announced {
            conn.offer(&presence);
        }
        Ok(())
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

    /// Executes one client frame. Returns the reply: for a WebSocket it is queued
    /// to the connection (`history`, `who`), for `POST /send` it is the response
    /// body (also the stored `msg`/`dm` and the `presence` acknowledgement).
    pub async fn execute(
        &self,
        actor: Actor<'_>,
        frame: ClientFrame,
    ) -> Result<Option<Event>, ChatError> {
        let user = actor.user().clone();
        let http = matches!(actor, Actor::Http(_));
        match frame {
            ClientFrame::Join { room } => match actor {
                Actor::Conn(c) => self.join(c, &room).await.map(|_| None),
                Actor::Http(u) => {
                    let conns = self.fallback_conns(u);
                    if conns.is_empty() {
                        return Err(ChatError::NoStream(u.clone()));
                    }
                    for c in &conns {
                        self.join(c, &room).await?;
                    }
                    Ok(Some(Event::encode(&Presence {
                        room,
                        user,
                        state: PresenceState::Join,
                    })?))
                }
            },
            ClientFrame::Leave { room } => match actor {
                Actor::Conn(c) => self.leave(c, &room, true).await.map(|_| None),
                Actor::Http(u) => {
                    let conns: Vec<_> = self
                        .fallback_conns(u)
                        .into_iter()
                        .filter(|c| c.in_room(&room))
                        .collect();
                    if conns.is_empty() {
                        return Err(ChatError::NotJoined(room));
                    }
                    for c in &conns {
                        self.leave(c, &room, true).await?;
                    }
                    Ok(Some(Event::encode(&Presence {
                        room,
                        user,
                        state: PresenceState::Leave,
                    })?))
                }
            },
            ClientFrame::Msg { room, text } => {
                let member = match actor {
                    Actor::Conn(c) => c.in_room(&room),
                    Actor::Http(_) => self.bus.is_member(room.clone(), user.clone()).await?,
                };
                if !member {
                    return Err(ChatError::NotJoined(room));
                }
                let p = self.bus.publish_room(room, user, text.into()).await?;
                Ok(if http {
                    Some(Event::msg(&p.item)?)
                } else {
                    None
                })
            }
            ClientFrame::Dm { to, text } => {
                if !self.bus.is_online(to.clone()).await? {
                    return Err(ChatError::UserOffline(to));
                }
                let p = self.bus.publish_dm(user, to, text.into(), true).await?;
                Ok(if http {
                    Some(Event::encode(&p.item)?)
                } else {
                    None
                })
            }
            ClientFrame::History { room, limit } => {
                let messages = self
                    .bus
                    .history(room.clone(), 0, limit.min(self.history_cap))
                    .await?;
                Ok(Some(Event::encode(&HistoryFrame {
                    room: &room,
                    messages: &messages,
                })?))
            }
            ClientFrame::Who { room } => {
                let users = self.bus.members(room.clone()).await?;
                Ok(Some(Event::encode(&WhoFrame {
                    room: &room,
                    users: &users,
                })?))
            }
        }
    }

    pub fn stats(&self) -> HubStats {
        let mut s = HubStats {
            rooms: self.rooms.len(),
            overflows: self.overflows.load(Ordering::Relaxed),
            ..HubStats::default()
        };
        for e in self.users.iter() {
            s.users += 1;
            for c in e.value().values() {
                s.connections += 1;
                s.max_queued = s.max_queued.max(c.queued());
            }
        }
        s
    }

    /// Counts a kicked connection (called by its owner when it closes it).
    pub fn note_overflow(&self) {
        self.overflows.fetch_add(1, Ordering::Relaxed);
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
