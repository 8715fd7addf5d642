//! Outage handling: whether Redis is up (and why not, for `/readyz`), running a
//! call against Redis or falling back, and the [`Mirror`] of this node's own
//! users and memberships that the fallback serves and re-registration restores.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use super::{ClusterError, RedisBus};
use crate::apps::chat::protocol::{RoomName, UserName};

/// This node's own users and memberships: the fallback while Redis is down
/// and what is re-registered when it returns.
#[derive(Default)]
pub(super) struct Mirror {
    pub(super) users: HashSet<UserName>,
    pub(super) rooms: HashSet<(RoomName, UserName)>,
    /// Members per room on this node: the rooms whose channel it subscribes.
    pub(super) room_counts: HashMap<RoomName, usize>,
    /// Highest message id seen per room (ids during an outage continue from it).
    pub(super) last_ids: HashMap<RoomName, u64>,
    /// The last epoch seen per room (what `heads` answers during an outage).
    pub(super) epochs: HashMap<RoomName, std::sync::Arc<str>>,
    /// The last message (id, timestamp) this node delivered per room: the
    /// channel carries a room in id order, so a copy of that same message
    /// right after it is a duplicate, dropped.
    pub(super) delivered: HashMap<RoomName, (u64, u64)>,
    /// The rooms whose subscription Redis has confirmed (`subs`' held set,
    /// readable without its async lock, which joins hold across round trips).
    pub(super) subscribed: HashSet<RoomName>,
}

/// Rooms `last_ids` and `epochs` may hold beyond those with members here
/// before they are pruned.
const PRUNE_FLOOR: usize = 10_000;

impl Mirror {
    /// Keeps `last_ids` and `epochs` to the rooms with members on this node
    /// once either grows past twice their number (and past [`PRUNE_FLOOR`]):
    /// rooms this node only pushed into, or saw once, would otherwise pile up
    /// for the node's life. What a pruned room loses is only outage service:
    /// ids and an epoch to go on from while Redis is down, which no local
    /// member needs.
    pub(super) fn prune(&mut self) {
        let keep = (2 * self.room_counts.len()).max(PRUNE_FLOOR);
        let counts = &self.room_counts;
        if self.last_ids.len() > keep {
            self.last_ids.retain(|r, _| counts.contains_key(r));
        }
        if self.epochs.len() > keep {
            self.epochs.retain(|r, _| counts.contains_key(r));
        }
        if self.delivered.len() > keep {
            self.delivered.retain(|r, _| counts.contains_key(r));
        }
    }

    /// Records `user` in `room`; returns whether it was new.
    pub(super) fn add_member(&mut self, room: &RoomName, user: &UserName) -> bool {
        let new = self.rooms.insert((room.clone(), user.clone()));
        if new {
            *self.room_counts.entry(room.clone()).or_insert(0) += 1;
        }
        new
    }

