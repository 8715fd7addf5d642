//! Cursors: where an SSE or long-poll client is in the rooms' histories (and,
//! for long-poll, in its live events), so it can resume on any node; and the
//! `rooms=a,b` lists those transports subscribe with.

use std::collections::BTreeMap;
use std::fmt;

use super::errors::ChatError;
use super::names::{truncate, RoomName};

/// Where an SSE or long-poll client is: the last message id it has seen per room
/// (history positions, valid on any node) in that room's epoch, and, for
/// long-poll, the last live event (presence, DMs; node-local sequence
/// numbers). Text form: `lobby:42:k3j9x0ab,dev:7:k3j9x0ab,@1700000000000123`
/// (the `@` part only for long-poll; a cursor without epochs, `lobby:42`, is
/// still read, and then cannot be recovered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub rooms: BTreeMap<RoomName, u64>,
    pub epochs: BTreeMap<RoomName, String>,
    pub live: Option<u64>,
}

impl Cursor {
    pub fn parse(s: &str) -> Result<Self, ChatError> {
        let bad = || ChatError::BadCursor(truncate(s));
        let mut c = Cursor::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(n) = part.strip_prefix('@') {
                c.live = Some(n.parse().map_err(|_| bad())?);
            } else {
                let mut it = part.splitn(3, ':');
                let (room, id) = (it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?);
                let room = RoomName::parse(room).map_err(|_| bad())?;
                match it.next() {
                    None => {}
                    Some(e) if valid_epoch(e) => {
                        c.epochs.insert(room.clone(), e.to_string());
                    }
                    Some(_) => return Err(bad()),
                }
                c.rooms.insert(room, id.parse().map_err(|_| bad())?);
            }
        }
        Ok(c)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (room, id) in &self.rooms {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{room}:{id}")?;
            if let Some(e) = self.epochs.get(room) {
                write!(f, ":{e}")?;
            }
        }
        if let Some(live) = self.live {
            if !first {
                f.write_str(",")?;
            }
            write!(f, "@{live}")?;
        }
        Ok(())
    }
}

/// Epochs are short `[a-z0-9]` strings (`recovery::new_epoch`).
fn valid_epoch(e: &str) -> bool {
    !e.is_empty() && e.len() <= 32 && e.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Parses a `rooms=a,b` list (empty entries ignored, duplicates removed) of
/// at most `max` rooms (`max_rooms_per_connection`): a longer list is refused
/// as it is read, before anything is looked up for its rooms (each costs a
/// shared-store call, and in a cluster may make a key).
pub fn parse_rooms(s: &str, max: usize) -> Result<Vec<RoomName>, ChatError> {
    let mut out: Vec<RoomName> = Vec::new();
    for r in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let r = RoomName::parse(r)?;
        if !out.contains(&r) {
            if out.len() == max {
                return Err(ChatError::RoomsPerConnection(max));
            }
            out.push(r);
        }
    }
    Ok(out)
}
