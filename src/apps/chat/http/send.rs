//! `POST /send`: one client frame from `?user=`, executed as if it came over a
//! WebSocket; `join`/`leave` act on the user's SSE streams and poll sessions.

use std::sync::Arc;

use crate::body::RequestBody;
use bytes::Bytes;
use http::{Request, Response, StatusCode};

use super::{json_response, max_text, read_body, sender_of};
use crate::apps::chat::hub::Actor;
use crate::apps::chat::protocol::{ChatError, ClientFrame, ENVELOPE};
use crate::apps::chat::Chat;
use crate::body::Body;

pub(super) async fn send(
    chat: &Arc<Chat>,
    req: Request<RequestBody>,
) -> Result<Response<Body>, ChatError> {
    let user = sender_of(&req)?;
    let max = max_text(chat);
    let body = read_body(req.into_body(), max.saturating_add(ENVELOPE), max).await?;
    let frame = ClientFrame::parse(&body, max)?;
    let reply = chat.hub.execute(Actor::Http(&user), frame).await?;
    Ok(json_response(
        StatusCode::OK,
        reply.map_or(Bytes::from_static(br#"{"type":"ok"}"#), |e| e.json),
    ))
}
