//! Messages a node missed on a room's channel, filled from the room's
//! history. Pub/sub delivers at most once: a message published while this
//! node's subscription was being made again (after an outage, or once a
//! slot has moved) or on a shard it was not subscribed to yet (a slot mid
//! migration) never reaches it. A room arrives in id order, so the next
//! message's id skipping past the last one delivered here says what was
//! missed; those are in history, and go to the node's members first, in
//! order, as a client resuming with `since` would get them.

use super::mirror::lock;
use super::RedisBus;
use crate::apps::chat::protocol::ChatMessage;

/// The most messages one gap brings back (history may hold fewer).
const MAX_FILL: usize = 1000;

impl RedisBus {
    /// The messages between the last one delivered here in `next`'s room and
    /// `next`, oldest first: none when nothing is missing, when nothing was
    /// delivered here since the room's first member on this node joined, or
    /// when history cannot be read (`next` then goes on alone).
    pub(super) async fn missed_before(&self, next: &ChatMessage) -> Vec<ChatMessage> {
        let last = lock(&self.mirror).delivered.get(&next.room).map(|d| d.0);
        let Some(last) = last.filter(|&l| l > 0 && next.id > l + 1) else {
            return Vec::new();
        };
        match self.history_now(next.room.clone(), last, usize::MAX).await {
            Ok(msgs) => between(msgs, next.id),
            Err(e) => {
                tracing::debug!(room = %next.room, error = %e, "cluster: missed messages not filled");
                Vec::new()
            }
        }
    }
}

/// Of `after_last` (ids past the last delivered, oldest first), those
/// before `next_id`, at most [`MAX_FILL`] of the newest.
fn between(after_last: Vec<ChatMessage>, next_id: u64) -> Vec<ChatMessage> {
    let mut missed: Vec<ChatMessage> = after_last.into_iter().filter(|m| m.id < next_id).collect();
    let skip = missed.len().saturating_sub(MAX_FILL);
    missed.drain(..skip);
    missed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::chat::protocol::{RoomName, UserName};

    fn msg(id: u64) -> ChatMessage {
        ChatMessage {
            room: RoomName::parse("lobby").expect("room"),
            from: UserName::parse("alice").expect("user"),
            text: "hi".into(),
            id,
            ts: id,
        }
    }

    #[test]
    fn only_the_ids_before_the_next_one_are_missed() {
        let ids = |v: Vec<ChatMessage>| v.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(
            ids(between((3..=9).map(msg).collect(), 7)),
            vec![3, 4, 5, 6]
        );
        assert_eq!(ids(between(Vec::new(), 7)), Vec::<u64>::new());
        let many = between((1..=(MAX_FILL as u64 + 10)).map(msg).collect(), u64::MAX);
        assert_eq!(many.len(), MAX_FILL);
        assert_eq!(many[0].id, 11, "the newest are kept");
    }
}
