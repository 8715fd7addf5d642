//! The chat wire protocol (spec §4): validated names, the frames a client may
//! send (parsed by hand so each kind of bad input gets its own error code), the
//! frames the server sends (serde, each tagged with its `type`), the typed
//! [`ChatError`] every bad frame turns into, and the cursors SSE and long-poll
//! clients use to resume from history.
//!
//! Nothing here does I/O: the hub executes frames, the transports move bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bus_error::BusError;

/// Longest user name (spec §4).
pub const MAX_USER_LEN: usize = 32;
/// Longest room name. The spec only fixes user names; rooms use the same
/// characters so they can appear in URLs and cursors without escaping.
pub const MAX_ROOM_LEN: usize = 64;
/// A frame may exceed `max_message_size` by this much before it is refused
/// without being parsed: room name, user name, JSON punctuation and escapes.
pub const ENVELOPE: usize = 4096;
/// `history` frames without a `limit` get this many messages (capped by the ring).
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $err:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            pub fn parse(s: &str) -> Result<Self, ChatError> {
                if valid_name(s, $max) {
                    Ok(Self(Arc::from(s)))
                } else {
                    Err($err(s))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// Deserializing validates too, so names read back from a shared store
        /// (the Redis bus) are as trustworthy as names from a client.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A user name: 1–32 of `[A-Za-z0-9_.-]`.
    UserName,
    MAX_USER_LEN,
    |s: &str| ChatError::InvalidUser(truncate(s))
);
name_type!(
    /// A room name: 1–64 of `[A-Za-z0-9_.-]`.
    RoomName,
    MAX_ROOM_LEN,
    |s: &str| ChatError::InvalidRoom(truncate(s))
);

impl UserName {
    /// `guest-` and eight random lowercase letters and digits, for clients that
    /// did not say who they are.
    pub fn guest() -> Self {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let tail: String = (0..8)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        Self(Arc::from(format!("guest-{tail}")))
    }
}

/// Keeps error messages short when a client sends a huge bad value.
fn truncate(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Why a frame or request was refused. Each variant has a stable `code` (the
/// `error` frame's `code`, documented in `docs/chat-protocol.md`).
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("frame is not a JSON object: {0}")]
    BadJson(String),
    #[error("frames are JSON text; binary frames are not accepted")]
    Binary,
    #[error("frame has no string \"type\" field")]
    MissingType,
    #[error("unknown frame type {0:?} (expected join, leave, msg, dm, history or who)")]
    UnknownType(String),
    #[error("missing field {0:?}")]
    MissingField(&'static str),
    #[error("field {field:?} {why}")]
    BadField {
        field: &'static str,
        why: &'static str,
    },
    #[error("invalid user name {0:?}: use 1-32 of A-Z a-z 0-9 _ . -")]
    InvalidUser(String),
    #[error("invalid room name {0:?}: use 1-64 of A-Z a-z 0-9 _ . -")]
    InvalidRoom(String),
    #[error("message is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("not in room {0:?}: join it first")]
    NotJoined(RoomName),
    #[error("user {0:?} is not online")]
    UserOffline(UserName),
    #[error("user {0:?} has no SSE stream or poll session here to join or leave rooms with")]
    NoStream(UserName),
    #[error("too many rooms on this server")]
    TooManyRooms,
    #[error(
        "invalid cursor {0:?}: expected room:id pairs separated by commas, e.g. lobby:42,dev:7"
    )]
    BadCursor(String),
    #[error("chat backend unavailable: {0}")]
    Bus(BusError),
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
            ChatError::InvalidUser(_) => "invalid_user",
            ChatError::InvalidRoom(_) => "invalid_room",
            ChatError::TooLarge { .. } => "too_large",
            ChatError::NotJoined(_) => "not_joined",
            ChatError::UserOffline(_) => "user_offline",
            ChatError::NoStream(_) => "no_stream",
            ChatError::TooManyRooms => "too_many_rooms",
            ChatError::BadCursor(_) => "bad_cursor",
            ChatError::Bus(_) => "unavailable",
            ChatError::Unauthorized => "unauthorized",
            ChatError::Forbidden => "forbidden",
            ChatError::PushDisabled => "push_disabled",
            ChatError::NotFound => "not_found",
            ChatError::MethodNotAllowed(_) => "method_not_allowed",
            ChatError::Body(_) => "bad_body",
        }
    }

    /// The status an HTTP endpoint answers with for this error.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ChatError::TooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            ChatError::NotJoined(_) | ChatError::Forbidden | ChatError::PushDisabled => {
                S::FORBIDDEN
            }
            ChatError::Unauthorized => S::UNAUTHORIZED,
            ChatError::NotFound => S::NOT_FOUND,
            ChatError::MethodNotAllowed(_) => S::METHOD_NOT_ALLOWED,
            ChatError::UserOffline(_) => S::NOT_FOUND,
            ChatError::NoStream(_) => S::CONFLICT,
            ChatError::TooManyRooms | ChatError::Bus(_) => S::SERVICE_UNAVAILABLE,
            _ => S::BAD_REQUEST,
        }
    }

    /// The `error` frame for this error.
    pub fn frame(&self) -> ErrorFrame {
        ErrorFrame {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

/// One frame from a client, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Join { room: RoomName },
    Leave { room: RoomName },
    Msg { room: RoomName, text: String },
    Dm { to: UserName, text: String },
    History { room: RoomName, limit: usize },
    Who { room: RoomName },
}

impl ClientFrame {
    /// Parses one frame. `max_text` is `max_message_size`: a `text` longer than
    /// that (in UTF-8 bytes), or a frame longer than it plus [`ENVELOPE`], is
    /// refused with [`ChatError::TooLarge`].
    pub fn parse(raw: &[u8], max_text: usize) -> Result<Self, ChatError> {
        let limit = max_text.saturating_add(ENVELOPE);
        if raw.len() > limit {
            return Err(ChatError::TooLarge {
                len: raw.len(),
                max: max_text,
            });
        }
        let obj: Map<String, Value> =
            serde_json::from_slice(raw).map_err(|e| ChatError::BadJson(e.to_string()))?;
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or(ChatError::MissingType)?;
        let room = || RoomName::parse(str_field(&obj, "room")?);
        let text = || -> Result<String, ChatError> {
            let t = str_field(&obj, "text")?;
            if t.is_empty() {
                return Err(ChatError::BadField {
                    field: "text",
                    why: "must not be empty",
                });
            }
            if t.len() > max_text {
                return Err(ChatError::TooLarge {
                    len: t.len(),
                    max: max_text,
                });
            }
            Ok(t.to_string())
        };
        Ok(match kind {
            "join" => ClientFrame::Join { room: room()? },
            "leave" => ClientFrame::Leave { room: room()? },
            "msg" => ClientFrame::Msg {
                room: room()?,
                text: text()?,
            },
            "dm" => ClientFrame::Dm {
                to: UserName::parse(str_field(&obj, "to")?)?,
                text: text()?,
            },
            "history" => {
                let limit = match obj.get("limit") {
                    None | Some(Value::Null) => DEFAULT_HISTORY_LIMIT,
                    Some(v) => v
                        .as_u64()
                        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                        .ok_or(ChatError::BadField {
                            field: "limit",
                            why: "must be a whole number >= 0",
                        })?,
                };
                ClientFrame::History {
                    room: room()?,
                    limit,
                }
            }
            "who" => ClientFrame::Who { room: room()? },
            other => return Err(ChatError::UnknownType(truncate(other))),
        })
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, ChatError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(ChatError::MissingField(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ChatError::BadField {
            field,
            why: "must be a string",
        }),
    }
}

/// Serde for `Arc<str>` fields (serde's `rc` feature is not enabled in this
/// crate; these two functions are all it would give us).
pub mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        Ok(Arc::from(String::deserialize(d)?))
    }
}

