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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::task::TaskTracker;

use super::bus::OnlineUser;
use super::hub::{Actor, Conn, ConnKind, Hub, LiveRing};
use super::protocol::{
    parse_rooms, ChatError, ClientFrame, Cursor, Event, HistoryFrame, RoomName, UserName, Welcome,
    DEFAULT_HISTORY_LIMIT, ENVELOPE,
};
use super::{page, Chat};
use crate::body::full;
use crate::body::{Body, BoxError};

/// SSE comment lines at this interval keep idle proxies from cutting the stream
/// (and reveal a vanished client at the next write).
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// Longest long-poll wait (spec §4).
const POLL_WAIT: u64 = 25;
/// Bytes of SSE events gathered into one body chunk.
const SSE_CHUNK: usize = 64 * 1024;
/// The `from` of pushed messages that do not name one.
const PUSH_FROM: &str = "system";

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

/// `?user=`: validated when present, a made-up `guest-…` name when absent.
pub(super) fn user_or_guest(uri: &Uri) -> Result<UserName, ChatError> {
    match query_param(uri, "user") {
        None => Ok(UserName::guest()),
        Some(u) => Ok(UserName::parse(&u)?),
    }
}

/// `?user=` where a guest name would make no sense (sending).
fn user_required(uri: &Uri) -> Result<UserName, ChatError> {
    let user = query_param(uri, "user").ok_or(ChatError::MissingField("user"))?;
    Ok(UserName::parse(&user)?)
}

fn rooms_param(uri: &Uri) -> Result<Vec<RoomName>, ChatError> {
    parse_rooms(&query_param(uri, "rooms").unwrap_or_default())
}

fn max_text(chat: &Chat) -> usize {
    usize::try_from(chat.cfg().max_message_size).unwrap_or(usize::MAX)
}

pub(super) async fn handle(
    chat: &Arc<Chat>,
    req: Request<Incoming>,
    prefix: &str,
) -> Response<Body> {
    let Some(rest) = subpath(req.uri().path(), prefix) else {
        return error_response(&ChatError::NotFound);
    };
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let post = req.method() == Method::POST;
    let result = match rest {
        "" => Ok(redirect_to_slash(&req, prefix)),
        "/" | "/index.html" if get => Ok(page::response(req.method() == Method::HEAD)),
        "/sse" if get => sse(chat, &req).await,
        "/poll" if get => poll(chat, &req).await,
        "/send" if post => send(chat, req).await,
        "/api/push" if post => push(chat, req).await,
        "/api/online" if get => online(chat).await,
        "/api/history" if get => history(chat, &req).await,
        "/" | "/index.html" | "/sse" | "/poll" | "/api/online" | "/api/history" => {
            Err(ChatError::MethodNotAllowed("GET"))
        }
        "/send" | "/api/push" => Err(ChatError::MethodNotAllowed("POST")),
        _ => Err(ChatError::NotFound),
    };
    result.unwrap_or_else(|e| error_response(&e))
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

/// The `error` frame as a JSON body, with the status the error calls for.
fn error_response(e: &ChatError) -> Response<Body> {
    let mut r = json_response(e.http_status(), Event::error(e).json);
    match e {
        ChatError::Unauthorized => {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wsgate chat\""),
            );
        }
        ChatError::MethodNotAllowed(m) => {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(m));
        }
        _ => {}
    }
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

/// Reads a request body of at most `limit` bytes.
async fn read_body(body: Incoming, limit: usize, max_text: usize) -> Result<Bytes, ChatError> {
    match Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ChatError::TooLarge {
            len: limit + 1,
            max: max_text,
        }),
        Err(e) => Err(ChatError::Body(e.to_string())),
    }
}

// ---- connection cleanup ---------------------------------------------------------

/// Disconnects a hub connection when dropped: an SSE body is dropped when its
/// client goes away, and dropping cannot wait, so the cleanup (presence leave,
/// online registry) runs as a task on the session tracker.
struct ConnGuard {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
    tracker: TaskTracker,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let (hub, conn) = (self.hub.clone(), self.conn.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tracker
                .spawn_on(async move { hub.disconnect(&conn).await }, &rt);
        }
    }
}

// ---- SSE ------------------------------------------------------------------------

/// Appends one SSE event, advancing the cursor; a room message the client
/// already has (from the history replay) is skipped.
fn sse_event(cursor: &mut Cursor, ev: &Event, buf: &mut BytesMut) {
    if let Some((room, id)) = &ev.pos {
        if cursor.rooms.get(room).is_some_and(|seen| id <= seen) {
            return;
        }
        cursor.rooms.insert(room.clone(), *id);
    }
    buf.put_slice(b"id: ");
    buf.put_slice(cursor.to_string().as_bytes());
    buf.put_slice(b"\ndata: ");
    // serde_json output has no raw newlines, so one data line holds the frame.
    buf.put_slice(&ev.json);
    buf.put_slice(b"\n\n");
}

