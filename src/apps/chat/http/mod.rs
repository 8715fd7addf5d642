//! Plain HTTP under the chat route: the demo page, the fallback transports for
//! clients without WebSocket, and the API.
//!
//! | path           | does                                                            |
//! |----------------|-----------------------------------------------------------------|
//! | `` (bare)      | 308 to `PREFIX/`                                                |
//! | `/`            | the demo page ([`super::page`])                                 |
//! | `/sse`         | `text/event-stream` of the WebSocket frames, resumable          |
//! | `/poll`        | long-poll with history cursors                                  |
//! | `/send`        | one client frame from `?user=`                                  |
//! | `/api/push`    | server-side publish (Bearer `push_token`)                       |
//! | `/api/online`  | who is connected, and where                                     |
//! | `/api/history` | a room's last messages                                          |
//!
//! SSE streams are hub connections like WebSocket sessions (bounded outbox; an
//! overflow ends the stream and the browser resumes with `Last-Event-ID`).
//! Long-poll clients get a node-local session, kept between polls until
//! `poll_idle_timeout` passes without one; room messages always come from
//! history by cursor, so a poll may go to any node.
//!
//! This module routes and holds the helpers every endpoint shares (query
//! parameters, JSON and error responses, bounded bodies); [`sse`], [`poll`],
//! [`send`] and [`api`] hold the endpoints.

mod api;
mod poll;
mod send;
mod sse;

use std::sync::Arc;

use crate::body::RequestBody;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use percent_encoding::percent_decode_str;

pub(super) use self::poll::{PollKey, PollSession};
use super::protocol::{parse_rooms, ChatError, RoomName, UserName};
use super::{page, Chat};
use crate::body::full;
use crate::body::Body;

/// The part of `path` under the route `prefix` (`""`, `"/"`, `"/sse"`...), or
/// `None` when `path` is not under it.
pub(super) fn subpath<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix.trim_end_matches('/'))?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// The percent-decoded value of query parameter `key` (first occurrence).
pub(super) fn query_param(uri: &Uri, key: &str) -> Option<String> {
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k) == key).then(|| decode(v))
    })
}

/// A whole number given as decimal digits; one too large for a `u64` is
/// the largest, since every such parameter (`limit`, `timeout`) is capped
/// anyway: a client asking for "as many as there are" gets them.
pub(super) fn whole_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

/// `?user=`: validated when present, a made-up `guest-…` name when absent.
pub(super) fn user_or_guest(uri: &Uri) -> Result<UserName, ChatError> {
    match query_param(uri, "user") {
        None => Ok(UserName::guest()),
        Some(u) => Ok(UserName::parse(&u)?),
    }
}

/// The user a request acts as: on a route with `auth`, the verified token's
/// subject (`?user=` is ignored: it would let anyone be anyone); else
/// `?user=`, or a guest name when absent.
pub(super) fn user_of<B>(req: &Request<B>) -> Result<UserName, ChatError> {
    authenticated_user(req).unwrap_or_else(|| user_or_guest(req.uri()))
}

/// [`user_of`] where a guest name would make no sense (sending).
fn sender_of<B>(req: &Request<B>) -> Result<UserName, ChatError> {
    authenticated_user(req).unwrap_or_else(|| user_required(req.uri()))
}

/// The user the route's authentication named; `None` when the route does
/// not authenticate. A client authenticated without a user is refused: it
/// must not be whoever its `?user=` says.
fn authenticated_user<B>(req: &Request<B>) -> Option<Result<UserName, ChatError>> {
    let ext = req.extensions();
    if let Some(u) = ext.get::<crate::ctx::User>() {
        return Some(UserName::parse(&u.0).map_err(ChatError::from));
    }
    ext.get::<crate::ctx::NoUser>()
        .map(|_| Err(ChatError::TokenNamesNoUser))
}

/// `?user=` where a guest name would make no sense (sending).
fn user_required(uri: &Uri) -> Result<UserName, ChatError> {
    let user = query_param(uri, "user").ok_or(ChatError::MissingField("user"))?;
    Ok(UserName::parse(&user)?)
}

/// `?rooms=`, at most `max_rooms_per_connection` of them.
fn rooms_param(chat: &Chat, uri: &Uri) -> Result<Vec<RoomName>, ChatError> {
    let max = chat.cfg().max_rooms_per_connection;
    parse_rooms(&query_param(uri, "rooms").unwrap_or_default(), max)
}

fn max_text(chat: &Chat) -> usize {
    usize::try_from(chat.cfg().max_message_size).unwrap_or(usize::MAX)
}

pub(super) async fn handle(
    chat: &Arc<Chat>,
    req: Request<RequestBody>,
    prefix: &str,
    client: std::net::IpAddr,
) -> Result<Response<Body>, ChatError> {
    let Some(rest) = subpath(req.uri().path(), prefix) else {
        return Err(ChatError::NotFound);
    };
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let post = req.method() == Method::POST;
    match rest {
        "" => Ok(redirect_to_slash(&req, prefix)),
        "/" | "/index.html" if get => Ok(page::response(req.method() == Method::HEAD)),
        "/sse" if get => sse::sse(chat, &req, client).await,
        "/poll" if get => poll::poll(chat, &req, client).await,
        "/send" if post => send::send(chat, req).await,
        "/api/push" if post => api::push(chat, req).await,
        "/api/online" if get => api::online(chat, &req).await,
        "/api/history" if get => api::history(chat, &req).await,
        "/" | "/index.html" | "/sse" | "/poll" | "/api/online" | "/api/history" => {
            Err(ChatError::MethodNotAllowed("GET"))
        }
        "/send" | "/api/push" => Err(ChatError::MethodNotAllowed("POST")),
        _ => Err(ChatError::NotFound),
    }
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `/chat` → `/chat/`, keeping the query (`?user=alice`), so the page's
/// relative URLs resolve under the route.
fn redirect_to_slash<B>(req: &Request<B>, prefix: &str) -> Response<Body> {
    let mut loc = format!("{}/", prefix.trim_end_matches('/'));
    if let Some(q) = req.uri().query() {
        loc.push('?');
        loc.push_str(q);
    }
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&loc) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Reads a request body of at most `limit` bytes (not further: how long the
/// rest is, nobody read).
async fn read_body(body: RequestBody, limit: usize) -> Result<Bytes, ChatError> {
    match Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ChatError::BodyTooLarge { limit })
        }
        Err(e) => Err(ChatError::Body(e.to_string())),
    }
}

#[cfg(test)]
mod tests;