/// Milliseconds since the Unix epoch, for `ts`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// ---- server → client frames -------------------------------------------------

/// A room message as stored in history and sent to members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "msg")]
pub struct ChatMessage {
    pub room: RoomName,
    pub from: UserName,
    #[serde(with = "arc_str")]
    pub text: Arc<str>,
    /// Position in the room's history: 1, 2, 3... per room.
    pub id: u64,
    pub ts: u64,
}

/// A direct message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "dm")]
pub struct DirectMessage {
    pub from: UserName,
    pub to: UserName,
    #[serde(with = "arc_str")]
    pub text: Arc<str>,
    pub id: u64,
    pub ts: u64,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "welcome")]
pub struct Welcome<'a> {
    pub user: &'a UserName,
    pub node: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    Join,
    Leave,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "presence")]
pub struct Presence {
    pub room: RoomName,
    pub user: UserName,
    pub state: PresenceState,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "history")]
pub struct HistoryFrame<'a> {
    pub room: &'a RoomName,
    pub messages: &'a [ChatMessage],
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "who")]
pub struct WhoFrame<'a> {
    pub room: &'a RoomName,
    pub users: &'a [UserName],
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "error")]
pub struct ErrorFrame {
    pub code: &'static str,
    pub message: String,
}

/// One server → client event, serialized once and shared by every recipient
/// (cloning is two reference-count increments).
#[derive(Debug, Clone)]
pub struct Event {
    /// The JSON text of the frame.
    pub json: Bytes,
    /// For room messages: the room and the message id, so SSE and long-poll
    /// clients can advance their cursors (and skip what history already gave
    /// them) without parsing the JSON again.
    pub pos: Option<(RoomName, u64)>,
}