async fn sse(chat: &Arc<Chat>, req: &Request<Incoming>) -> Result<Response<Body>, ChatError> {
    let user = user_or_guest(req.uri())?;
    let rooms = rooms_param(req.uri())?;
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_param(req.uri(), "last_event_id"))
        .filter(|s| !s.trim().is_empty())
        .map(|s| Cursor::parse(&s))
        .transpose()?;
    let bus = chat.hub.bus().clone();
    // Heads before joining: anything published after this arrives live.
    let heads = bus.heads(rooms.clone()).await?;
    let mut cursor = Cursor::default();
    for (room, head) in rooms.iter().zip(heads) {
        let pos = match resume.as_ref().and_then(|c| c.rooms.get(room)) {
            Some(&p) if p <= head => p,
            // Ids from before a restart: replay whatever history there is.
            Some(_) => 0,
            None => head,
        };
        cursor.rooms.insert(room.clone(), pos);
    }
    let (conn, rx) = chat.hub.connect(user.clone(), ConnKind::Sse, None).await?;
    let guard = ConnGuard {
        hub: chat.hub.clone(),
        conn: conn.clone(),
        tracker: chat.shutdown.sessions.clone(),
    };
    for room in &rooms {
        chat.hub.join(&conn, room).await?;
    }
    let mut first = BytesMut::new();
    first.put_slice(b"retry: 2000\n\n");
    let welcome = Event::encode(&Welcome {
        user: &user,
        node: &chat.node,
    })?;
    sse_event(&mut cursor, &welcome, &mut first);
    if resume.is_some() {
        for room in &rooms {
            let after = cursor.rooms.get(room).copied().unwrap_or(0);
            for m in bus.history(room.clone(), after, chat.cfg().history).await? {
                sse_event(&mut cursor, &Event::msg(&m)?, &mut first);
            }
        }
    }
    let state = SseState {
        chat: chat.clone(),
        _guard: guard,
        conn,
        rx,
        cursor,
        first: Some(first.freeze()),
        keepalive: tokio::time::interval_at(Instant::now() + SSE_KEEPALIVE, SSE_KEEPALIVE),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let chunk = st.next_chunk().await?;
        Some((Ok::<_, BoxError>(Frame::data(chunk)), st))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell nginx-style buffering proxies in front of us not to hold events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

struct SseState {
    chat: Arc<Chat>,
    _guard: ConnGuard,
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Event>,
    cursor: Cursor,
    first: Option<Bytes>,
    keepalive: tokio::time::Interval,
}

enum SseStep {
    End,
    Event(Event),
    KeepAlive,
}

impl SseState {
    /// The next body chunk, or `None` to end the stream (shutdown, overflow).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            let step = tokio::select! {
                biased;
                _ = self.chat.shutdown.token.cancelled() => SseStep::End,
                _ = self.conn.kicked().cancelled() => {
                    self.chat.hub.note_overflow();
                    SseStep::End
                }
                ev = self.rx.recv() => ev.map_or(SseStep::End, SseStep::Event),
                _ = self.keepalive.tick() => SseStep::KeepAlive,
            };
            match step {
                SseStep::End => return None,
                SseStep::KeepAlive => return Some(Bytes::from_static(b": keep-alive\n\n")),
                SseStep::Event(ev) => {
                    let mut buf = BytesMut::new();
                    sse_event(&mut self.cursor, &ev, &mut buf);
                    while buf.len() < SSE_CHUNK {
                        match self.rx.try_recv() {
                            Ok(ev) => sse_event(&mut self.cursor, &ev, &mut buf),
                            Err(_) => break,
                        }
                    }
                    if !buf.is_empty() {
                        return Some(buf.freeze());
                    }
                }
            }
        }
    }
}

// ---- long-poll ------------------------------------------------------------------

/// A poll session is shared by the polls of one user with one room list.
pub(super) type PollKey = (UserName, String);

/// A long-poll client between and during polls: a hub connection (so it counts
/// in presence and receives DMs) whose live events wait in a bounded ring.
pub(super) struct PollSession {
    conn: Arc<Conn>,
    ring: Arc<LiveRing>,
    /// Room heads when the session began: where its first poll starts.
    start: BTreeMap<RoomName, u64>,
    state: Mutex<PollState>,
}

struct PollState {
    last_poll: Instant,
    active: usize,
    reaped: bool,
}

impl PollSession {
    fn state(&self) -> std::sync::MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a poll in progress; false when the session was already reaped.
    fn begin(&self) -> bool {
        let mut s = self.state();
        if s.reaped {
            return false;
        }
        s.active += 1;
        s.last_poll = Instant::now();
        true
    }