    /// Forgets `user` in `room`; returns whether it was there.
    pub(super) fn remove_member(&mut self, room: &RoomName, user: &UserName) -> bool {
        let was = self.rooms.remove(&(room.clone(), user.clone()));
        if was {
            if let Some(n) = self.room_counts.get_mut(room) {
                *n -= 1;
                if *n == 0 {
                    self.room_counts.remove(room);
                    // Nobody here to have missed anything: a member who
                    // joins later starts from the room's next message,
                    // not from a gap since this one left.
                    self.delivered.remove(room);
                }
            }
        }
        was
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The mirror is plain sets with no invariant across them, so a panic while
    // it was held is no reason to stop serving it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisBus {
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(super) fn set_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(node = %self.instance, "cluster: redis is up");
        }
        self.ever_up.store(true, Ordering::Release);
        self.reached.notify_waiters();
        self.status.send_if_modified(|s| s.take().is_some());
    }

    /// At start, before Redis was first reached, waits for that (at most one
    /// heartbeat): the mirror is empty then, and answering from it would tell
    /// every client reconnecting to a restarted node that its history was
    /// lost. Later outages answer from the mirror at once.
    pub(super) async fn settled(&self) {
        if self.ever_up.load(Ordering::Acquire) {
            return;
        }
        let reached = self.reached.notified();
        tokio::pin!(reached);
        reached.as_mut().enable();
        if self.is_up() {
            return;
        }
        let _ = tokio::time::timeout(self.beat, reached).await;
    }

    /// A membership change reached only the mirror: the next beat
    /// re-registers. (Users need none: the beat's user sync repairs them.)
    pub(super) fn mark_unsynced(&self) {
        self.unsynced.store(true, Ordering::Release);
    }

    pub(super) fn set_down(&self, e: &dyn std::fmt::Display) {
        self.downs.fetch_add(1, Ordering::AcqRel);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(node = %self.instance, error = %e, "cluster: redis unreachable; serving local clients only");
        } else if !self.ever_up.load(Ordering::Acquire)
            && !self.told_unreached.swap(true, Ordering::AcqRel)
        {
            // Never reached since start: a wrong address or password. Said
            // once; the heartbeat keeps trying (at debug).
            tracing::warn!(node = %self.instance, error = %e, "cluster: redis not reached yet; serving local clients only until it is");
        }
        let reason = format!("redis unreachable: {e}");
        // Also when only the reason changed ("connecting" became why not).
        self.status.send_if_modified(|s| {
            let changed = s.as_deref() != Some(reason.as_str());
            *s = Some(reason);
            changed
        });
    }

    /// Runs `f` against Redis unless it is known to be down; a failure marks it
    /// down. `None` means "use the fallback".
    pub(super) async fn try_redis<T, F>(&self, f: F) -> Option<T>
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
                tracing::warn!(node = %self.instance, error = %e, "cluster: redis call failed");
                None
            }
        }
    }

    /// Whether `msg` is not the message this node delivered last in its room
    /// (recording it as that). A node was seen to receive each message of a
    /// room twice after the master of its slot restarted (Redis counted one
    /// subscription): members get it once. Recorded only while the room has
    /// a member here: a message delivered to nobody (a push, or one that
    /// arrives after the last member left) must not become where a later
    /// joiner's gap fill starts.
    pub(super) fn first_delivery(&self, msg: &crate::apps::chat::protocol::ChatMessage) -> bool {
        let mut m = lock(&self.mirror);
        if !m.room_counts.contains_key(&msg.room) {
            return true;
        }
        let this = (msg.id, msg.ts);
        let last = m.delivered.insert(msg.room.clone(), this);
        last != Some(this)
    }

    /// The highest id this node has given out or seen in `room` (0: none
    /// it remembers), and the epoch it knows the room in ("": none).
    pub(super) fn known_head(&self, room: &RoomName) -> (u64, std::sync::Arc<str>) {
        let m = lock(&self.mirror);
        let id = m.last_ids.get(room).copied().unwrap_or(0);
        let epoch = m.epochs.get(room).cloned().unwrap_or_else(|| "".into());
        (id, epoch)
    }

    pub(super) fn note_id(&self, room: &RoomName, id: u64) {
        if id >= super::MAX_ROOM_ID {
            return;
        }
        let mut m = lock(&self.mirror);
        let e = m.last_ids.entry(room.clone()).or_insert(0);
        *e = (*e).max(id);
        m.prune();
    }

    pub(super) fn local_members(&self, room: &RoomName) -> Vec<UserName> {
        let set: BTreeSet<UserName> = lock(&self.mirror)
            .rooms
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, u)| u.clone())
            .collect();
        set.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_without_members_here_are_pruned_past_the_floor() {
        let mut m = Mirror::default();
        let room = |i: usize| RoomName::parse(&format!("r{i}")).expect("room");
        let user = UserName::parse("u").expect("user");
        m.add_member(&room(0), &user);
        for i in 0..=PRUNE_FLOOR {
            m.last_ids.insert(room(i), 1);
            m.epochs.insert(room(i), "e".into());
            m.prune();
        }
        // Past the floor: only the room with a member here is kept.
        assert_eq!(m.last_ids.len(), 1);
        assert_eq!(m.epochs.len(), 1);
        assert!(m.last_ids.contains_key(&room(0)));
    }
}
