//! Cursors: where an SSE or long-poll client is in the rooms' histories (and,
//! for long-poll, in its live events), so it can resume on any node; and the
//! `rooms=a,b` lists those transports subscribe with.

use std::collections::BTreeMap;
use std::fmt;

use super::errors::ChatError;
use super::names::{truncate, RoomName};

/// Where an SSE or long-poll client is: the last message id it has seen per room
/// (history positions, valid on any node) and, for long-poll, the last live
/// event (presence, DMs; node-local sequence numbers). Text form:
/// `lobby:42,dev:7,@1700000000000123` (the `@` part only for long-poll).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub rooms: BTreeMap<RoomName, u64>,
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
                let (room, id) = part.rsplit_once(':').ok_or_else(bad)?;
                let room = RoomName::parse(room).map_err(|_| bad())?;
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

/// Parses a `rooms=a,b` list (empty entries ignored, duplicates removed).
pub fn parse_rooms(s: &str) -> Result<Vec<RoomName>, ChatError> {
    let mut out: Vec<RoomName> = Vec::new();
    for r in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let r = RoomName::parse(r)?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}