    fn end(&self) {
        let mut s = self.state();
        s.active = s.active.saturating_sub(1);
        s.last_poll = Instant::now();
    }

    /// Reaps the session if idle for `idle`; else returns when to look again.
    fn reap_if_idle(&self, idle: Duration) -> Option<Instant> {
        let mut s = self.state();
        let due = s.last_poll + idle;
        if s.active == 0 && due <= Instant::now() {
            s.reaped = true;
            None
        } else {
            Some(due.max(Instant::now() + Duration::from_millis(10)))
        }
    }
}

/// Ends a poll (even when the request is dropped mid-wait).
struct Polling<'a>(&'a PollSession);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The session for `user` and `rooms`, created (and joined to the rooms) on
/// first use. Returns whether it was created by this call.
async fn poll_session(
    chat: &Arc<Chat>,
    user: &UserName,
    rooms: &[RoomName],
) -> Result<(Arc<PollSession>, bool), ChatError> {
    let mut names: Vec<&str> = rooms.iter().map(RoomName::as_str).collect();
    names.sort_unstable();
    let key: PollKey = (user.clone(), names.join(","));
    if let Some(s) = chat.polls.get(&key).map(|s| s.clone()) {
        return Ok((s, false));
    }
    let heads = chat.hub.bus().heads(rooms.to_vec()).await?;
    let (conn, ring) = chat.hub.connect_poll(user.clone()).await?;
    for room in rooms {
        if let Err(e) = chat.hub.join(&conn, room).await {
            chat.hub.disconnect(&conn).await;
            return Err(e);
        }
    }
    let session = Arc::new(PollSession {
        conn,
        ring,
        start: rooms.iter().cloned().zip(heads).collect(),
        state: Mutex::new(PollState {
            last_poll: Instant::now(),
            active: 0,
            reaped: false,
        }),
    });
    // A concurrent first poll may have made one meanwhile: the first one wins.
    let winner = chat
        .polls
        .entry(key.clone())
        .or_insert_with(|| session.clone())
        .clone();
    if !Arc::ptr_eq(&winner, &session) {
        chat.hub.disconnect(&session.conn).await;
        return Ok((winner, false));
    }
    let (chat2, s2) = (chat.clone(), session.clone());
    chat.shutdown
        .sessions
        .spawn(async move { reap_when_idle(chat2, key, s2).await });
    Ok((session, true))
}

/// Removes a poll session once nobody polled it for `poll_idle_timeout` (or at
/// shutdown): its user leaves its rooms and, if it was the last, goes offline.
async fn reap_when_idle(chat: Arc<Chat>, key: PollKey, session: Arc<PollSession>) {
    let idle = chat.cfg().poll_idle_timeout;
    while let Some(next) = session.reap_if_idle(idle) {
        tokio::select! {
            _ = sleep_until(next) => {}
            _ = chat.shutdown.token.cancelled() => {
                session.state().reaped = true;
                break;
            }
        }
    }
    chat.polls.remove_if(&key, |_, s| Arc::ptr_eq(s, &session));
    chat.hub.disconnect(&session.conn).await;
}

async fn poll(chat: &Arc<Chat>, req: &Request<Incoming>) -> Result<Response<Body>, ChatError> {
    let uri = req.uri();
    let user = user_or_guest(uri)?;
    let rooms = rooms_param(uri)?;
    let cursor = query_param(uri, "cursor")
        .filter(|c| !c.is_empty())
        .map(|c| Cursor::parse(&c))
        .transpose()?;
    let wait = match query_param(uri, "timeout") {
        None => POLL_WAIT,
        Some(t) => t.parse::<u64>().map_err(|_| ChatError::BadField {
            field: "timeout",
            why: "must be whole seconds",
        })?,
    }
    .min(POLL_WAIT);
    let (session, created) = loop {
        let (s, created) = poll_session(chat, &user, &rooms).await?;
        if s.begin() {
            break (s, created);
        }
    };
    let _polling = Polling(&session);
    let bus = chat.hub.bus().clone();
    let first = cursor.is_none();
    let given = cursor.unwrap_or_default();

    let joined = session.conn.rooms();
    let heads = bus.heads(joined.clone()).await?;
    let mut pos: BTreeMap<RoomName, u64> = BTreeMap::new();
    for (room, head) in joined.into_iter().zip(heads) {
        let p = match given.rooms.get(&room) {
            Some(&p) if p <= head => p,
            Some(_) => 0,
            None if first && created => session.start.get(&room).copied().unwrap_or(head),
            None => head,
        };
        pos.insert(room, p);
    }
    let mut live_after = match given.live {
        Some(n) => n,
        // A new session's own events (its presence acknowledgements) are news.
        None if created => 0,
        None => session.ring.now(),
    };
    let mut events: Vec<Bytes> = Vec::new();
    if first {
        events.push(
            Event::encode(&Welcome {
                user: &user,
                node: &chat.node,
            })?
            .json,
        );
    }
    // A first poll answers at once: it only hands out the cursor to continue from.
    let deadline = Instant::now() + Duration::from_secs(if first { 0 } else { wait });
    loop {
        // Registered before looking, so an event arriving in between still wakes us.
        let notified = session.ring.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        for (n, ev) in session.ring.after(live_after) {
            live_after = n;
            events.push(ev.json);
        }
        for (room, p) in pos.iter_mut() {
            for m in bus.history(room.clone(), *p, chat.cfg().history).await? {
                *p = m.id;
                events.push(Event::msg(&m)?.json);
            }
        }
        if !events.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = sleep_until(deadline) => {}
            _ = chat.shutdown.token.cancelled() => break,
        }
    }
    let next = Cursor {
        rooms: pos,
        live: Some(live_after),
    };
    let mut body = BytesMut::new();
    body.put_slice(b"{\"cursor\":");
    body.put_slice(&serde_json::to_vec(&next.to_string()).map_err(super::bus::BusError::from)?);
    body.put_slice(b",\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(e);
    }
    body.put_slice(b"]}");
    Ok(json_response(StatusCode::OK, body.freeze()))
}

