//! Per-room subscriptions: a node subscribes to a room's channel while it
//! holds at least one member of the room, so it never receives traffic of
//! rooms it has nobody in. Membership counts come from the mirror; `held` is
//! what Redis confirmed. A change that fails (Redis down) marks the set dirty
//! and the heartbeat reconciles it once Redis is back; channels Redis had
//! confirmed are resubscribed by the client itself after a reconnect.

use std::collections::HashSet;

use super::mirror::lock;
use super::{ClusterError, RedisBus};
use crate::apps::chat::protocol::RoomName;
use crate::cluster::keys;

/// The room channels this node is subscribed to.
#[derive(Default)]
pub(super) struct Subs {
    held: HashSet<RoomName>,
    /// A subscription change failed; the heartbeat reconciles every room.
    dirty: bool,
}

impl RedisBus {
    /// Whether this node currently holds a member of `room` (so it is, or is
    /// about to be, subscribed to the room's channel).
    pub(super) fn holds_room(&self, room: &RoomName) -> bool {
        lock(&self.mirror).room_counts.contains_key(room)
    }

    /// Whether Redis has confirmed this node's subscription to `room`.
    pub(super) fn subscribed(&self, room: &RoomName) -> bool {
        lock(&self.mirror).subscribed.contains(room)
    }

    /// Records in the mirror what `held` says of `room`.
    fn note_held(&self, subs: &Subs, room: &RoomName) {
        let mut m = lock(&self.mirror);
        if subs.held.contains(room) {
            m.subscribed.insert(room.clone());
        } else {
            m.subscribed.remove(room);
        }
    }

    /// This node's members of `room` (connections), as the mirror counts them.
    pub(super) fn local_connections_in(&self, room: &RoomName) -> usize {
        lock(&self.mirror)
            .room_counts
            .get(room)
            .copied()
            .unwrap_or(0)
    }

    /// Brings the subscription to `room` in line with whether this node holds
    /// a member of it. Serialised per node, so a join and a leave racing on
    /// the same room end in the state the mirror has last.
    pub(super) async fn sync_room_sub(&self, room: &RoomName) {
        let mut subs = self.subs.lock().await;
        if !self.is_up() {
            subs.dirty = true;
            return;
        }
        if let Err(e) = self.sync_one(&mut subs, room).await {
            tracing::debug!(node = %self.instance, room = %room, error = %e, "cluster: subscription change deferred");
            subs.dirty = true;
        }
    }

    async fn sync_one(&self, subs: &mut Subs, room: &RoomName) -> Result<(), ClusterError> {
        let want = self.holds_room(room);
        if want == subs.held.contains(room) {
            return Ok(());
        }
        let channel = keys::room_channel(room.as_str());
        let mut c = self.conn.clone();
        if want {
            c.subscribe(&channel).await?;
            subs.held.insert(room.clone());
        } else {
            c.unsubscribe(&channel).await?;
            subs.held.remove(room);
        }
        self.note_held(subs, room);
        Ok(())
    }

    /// Redis ended this node's subscription to `room` (the slot moved, its
    /// master became a replica): subscribed again, where the slot lives now,
    /// while a member is still here. Without it the node's members got
    /// nothing more from other nodes for as long as they stayed. After our
    /// own unsubscribe the room is no longer held by the time the lock is
    /// ours, and nothing happens.
    pub(super) async fn resubscribe_dropped(&self, room: &RoomName) {
        {
            let mut subs = self.subs.lock().await;
            if !subs.held.remove(room) {
                return;
            }
            self.note_held(&subs, room);
        }
        tracing::info!(node = %self.instance, room = %room, "cluster: redis ended a room subscription; subscribing again");
        self.sync_room_sub(room).await;
    }

    /// Subscribes again to every room channel held (after an outage).
    pub(super) async fn resubscribe_held(&self) -> Result<(), ClusterError> {
        let subs = self.subs.lock().await;
        let mut c = self.conn.clone();
        for room in &subs.held {
            c.subscribe(&keys::room_channel(room.as_str())).await?;
        }
        Ok(())
    }

    /// After a failed change: every room wanted or held is brought in line.
    /// Called by the heartbeat while Redis is up.
    pub(super) async fn reconcile_subs(&self) -> Result<(), ClusterError> {
        let mut subs = self.subs.lock().await;
        if !subs.dirty {
            return Ok(());
        }
        let mut rooms: HashSet<RoomName> = lock(&self.mirror).room_counts.keys().cloned().collect();
        rooms.extend(subs.held.iter().cloned());
        for room in &rooms {
            self.sync_one(&mut subs, room).await?;
        }
        subs.dirty = false;
        Ok(())
    }
}
