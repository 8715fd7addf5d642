//! One client on this node — a WebSocket session, an SSE stream or a long-poll
//! session — and where its events go: a bounded queue, or for long-poll a
//! [`LiveRing`]. Offering never waits; a full queue kicks the connection.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{lock, ConnId};
use crate::apps::chat::identity::Grants;
use crate::apps::chat::protocol::{
    ChatError, Event, RoomName, UserName, MEMBERSHIP_BURST, MEMBERSHIP_EVERY_MS,
};
use crate::limit::gcra::{Bucket, Gcra};

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
    /// The node-wide sequence when the ring was made: every number this
    /// session can hand out is above it.
    start: u64,
    /// The highest number a poll of this session handed out.
    handed: AtomicU64,
    /// Woken on every event, room messages included (a poll then reads history).
    pub notify: Notify,
}

impl LiveRing {
    pub(super) fn new(cap: usize, seq: Arc<AtomicU64>) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            cap,
            start: seq.load(Ordering::Relaxed),
            handed: AtomicU64::new(0),
            seq,
            notify: Notify::new(),
        }
    }

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

    /// Where a poll carrying live cursor `n` goes on from. The sequence is
    /// this node's: a number outside what this session could have been
    /// handed (made by another node, whose clock-seeded sequence may run
    /// ahead of or behind this one, or before this session began) says
    /// nothing here, so the poll goes on from what this session last
    /// handed out (nothing yet: all of it). Taken at its word, a cursor
    /// from a node started later would skip every event here for good.
    pub fn resume_from(&self, n: u64) -> u64 {
        if n < self.start || n > self.now() {
            self.handed.load(Ordering::Relaxed)
        } else {
            n
        }
    }

    /// Records that a poll handed out the events up to `n`.
    pub fn handed_to(&self, n: u64) {
        self.handed.fetch_max(n, Ordering::Relaxed);
    }
}

pub(super) enum Outbox {
    Queue(mpsc::Sender<Event>),
    Poll(Arc<LiveRing>),
}

/// One client on this node: a WebSocket, an SSE stream or a long-poll session.
pub struct Conn {
    pub id: ConnId,
    pub user: UserName,
    pub kind: ConnKind,
    /// The client's address (after `trusted_proxies`): its rooms count
    /// against `max_rooms_per_ip`.
    pub(super) addr: IpAddr,
    /// Rooms joined, and whether the connection is gone (checked under the same
    /// lock as joins, so a join racing a disconnect cannot leave a member behind).
    pub(super) state: Mutex<ConnState>,
    /// What the connection's token allows; a `refresh` replaces it.
    grants: Mutex<Grants>,
    outbox: Outbox,
    kicked: CancellationToken,
    /// Rooms being recovered (`join` with `since`): their live messages wait
    /// here until the replayed history is queued (see `Hub::join`).
    held: Mutex<HashMap<RoomName, Vec<Event>>>,
    /// Whether `held` has a room: `offer` looks at it only then.
    holding: AtomicBool,
    /// Joins and leaves the client asked for ([`MEMBERSHIP_BURST`]).
    membership: Mutex<Bucket>,
}

#[derive(Default)]
pub(super) struct ConnState {
    pub(super) rooms: BTreeSet<RoomName>,
    pub(super) closed: bool,
}

impl Conn {
    pub(super) fn new(
        id: ConnId,
        user: UserName,
        grants: Grants,
        kind: ConnKind,
        outbox: Outbox,
        addr: IpAddr,
    ) -> Self {
        Self {
            id,
            user,
            kind,
            addr,
            state: Mutex::new(ConnState::default()),
            grants: Mutex::new(grants),
            held: Mutex::new(HashMap::new()),
            holding: AtomicBool::new(false),
            membership: Mutex::new(Bucket::new(Gcra::new(
                Duration::from_millis(MEMBERSHIP_EVERY_MS),
                MEMBERSHIP_BURST,
            ))),
            outbox,
            kicked: CancellationToken::new(),
        }
    }

    /// Takes one join or leave the client asked for from its allowance.
    pub fn change_membership(&self) -> Result<(), ChatError> {
        lock(&self.membership)
            .take()
            .map_err(|_| ChatError::MembershipRate)
    }

    /// Queues an event without waiting. A full queue kicks the connection.
    /// A message of a room being recovered waits in `held` instead.
    pub fn offer(&self, ev: &Event) -> bool {
        if self.holding.load(Ordering::Acquire) {
            if let Some((room, _)) = &ev.pos {
                let mut held = lock(&self.held);
                if let Some(buf) = held.get_mut(room) {
                    if buf.len() >= self.capacity() {
                        self.kicked.cancel();
                        return false;
                    }
                    buf.push(ev.clone());
                    return true;
                }
            }
        }
        self.offer_now(ev)
    }

    /// Starts holding `room`'s live messages back (a recovery is replaying).
    pub(super) fn hold(&self, room: &RoomName) {
        lock(&self.held).insert(room.clone(), Vec::new());
        self.holding.store(true, Ordering::Release);
    }

    /// Queues the messages held for `room` with an id above `after`, in the
    /// order they came, and stops holding it. Done under the `held` lock, so
    /// a message arriving meanwhile queues after them.
    pub(super) fn release(&self, room: &RoomName, after: u64) {
        let mut held = lock(&self.held);
        for ev in held.remove(room).unwrap_or_default() {
            if ev.pos.as_ref().is_some_and(|(_, id)| *id > after) {
                self.offer_now(&ev);
            }
        }
        self.holding.store(!held.is_empty(), Ordering::Release);
    }

    /// How many events the outbox holds at most.
    fn capacity(&self) -> usize {
        match &self.outbox {
            Outbox::Queue(tx) => tx.max_capacity(),
            Outbox::Poll(ring) => ring.cap,
        }
    }

    /// Queues an event, past any hold (replayed history, acknowledgements).
    pub fn offer_now(&self, ev: &Event) -> bool {
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

    pub fn grants(&self) -> Grants {
        lock(&self.grants).clone()
    }

    /// A refreshed token's grants: they apply to joins from now on (rooms
    /// already joined are kept).
    pub fn set_grants(&self, grants: Grants) {
        *lock(&self.grants) = grants;
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
    pub(super) fn queued(&self) -> usize {
        match &self.outbox {
            Outbox::Queue(tx) => tx.max_capacity() - tx.capacity(),
            Outbox::Poll(_) => 0,
        }
    }
}