// ---- send -----------------------------------------------------------------------

async fn send(chat: &Arc<Chat>, req: Request<Incoming>) -> Result<Response<Body>, ChatError> {
    let user = user_required(req.uri())?;
    let max = max_text(chat);
    let body = read_body(req.into_body(), max.saturating_add(ENVELOPE), max).await?;
    let frame = ClientFrame::parse(&body, max)?;
    let reply = chat.hub.execute(Actor::Http(&user), frame).await?;
    Ok(json_response(
        StatusCode::OK,
        reply.map_or(Bytes::from_static(br#"{"type":"ok"}"#), |e| e.json),
    ))
}

// ---- API ------------------------------------------------------------------------

/// Compares tokens in constant time. Both are hashed first so that neither
/// their contents nor their lengths leak through timing.
fn token_matches(given: &str, expected: &str) -> bool {
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

async fn push(chat: &Arc<Chat>, req: Request<Incoming>) -> Result<Response<Body>, ChatError> {
    let cfg = chat.cfg();
    let Some(token) = cfg.push_token.as_deref() else {
        return Err(ChatError::PushDisabled);
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or(ChatError::Unauthorized)?;
    if !token_matches(given, token) {
        return Err(ChatError::Forbidden);
    }
    let max = max_text(chat);
    let raw = read_body(req.into_body(), max.saturating_add(ENVELOPE), max).await?;
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
            bus.publish_room(RoomName::parse(&room)?, from, text.into())
                .await?
                .delivered
        }
        (None, Some(to)) => {
            bus.publish_dm(from, UserName::parse(&to)?, text.into(), false)
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

async fn online(chat: &Arc<Chat>) -> Result<Response<Body>, ChatError> {
    let users = chat.hub.bus().online().await?;
    let body = serde_json::to_vec(&OnlineBody { users }).map_err(super::bus::BusError::from)?;
    Ok(json_response(StatusCode::OK, body))
}

async fn history(chat: &Arc<Chat>, req: &Request<Incoming>) -> Result<Response<Body>, ChatError> {
    let room =
        RoomName::parse(&query_param(req.uri(), "room").ok_or(ChatError::MissingField("room"))?)?;
    let limit = match query_param(req.uri(), "limit") {
        None => DEFAULT_HISTORY_LIMIT,
        Some(l) => l.parse::<usize>().map_err(|_| ChatError::BadField {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subpaths() {
        assert_eq!(subpath("/chat", "/chat"), Some(""));
        assert_eq!(subpath("/chat/sse", "/chat"), Some("/sse"));
        assert_eq!(subpath("/chat/sse", "/chat/"), Some("/sse"));
        assert_eq!(subpath("/chatty", "/chat"), None);
    }

    #[test]
    fn query() {
        let uri: Uri = "/x?a=1&user=al%69ce&rooms=a,b&e".parse().unwrap();
        assert_eq!(query_param(&uri, "user").as_deref(), Some("alice"));
        assert_eq!(query_param(&uri, "e").as_deref(), Some(""));
        assert_eq!(query_param(&uri, "zz"), None);
        assert!(user_or_guest(&"/x?user=a%20b".parse().unwrap()).is_err());
        assert!(user_or_guest(&"/x".parse().unwrap())
            .unwrap()
            .as_str()
            .starts_with("guest-"));
    }

    #[test]
    fn tokens() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cre"));
        assert!(!token_matches("", "x"));
    }
}
