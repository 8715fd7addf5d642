//! Every Redis key and channel the cluster uses, in one place (mirrored in
//! `docs/cluster.md`). All live under the `wsgate:` prefix.
//!
//! Keys of one room carry the room as a hash tag (`wsgate:room:{lobby}:id`),
//! keys of one node the node (`wsgate:node:{n1}:users`): on Redis Cluster each
//! room's keys and channel live on one shard, so its scripts run there, and
//! rooms and nodes spread over the shards. The few global keys ([`NODES`],
//! [`ONLINE`], [`DM_ID`]) are single keys, never combined with others in one
//! command.
//!
//! Composite members use a tab as separator: user and room names never contain
//! one (`[A-Za-z0-9_.-]`), and a tab sorts below every valid name character, so
//! `ZRANGEBYLEX [user\t (user\n` selects exactly the entries of one user.

/// Set of node ids that have ever beaten (and not been swept).
pub const NODES: &str = "wsgate:nodes";
/// Sorted set (score 0) of `user\tnode`: who is online where.
pub const ONLINE: &str = "wsgate:online";
/// Counter giving DM ids, cluster-wide.
pub const DM_ID: &str = "wsgate:dm:id";

/// Liveness of a node: its last beat (ms), expiring after three beats.
pub fn alive(node: &str) -> String {
    format!("wsgate:node:{{{node}}}:alive")
}

/// Set of `room\tuser` this node has members for (what a sweeper announces).
pub fn node_rooms(node: &str) -> String {
    format!("wsgate:node:{{{node}}}:rooms")
}

/// Set of users connected to this node (what a sweeper removes from [`ONLINE`]).
pub fn node_users(node: &str) -> String {
    format!("wsgate:node:{{{node}}}:users")
}

/// Claim on sweeping a dead node (`SET NX PX`): one sweeper at a time.
pub fn sweep_claim(node: &str) -> String {
    format!("wsgate:node:{{{node}}}:sweep")
}

/// Last message id given out in a room (`INCR`).
pub fn room_id(room: &str) -> String {
    format!("wsgate:room:{{{room}}}:id")
}

/// The room's epoch: a random string set (`SET NX`) when the room's history
/// stream is first written or read, so it is new whenever Redis lost it.
pub fn room_epoch(room: &str) -> String {
    format!("wsgate:room:{{{room}}}:epoch")
}

/// The room's history: a list of message JSON, capped at `[app.chat] history`.
pub fn room_history(room: &str) -> String {
    format!("wsgate:room:{{{room}}}:history")
}

/// Sorted set (score 0) of `user\tnode`: the room's members by node.
pub fn room_members(room: &str) -> String {
    format!("wsgate:room:{{{room}}}:members")
}

/// The room's pub/sub channel (sharded on Redis Cluster): its messages and
/// presence, one publication each. Nodes subscribe while they hold a member.
pub fn room_channel(room: &str) -> String {
    format!("wsgate:room:{{{room}}}:events")
}

/// The room whose channel is `channel` ([`room_channel`]'s inverse).
pub fn room_of_channel(channel: &[u8]) -> Option<&str> {
    std::str::from_utf8(channel)
        .ok()?
        .strip_prefix("wsgate:room:{")?
        .strip_suffix("}:events")
}

/// The node's own channel: DMs and pushes for users it holds, published only
/// to the nodes that hold the recipient (or the echoed sender).
pub fn node_channel(node: &str) -> String {
    format!("wsgate:node:{{{node}}}:events")
}

/// `user\tnode`, the member of [`ONLINE`] and [`room_members`].
pub fn user_at(user: &str, node: &str) -> String {
    format!("{user}\t{node}")
}

/// `ZRANGEBYLEX` bounds selecting every `user\t…` entry.
pub fn user_range(user: &str) -> (String, String) {
    (format!("[{user}\t"), format!("({user}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes: the first `{…}` with content.
    fn tag(key: &str) -> &str {
        let open = key.find('{').expect("a tag");
        let close = key[open..].find('}').expect("closed") + open;
        &key[open + 1..close]
    }

    #[test]
    fn a_rooms_keys_and_channel_share_its_tag_and_a_nodes_its_own() {
        let room = [
            room_id("lobby"),
            room_epoch("lobby"),
            room_history("lobby"),
            room_members("lobby"),
            room_channel("lobby"),
        ];
        assert!(room.iter().all(|k| tag(k) == "lobby"), "{room:?}");
        let node = [
            alive("n1"),
            node_rooms("n1"),
            node_users("n1"),
            sweep_claim("n1"),
            node_channel("n1"),
        ];
        assert!(node.iter().all(|k| tag(k) == "n1"), "{node:?}");
    }
}
