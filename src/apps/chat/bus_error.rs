//! [`BusError`], the failure of a chat `Bus` call. A module of its own so
//! that `protocol` (which turns bus errors into client-facing `ChatError`s)
//! does not have to import `bus`, which itself depends on the protocol's
//! types.

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("too many rooms on this node (app.chat.max_rooms)")]
    TooManyRooms,
    #[error("encoding an event: {0}")]
    Encode(#[from] serde_json::Error),
    /// For networked implementations: the shared store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
}
