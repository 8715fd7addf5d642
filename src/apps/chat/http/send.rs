//! `POST /send`: one client frame from `?user=` (with `[app.chat] auth`: from
//! the token's user), executed as if it came over a
//! WebSocket; `join`/`leave` act on the user's SSE streams and poll sessions.

use std::sync::Arc;

use crate::body::RequestBody;
use bytes::Bytes;
use http::{Request, Response, StatusCode};

use super::{json_response, max_text, read_body, sender_of};
use crate::apps::chat::hub::Actor;
use crate::apps::chat::identity::Grants;
use crate::apps::chat::protocol::{ChatError, ClientFrame, ENVELOPE};
use crate::apps::chat::Chat;
use crate::body::Body;

pub(super) async fn send(
    chat: &Arc<Chat>,
    req: Request<RequestBody>,
) -> Result<Response<Body>, ChatError> {
    let (user, grants) = match chat.auth() {
        // A guest's made-up name has no streams to act on, and guests may
        // not send: /send needs a token.
        Some(a) => {
            let id = a.identify(&req, false, false)?;
            (id.user, id.grants)
        }
        None => (sender_of(&req)?, Grants::all()),
    };
    let max = max_text(chat);
    let body = read_body(req.into_body(), max.saturating_add(ENVELOPE)).await?;
    let frame = ClientFrame::parse(&body, max)?;
    let reply = chat.hub.execute(Actor::Http(&user, &grants), frame).await?;
    Ok(json_response(
        StatusCode::OK,
        reply.map_or(Bytes::from_static(br#"{"type":"ok"}"#), |e| e.json),
    ))
}
