//! [`BusError`], the failure of a chat `Bus` call, and the room cap it
//! reports. A module of its own so that `protocol` (which turns bus errors into
//! client-facing `ChatError`s) does not have to import `bus`, which itself
//! depends on the protocol's types.

/// Rooms kept in memory at most. A room lives while it has members or history;
/// without this cap a client could create rooms until the process runs out of
/// memory.
pub const MAX_ROOMS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("too many rooms (limit {MAX_ROOMS})")]
    TooManyRooms,
    #[error("encoding an event: {0}")]
    Encode(#[from] serde_json::Error),
    /// For networked implementations: the shared store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
}
