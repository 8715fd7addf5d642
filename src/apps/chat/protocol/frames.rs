//! Frames: what a client may send ([`ClientFrame`], parsed by hand so each kind
//! of bad input gets its own error code) and what the server sends (serde
//! structs, each tagged with its `type`), plus [`Event`], a server frame
//! serialized once for all its recipients.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::errors::ChatError;
use super::names::{truncate, RoomName, UserName};
use super::recovery::{RoomStarts, Since};
use crate::apps::chat::bus_error::BusError;

/// A frame may exceed `max_message_size` by this much before it is refused
/// without being parsed: room name, user name, JSON punctuation and escapes.
pub const ENVELOPE: usize = 4096;
/// `history` frames without a `limit` get this many messages (capped by the ring).
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

/// One frame from a client, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Join {
        room: RoomName,
        /// Recovery: replay what came after this point first.
        since: Option<Since>,
    },
    Leave {
        room: RoomName,
    },
    Msg {
        room: RoomName,
        text: String,
    },
    Dm {
        to: UserName,
        text: String,
    },
    History {
        room: RoomName,
        limit: usize,
    },
    Who {
        room: RoomName,
    },
    /// A newer token for this session (`[app.chat] auth`).
    Refresh {
        token: String,
    },
}

impl ClientFrame {
    /// Parses one frame. `max_text` is `max_message_size`: a `text` longer than
    /// that (in UTF-8 bytes), or a frame longer than it plus [`ENVELOPE`], is
    /// refused with [`ChatError::TooLarge`].
    pub fn parse(raw: &[u8], max_text: usize) -> Result<Self, ChatError> {
        let limit = max_text.saturating_add(ENVELOPE);
        if raw.len() > limit {
            return Err(ChatError::FrameTooLarge {
                len: raw.len(),
                limit,
            });
        }
        let obj: Map<String, Value> =
            serde_json::from_slice(raw).map_err(|e| ChatError::BadJson(e.to_string()))?;
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or(ChatError::MissingType)?;
        let room =
            || -> Result<RoomName, ChatError> { Ok(RoomName::parse(str_field(&obj, "room")?)?) };
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
            "join" => ClientFrame::Join {
                room: room()?,
                since: since(&obj)?,
            },
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
            "refresh" => ClientFrame::Refresh {
                token: str_field(&obj, "token")?.to_string(),
            },
            other => return Err(ChatError::UnknownType(truncate(other))),
        })
    }
}

/// A join's `since` (a message id) and `epoch` (a string); `epoch` alone
/// means nothing.
fn since(obj: &Map<String, Value>) -> Result<Option<Since>, ChatError> {
    let offset = match obj.get("since") {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v.as_u64().ok_or(ChatError::BadField {
            field: "since",
            why: "must be a whole number >= 0",
        })?,
    };
    let epoch = match obj.get("epoch") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) => Some(truncate(e)),
        Some(_) => {
            return Err(ChatError::BadField {
                field: "epoch",
                why: "must be a string",
            })
        }
    };
    Ok(Some(Since { offset, epoch }))
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
    /// SSE and long-poll: where each of the stream's rooms stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<&'a RoomStarts>,
}

/// The answer to a good `refresh`: the session now lasts until `expires`
/// (Unix seconds; absent when the new token has no `exp`).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "refreshed")]
pub struct Refreshed {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
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
