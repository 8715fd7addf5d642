//! The chat wire protocol (docs/chat-protocol.md): validated names, the frames a client may
//! send (parsed by hand so each kind of bad input gets its own error code), the
//! frames the server sends (serde, each tagged with its `type`), the typed
//! [`ChatError`] every bad frame turns into, and the cursors SSE and long-poll
//! clients use to resume from history.
//!
//! Nothing here does I/O: the hub executes frames, the transports move bytes.
//!
//! Layers, each importing only those before it: `names` (the leaf) ←
//! `errors` ← `frames` and `cursor`; `recovery` (epochs) beside them. None imports the bus or the hub;
//! `BusError` comes from its own module, `chat::bus_error`.

mod cursor;
mod errors;
mod frames;
mod names;
mod recovery;

pub use cursor::{parse_rooms, Cursor};
pub use errors::{ChatError, ErrorFrame, MEMBERSHIP_BURST, MEMBERSHIP_EVERY_MS};
pub use frames::{
    arc_str, now_ms, ChatMessage, ClientFrame, DirectMessage, Event, HistoryFrame, Presence,
    PresenceState, Refreshed, Welcome, WhoFrame, DEFAULT_HISTORY_LIMIT, ENVELOPE,
};
pub use names::{InvalidName, RoomName, UserName, MAX_ROOM_LEN, MAX_USER_LEN};
pub use recovery::{
    complete, new_epoch, Head, JoinAck, Reset, RoomStart, RoomStarts, Since, Verdict,
};

#[cfg(test)]
mod tests;
