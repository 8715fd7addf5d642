//! Recovery (docs/chat-protocol.md, "Recovery"): a room's history is a stream
//! named by an **epoch** (a random string, new whenever the history was lost)
//! and numbered by message ids; a client that remembers `(epoch, offset)` can
//! ask for exactly what it missed. This module holds the shapes: where a room
//! stands ([`Head`]), what a client asks ([`Since`]), whether it can be
//! answered ([`Since::verdict`]), and the frames that say so.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::Rng;
use serde::Serialize;

use super::names::{RoomName, UserName};

/// A fresh epoch: 8 random characters of `[a-z0-9]` (41 bits; epochs only
/// need to differ between the history streams of one room).
pub fn new_epoch() -> Arc<str> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let s: String = (0..8)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    Arc::from(s)
}

/// Where a room's history stands: its epoch and the id of its newest message
/// (0 before the first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    #[serde(serialize_with = "super::frames::arc_str::serialize")]
    pub epoch: Arc<str>,
    pub offset: u64,
}

/// What a client says it has seen of a room: every message up to `offset`
/// in the stream `epoch` (`None`: it did not say; taken as the current one,
/// as cursors from before epochs existed were).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub offset: u64,
    pub epoch: Option<String>,
}

/// Whether a [`Since`] can be answered from history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Same stream: replay ids `offset+1 ..= head.offset` (when history still
    /// holds all of them).
    Replay { after: u64 },
    /// Another stream (history lost since), or an offset the stream never
    /// reached: the client may have missed messages.
    Lost,
}

impl Since {
    pub fn verdict(&self, head: &Head) -> Verdict {
        let same = self.epoch.as_deref().is_none_or(|e| e == &*head.epoch);
        if same && self.offset <= head.offset {
            Verdict::Replay { after: self.offset }
        } else {
            Verdict::Lost
        }
    }
}

/// The joining connection's acknowledgement: a `presence` join carrying the
/// room's epoch and offset, and with a `since`, whether it was recovered.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "presence")]
pub struct JoinAck<'a> {
    pub room: &'a RoomName,
    pub user: &'a UserName,
    pub state: &'static str,
    #[serde(serialize_with = "super::frames::arc_str::serialize")]
    pub epoch: Arc<str>,
    pub offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// Where each room of an SSE stream or poll session stands, in its `welcome`
/// (and whether a resumed cursor was recovered).
#[derive(Debug, Serialize)]
pub struct RoomStart {
    #[serde(serialize_with = "super::frames::arc_str::serialize")]
    pub epoch: Arc<str>,
    pub offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

pub type RoomStarts = BTreeMap<RoomName, RoomStart>;

/// A room of a long-poll session whose stream changed between polls (history
/// lost): the cursor starts again in the new epoch.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "recovery")]
pub struct Reset<'a> {
    pub room: &'a RoomName,
    #[serde(serialize_with = "super::frames::arc_str::serialize")]
    pub epoch: Arc<str>,
    pub offset: u64,
    pub recovered: bool,
}

/// Whether `messages` (ids above `after`, oldest first, as history returned
/// them) are exactly `after+1 ..= upto`: nothing aged out or trimmed between.
pub fn complete(after: u64, upto: u64, ids: impl IntoIterator<Item = u64>) -> bool {
    let mut want = after + 1;
    for id in ids {
        if id > upto {
            break;
        }
        if id != want {
            return false;
        }
        want += 1;
    }
    want == upto + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_completeness() {
        let head = Head {
            epoch: Arc::from("abc"),
            offset: 10,
        };
        let since = |o, e: Option<&str>| Since {
            offset: o,
            epoch: e.map(str::to_string),
        };
        assert_eq!(
            since(4, Some("abc")).verdict(&head),
            Verdict::Replay { after: 4 }
        );
        assert_eq!(since(4, Some("xyz")).verdict(&head), Verdict::Lost);
        assert_eq!(since(4, None).verdict(&head), Verdict::Replay { after: 4 });
        assert_eq!(since(11, Some("abc")).verdict(&head), Verdict::Lost);
        assert!(complete(4, 7, [5, 6, 7, 8]));
        assert!(complete(7, 7, []));
        assert!(!complete(4, 7, [6, 7]));
        assert!(!complete(4, 7, [5, 6]));
        assert_ne!(new_epoch(), new_epoch());
    }
}
