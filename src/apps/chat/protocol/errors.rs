//! [`ChatError`]: why a frame or request was refused, with its stable `code`,
//! its HTTP status and its `error` frame ([`ErrorFrame`]). Every message here
//! is client-facing text. Also the join/leave allowance, which one of them
//! states.

use serde::Serialize;

use super::names::{InvalidName, RoomName, UserName};
use crate::apps::chat::bus_error::BusError;

/// Joins and leaves a client may ask for, per connection (past it:
/// [`ChatError::MembershipRate`]): this many at once (a client joining its
/// whole room list at start), then one every [`MEMBERSHIP_EVERY_MS`]. Each one is a presence event to every member of
/// the room, so a client looping join/leave would otherwise fill the others'
/// send queues until they are cut for falling behind.
pub const MEMBERSHIP_BURST: u32 = 128;
/// See [`MEMBERSHIP_BURST`].
pub const MEMBERSHIP_EVERY_MS: u64 = 100;

/// Why a frame or request was refused. Each variant has a stable `code` (the
/// `error` frame's `code`, documented in `docs/chat-protocol.md`).
///
/// Messages quote names as `\"{0}\"`: `{0:?}` on a name type would show the
/// Rust type (`RoomName("fb")`), and validated names need no escaping. Raw
/// client strings keep `{0:?}`, which escapes them.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("frame is not a JSON object: {0}")]
    BadJson(String),
    #[error("frames are JSON text; binary frames are not accepted")]
    Binary,
    #[error("frame has no string \"type\" field")]
    MissingType,
    #[error("unknown frame type {} (expected join, leave, msg, dm, history, who or refresh)", crate::quoted::Quoted(.0))]
    UnknownType(String),
    #[error("missing field {}", crate::quoted::Quoted(.0))]
    MissingField(&'static str),
    #[error("field {} {why}", crate::quoted::Quoted(.field))]
    BadField {
        field: &'static str,
        why: &'static str,
    },
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error("message is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame is {len} bytes; a frame may be at most {limit} (the message's limit and 4 KiB for the JSON around it)")]
    FrameTooLarge { len: usize, limit: usize },
    #[error("the request body is over {limit} bytes (the message's limit and 4 KiB for the JSON around it)")]
    BodyTooLarge { limit: usize },
    #[error("not in room \"{0}\": join it first")]
    NotJoined(RoomName),
    #[error("user \"{0}\" is not online")]
    UserOffline(UserName),
    #[error("user \"{0}\" has no SSE stream or poll session here to join or leave rooms with")]
    NoStream(UserName),
    #[error("too many rooms on this server")]
    TooManyRooms,
    #[error(
        "invalid cursor {0:?}: expected room:id pairs separated by commas, e.g. lobby:42,dev:7"
    )]
    BadCursor(String),
    #[error("too many messages: this frame was dropped; slow down (the third time within 10 s closes the connection)")]
    RateLimited,
    /// The detail (a Redis error's text, which names the server's state and
    /// can carry `Debug` output) is for the log, not the client: see
    /// [`ChatError::frame`].
    #[error("chat backend unavailable; try again shortly")]
    Bus(BusError),
    #[error("not allowed in room \"{0}\"")]
    RoomForbidden(RoomName),
    #[error("guests may read but not send: connect with a token")]
    ReadOnly,
    #[error("a refresh token must name the same user")]
    RefreshOtherUser,
    #[error("refresh applies to WebSocket sessions of a chat with [app.chat] auth")]
    RefreshUnsupported,
    #[error("too many connections for this user (at most {0})")]
    TooManyConnections(usize),
    #[error("a connection may be in at most {0} rooms: leave one first")]
    RoomsPerConnection(usize),
    #[error("connections from this address may be in at most {0} rooms: leave one first")]
    RoomsPerAddress(usize),
    #[error(
        "too many joins and leaves: at most {} at once, then one every {} ms; slow down",
        MEMBERSHIP_BURST,
        MEMBERSHIP_EVERY_MS
    )]
    MembershipRate,
    #[error("too many long-poll sessions from this address (at most {0})")]
    TooManyPollSessions(usize),
    #[error("this server holds all the long-poll sessions it may; try again shortly")]
    PollSessionsFull,
    #[error("a token is required: send Authorization: Bearer <token> or ?token=")]
    TokenMissing,
    #[error("invalid or expired token")]
    TokenInvalid,
    #[error("the token names no user: its sub claim must be a chat user name")]
    TokenNamesNoUser,
    // HTTP-only failures (the API and the fallback endpoints).
    #[error("missing bearer token: send Authorization: Bearer <push_token>")]
    Unauthorized,
    #[error("wrong bearer token")]
    Forbidden,
    #[error("push is disabled: set [app.chat] push_token to enable it")]
    PushDisabled,
    #[error("no such chat endpoint")]
    NotFound,
    #[error("method not allowed here (use {0})")]
    MethodNotAllowed(&'static str),
    #[error("cannot read the request body: {0}")]
    Body(String),
}

impl From<BusError> for ChatError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::TooManyRooms => ChatError::TooManyRooms,
            e => ChatError::Bus(e),
        }
    }
}

impl ChatError {
    /// The machine-readable code of the `error` frame.
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::BadJson(_) => "bad_json",
            ChatError::Binary => "binary_frame",
            ChatError::MissingType => "missing_type",
            ChatError::UnknownType(_) => "unknown_type",
            ChatError::MissingField(_) => "missing_field",
            ChatError::BadField { .. } => "bad_field",
            ChatError::InvalidName(InvalidName::User(_)) => "invalid_user",
            ChatError::InvalidName(InvalidName::Room(_)) => "invalid_room",
            ChatError::TooLarge { .. }
            | ChatError::FrameTooLarge { .. }
            | ChatError::BodyTooLarge { .. } => "too_large",
            ChatError::NotJoined(_) => "not_joined",
            ChatError::UserOffline(_) => "user_offline",
            ChatError::NoStream(_) => "no_stream",
            ChatError::TooManyRooms => "too_many_rooms",
            ChatError::BadCursor(_) => "bad_cursor",
            ChatError::RateLimited => "rate_limited",
            ChatError::Bus(_) => "unavailable",
            ChatError::RoomForbidden(_) | ChatError::ReadOnly | ChatError::RefreshOtherUser => {
                "forbidden"
            }
            ChatError::RefreshUnsupported => "unsupported",
            ChatError::TooManyConnections(_) | ChatError::TooManyPollSessions(_) => {
                "too_many_connections"
            }
            ChatError::PollSessionsFull => "server_full",
            ChatError::RoomsPerConnection(_) | ChatError::RoomsPerAddress(_) => "too_many_rooms",
            ChatError::MembershipRate => "rate_limited",
            ChatError::TokenMissing => "unauthorized",
            ChatError::TokenInvalid | ChatError::TokenNamesNoUser => "invalid_token",
            ChatError::Unauthorized => "unauthorized",
            ChatError::Forbidden => "forbidden",
            ChatError::PushDisabled => "push_disabled",
            ChatError::NotFound => "not_found",
            ChatError::MethodNotAllowed(_) => "method_not_allowed",
            ChatError::Body(_) => "bad_body",
        }
    }

    /// The `error` frame for this error.
    pub fn frame(&self) -> ErrorFrame {
        if let ChatError::Bus(e) = self {
            // Debug: during an outage every client call fails, and the bus
            // already warns of the connection itself.
            tracing::debug!(error = %e, "chat backend call failed");
        }
        ErrorFrame {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "error")]
pub struct ErrorFrame {
    pub code: &'static str,
    pub message: String,
}