impl Event {
    pub fn encode<T: Serialize>(frame: &T) -> Result<Self, BusError> {
        Ok(Self {
            json: Bytes::from(serde_json::to_vec(frame)?),
            pos: None,
        })
    }

    pub fn msg(m: &ChatMessage) -> Result<Self, BusError> {
        Ok(Self {
            json: Bytes::from(serde_json::to_vec(m)?),
            pos: Some((m.room.clone(), m.id)),
        })
    }

    pub fn error(e: &ChatError) -> Self {
        // An ErrorFrame is a &'static str and a String: serializing cannot fail,
        // but fall back to a constant rather than assert it.
        Self::encode(&e.frame()).unwrap_or_else(|_| Self {
            json: Bytes::from_static(
                br#"{"type":"error","code":"internal","message":"internal error"}"#,
            ),
            pos: None,
        })
    }

    /// The text of the frame (always UTF-8: it came from serde_json).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.json).unwrap_or("")
    }
}

// ---- cursors ------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ClientFrame, ChatError> {
        ClientFrame::parse(s.as_bytes(), 16)
    }

    #[test]
    fn names() {
        assert!(UserName::parse("alice.B-2_x").is_ok());
        assert!(UserName::parse("").is_err());
        assert!(UserName::parse(&"a".repeat(33)).is_err());
        assert!(UserName::parse(&"a".repeat(32)).is_ok());
        assert!(UserName::parse("a b").is_err());
        assert!(UserName::parse("é").is_err());
        let g = UserName::guest();
        assert!(g.as_str().starts_with("guest-") && UserName::parse(g.as_str()).is_ok());
        assert!(serde_json::from_str::<UserName>("\"bad name\"").is_err());
    }

    #[test]
    fn frames() {
        let room = RoomName::parse("r").unwrap();
        assert_eq!(
            parse(r#"{"type":"join","room":"r"}"#).unwrap(),
            ClientFrame::Join { room: room.clone() }
        );
        assert_eq!(
            parse(r#"{"type":"msg","room":"r","text":"hi","extra":1}"#).unwrap(),
            ClientFrame::Msg {
                room: room.clone(),
                text: "hi".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"history","room":"r"}"#).unwrap(),
            ClientFrame::History { room, limit: 50 }
        );
        let code = |s: &str| parse(s).unwrap_err().code();
        assert_eq!(code("nope"), "bad_json");
        assert_eq!(code("[1]"), "bad_json");
        assert_eq!(code(r#"{"room":"r"}"#), "missing_type");
        assert_eq!(code(r#"{"type":"shout"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"msg","room":"r"}"#), "missing_field");
        assert_eq!(code(r#"{"type":"msg","room":"r","text":5}"#), "bad_field");
        assert_eq!(code(r#"{"type":"msg","room":"r","text":""}"#), "bad_field");
        assert_eq!(code(r#"{"type":"join","room":"a b"}"#), "invalid_room");
        assert_eq!(code(r#"{"type":"dm","to":"","text":"x"}"#), "invalid_user");
        assert_eq!(
            code(r#"{"type":"msg","room":"r","text":"0123456789abcdefX"}"#),
            "too_large"
        );
        assert_eq!(
            code(r#"{"type":"history","room":"r","limit":-1}"#),
            "bad_field"
        );
        let huge = format!(
            r#"{{"type":"msg","room":"r","text":"{}"}}"#,
            "x".repeat(5000)
        );
        assert_eq!(code(&huge), "too_large");
    }

    #[test]
    fn server_frames_are_tagged() {
        let m = ChatMessage {
            room: RoomName::parse("r").unwrap(),
            from: UserName::parse("u").unwrap(),
            text: "t".into(),
            id: 3,
            ts: 9,
        };
        let v: Value = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"msg","room":"r","from":"u","text":"t","id":3,"ts":9})
        );
        assert_eq!(serde_json::from_value::<ChatMessage>(v).unwrap(), m);
        let e = Event::error(&ChatError::MissingField("room"));
        assert_eq!(
            e.text(),
            r#"{"type":"error","code":"missing_field","message":"missing field \"room\""}"#
        );
    }

    #[test]
    fn cursors_round_trip() {
        let c = Cursor::parse("lobby:42,dev.x:7,@99").unwrap();
        assert_eq!(c.rooms.len(), 2);
        assert_eq!(c.live, Some(99));
        assert_eq!(Cursor::parse(&c.to_string()).unwrap(), c);
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
        assert!(Cursor::parse("lobby").is_err());
        assert!(Cursor::parse("lobby:x").is_err());
        assert!(Cursor::parse("a b:1").is_err());
        assert_eq!(parse_rooms("a,,b,a").unwrap().len(), 2);
        assert!(parse_rooms("a,b c").is_err());
    }
}
