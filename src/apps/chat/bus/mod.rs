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

use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use serde::Serialize;

pub use super::bus_error::BusError;
use super::protocol::{now_ms, ChatMessage, DirectMessage, Event, Head, RoomName, UserName};

mod local;
pub use local::LocalBus;

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

    /// [`Self::publish_room`] for a caller that can try again (the push
    /// API): when the shared store cannot take the message, nothing is
    /// delivered and [`BusError::Unavailable`] says so, where
    /// `publish_room` serves this node's members alone (an answer of
    /// success would tell the caller a message nobody else got, and no
    /// history holds, went out). Centrifugo's publish API fails alike.
    fn push_room(
        &self,
        room: RoomName,
        from: UserName,
        text: Arc<str>,
    ) -> BoxFuture<'_, Result<Published<ChatMessage>, BusError>> {
        self.publish_room(room, from, text)
    }

    /// [`Self::publish_dm`] as [`Self::push_room`] is `publish_room`.
    fn push_dm(
        &self,
        from: UserName,
        to: UserName,
        text: Arc<str>,
    ) -> BoxFuture<'_, Result<Published<DirectMessage>, BusError>> {
        self.publish_dm(from, to, text, false)
    }

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
