//! The hub: this node's connections (WebSocket sessions, SSE streams, long-poll
//! sessions), which of them are in which room, and the execution of client
//! frames. Shared state (ids, history, cluster-wide membership, delivery to
//! other nodes) is the [`Bus`]'s; the hub is the bus's
//! [`Deliver`](super::bus::Deliver) sink and fans each event out to its local
//! members.
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
//!
//! `conn` is one connection (its outbox, or a long-poll ring); `connections`
//! the registry of them, room membership and fan-out; `commands` the execution
//! of client frames; `addresses` the rooms held per client address.

mod addresses;
mod commands;
mod conn;
mod connections;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;

use self::addresses::AddressRooms;
pub use self::commands::Actor;
pub use self::conn::{Conn, ConnKind, LiveRing};
use self::connections::LocalRoom;
pub use self::connections::Newcomer;
use super::bus::Bus;
use super::protocol::{RoomName, UserName};

pub type ConnId = u64;

/// Number of presence locks; transitions of different (room, user) pairs rarely
/// share one.
const STRIPES: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent at every step, so a panic elsewhere
    // while it was held is no reason to stop serving it.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Rooms one connection may be in (`max_rooms_per_connection`).
    max_rooms: usize,
    /// Distinct rooms per client address (`max_rooms_per_ip`).
    addresses: AddressRooms,
    next_id: AtomicU64,
    live_seq: Arc<AtomicU64>,
    users: DashMap<UserName, HashMap<ConnId, Arc<Conn>>>,
    rooms: DashMap<RoomName, Arc<Mutex<LocalRoom>>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    overflows: AtomicU64,
}

impl Hub {
    pub fn new(
        bus: Arc<dyn Bus>,
        send_queue: usize,
        history_cap: usize,
        max_rooms: usize,
        max_rooms_per_ip: usize,
    ) -> Arc<Self> {
        // Seeded from the clock so live cursors from before a restart are older
        // than every new event.
        let seed = super::protocol::now_ms().saturating_mul(1000);
        Arc::new(Self {
            bus,
            send_queue: send_queue.max(1),
            history_cap,
            max_rooms: max_rooms.max(1),
            addresses: AddressRooms::new(max_rooms_per_ip),
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

    /// Refuses `rooms` from `ip` up front when they would take the address
    /// past `max_rooms_per_ip` (`join` decides for good).
    pub fn check_rooms(
        &self,
        ip: std::net::IpAddr,
        rooms: &[RoomName],
    ) -> Result<(), super::protocol::ChatError> {
        self.addresses.check(ip, rooms)
    }

    fn stripe(&self, key: impl Hash) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
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
    /// The user's live connections on this node.
    pub fn conns_of(&self, user: &UserName) -> usize {
        self.users.get(user).map_or(0, |m| m.len())
    }

    pub fn note_overflow(&self) {
        self.overflows.fetch_add(1, Ordering::Relaxed);
    }
}
