//! The HTTP API: `POST /api/push` (server-side publish, Bearer `push_token`),
//! `GET /api/online` (who is connected, and where) and `GET /api/history` (a
//! room's last messages). With `[app.chat] auth` the two readers need the push
//! token or a valid user token, whose `rooms` then limit `history`.

use std::sync::Arc;

use crate::body::RequestBody;
use http::{header, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{json_response, max_text, query_param, read_body};
use crate::apps::chat::bus::{BusError, OnlineUser};
use crate::apps::chat::identity::Grants;
use crate::apps::chat::protocol::{
    ChatError, Event, HistoryFrame, RoomName, UserName, DEFAULT_HISTORY_LIMIT, ENVELOPE,
};
use crate::apps::chat::Chat;
use crate::body::Body;

/// The `from` of pushed messages that do not name one.
const PUSH_FROM: &str = "system";

/// Compares tokens in constant time. Both are hashed first so that neither
/// their contents nor their lengths leak through timing.
pub(super) fn token_matches(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into()
}

#[derive(Deserialize)]
struct PushBody {
    room: Option<String>,
    user: Option<String>,
    text: Option<String>,
    from: Option<String>,
}

pub(super) async fn push(
    chat: &Arc<Chat>,
    req: Request<RequestBody>,
) -> Result<Response<Body>, ChatError> {
    let cfg = chat.cfg();
    let Some(token) = cfg.push_token.as_ref().map(|t| t.as_str()) else {
        return Err(ChatError::PushDisabled);
    };
    let given = bearer(&req).ok_or(ChatError::Unauthorized)?;
    if !token_matches(given, token) {
        return Err(ChatError::Forbidden);
    }
    let max = max_text(chat);
    let raw = read_body(req.into_body(), max.saturating_add(ENVELOPE)).await?;
    let b: PushBody =
        serde_json::from_slice(&raw).map_err(|e| ChatError::BadJson(e.to_string()))?;
    let text = b.text.ok_or(ChatError::MissingField("text"))?;
    if text.is_empty() {
        return Err(ChatError::BadField {
            field: "text",
            why: "must not be empty",
        });
    }
    if text.len() > max {
        return Err(ChatError::TooLarge {
            len: text.len(),
            max,
        });
    }
    let from = UserName::parse(b.from.as_deref().unwrap_or(PUSH_FROM))?;
    let bus = chat.hub.bus();
    let delivered = match (b.room, b.user) {
        (Some(room), None) => {
            bus.push_room(RoomName::parse(&room)?, from, text.into())
                .await?
                .delivered
        }
        (None, Some(to)) => {
            bus.push_dm(from, UserName::parse(&to)?, text.into())
                .await?
                .delivered
        }
        (None, None) => return Err(ChatError::MissingField("room or user")),
        (Some(_), Some(_)) => {
            return Err(ChatError::BadField {
                field: "user",
                why: "cannot be combined with \"room\"",
            })
        }
    };
    Ok(json_response(
        StatusCode::OK,
        format!("{{\"delivered\":{delivered}}}"),
    ))
}

#[derive(Serialize)]
struct OnlineBody {
    users: Vec<OnlineUser>,
}

/// What a reader of `/api/online` and `/api/history` may see. Without
/// `[app.chat] auth` the API is open as before; with it, the request needs
/// the push token (everything) or a valid user token (its `rooms`).
fn reader(chat: &Chat, req: &Request<RequestBody>) -> Result<Grants, ChatError> {
    let Some(auth) = chat.auth() else {
        return Ok(Grants::all());
    };
    let push = chat.cfg().push_token.clone();
    if let (Some(given), Some(token)) = (bearer(req), push.as_ref().map(|t| t.as_str())) {
        if token_matches(given, token) {
            return Ok(Grants::all());
        }
    }
    Ok(auth.identify(req, false, false)?.grants)
}

/// The `Authorization: Bearer` token, if any.
fn bearer(req: &Request<RequestBody>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
}

pub(super) async fn online(
    chat: &Arc<Chat>,
    req: &Request<RequestBody>,
) -> Result<Response<Body>, ChatError> {
    reader(chat, req)?;
    let users = chat.hub.bus().online().await?;
    let body = serde_json::to_vec(&OnlineBody { users }).map_err(BusError::from)?;
    Ok(json_response(StatusCode::OK, body))
}

pub(super) async fn history(
    chat: &Arc<Chat>,
    req: &Request<RequestBody>,
) -> Result<Response<Body>, ChatError> {
    let grants = reader(chat, req)?;
    let room =
        RoomName::parse(&query_param(req.uri(), "room").ok_or(ChatError::MissingField("room"))?)?;
    grants.check_room(&room)?;
    let limit = match query_param(req.uri(), "limit") {
        None => DEFAULT_HISTORY_LIMIT,
        Some(l) => super::whole_number(&l)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .ok_or(ChatError::BadField {
                field: "limit",
                why: "must be a whole number >= 0",
            })?,
    };
    let messages = chat
        .hub
        .bus()
        .history(room.clone(), 0, limit.min(chat.cfg().history))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        Event::encode(&HistoryFrame {
            room: &room,
            messages: &messages,
        })?
        .json,
    ))
}
