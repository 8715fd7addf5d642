//! Every Redis key and channel the cluster uses, in one place (mirrored in
//! `docs/cluster.md`). All live under the `wsgate:` prefix.
//!
//! Composite members use a tab as separator: user and room names never contain
//! one (`[A-Za-z0-9_.-]`), and a tab sorts below every valid name character, so
//! `ZRANGEBYLEX [user\t (user\n` selects exactly the entries of one user.

/// The one pub/sub channel every node subscribes to. One publication per room
/// message, DM, push or presence change, whatever the number of nodes.
pub const EVENTS: &str = "wsgate:events";
/// Set of node ids that have ever beaten (and not been swept).
pub const NODES: &str = "wsgate:nodes";
/// Sorted set (score 0) of `user\tnode`: who is online where.
pub const ONLINE: &str = "wsgate:online";
/// Counter giving DM ids, cluster-wide.
pub const DM_ID: &str = "wsgate:dm:id";

/// Liveness of a node: its last beat (ms), expiring after three beats.
pub fn alive(node: &str) -> String {
    format!("wsgate:node:{node}:alive")
}

/// Set of `room\tuser` this node has members for (what a sweeper announces).
pub fn node_rooms(node: &str) -> String {
    format!("wsgate:node:{node}:rooms")
}

/// Set of users connected to this node (what a sweeper removes from [`ONLINE`]).
pub fn node_users(node: &str) -> String {
    format!("wsgate:node:{node}:users")
}

/// Claim on sweeping a dead node (`SET NX PX`): one sweeper at a time.
pub fn sweep_claim(node: &str) -> String {
    format!("wsgate:sweep:{node}")
}

/// Last message id given out in a room (`INCR`).
pub fn room_id(room: &str) -> String {
    format!("wsgate:room:{room}:id")
}

/// The room's epoch: a random string set (`SET NX`) when the room's history
/// stream is first written or read, so it is new whenever Redis lost it.
pub fn room_epoch(room: &str) -> String {
    format!("wsgate:room:{room}:epoch")
}

/// The room's history: a list of message JSON, capped at `[app.chat] history`.
pub fn room_history(room: &str) -> String {
    format!("wsgate:room:{room}:history")
}

/// Sorted set (score 0) of `user\tnode`: the room's members by node.
pub fn room_members(room: &str) -> String {
    format!("wsgate:room:{room}:members")
}

/// `user\tnode`, the member of [`ONLINE`] and [`room_members`].
pub fn user_at(user: &str, node: &str) -> String {
    format!("{user}\t{node}")
}

/// `ZRANGEBYLEX` bounds selecting every `user\t…` entry.
pub fn user_range(user: &str) -> (String, String) {
    (format!("[{user}\t"), format!("({user}\n"))
}
