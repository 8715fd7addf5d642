//! `GET /sse`: a `text/event-stream` of the WebSocket frames. The stream is a
//! hub connection like a WebSocket session (bounded outbox; an overflow ends
//! it), and its event ids are history cursors, so a browser reconnecting with
//! `Last-Event-ID` resumes without losing a room message.

use std::sync::Arc;
use std::time::Duration;

use crate::body::RequestBody;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::{query_param, rooms_param, user_of};
use crate::apps::chat::hub::{Conn, ConnKind, Hub};
use crate::apps::chat::protocol::{ChatError, Cursor, Event, Welcome};
use crate::apps::chat::Chat;
use crate::body::{Body, BoxError};

/// SSE comment lines at this interval keep idle proxies from cutting the stream
/// (and reveal a vanished client at the next write).
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// Bytes of SSE events gathered into one body chunk.
const SSE_CHUNK: usize = 64 * 1024;

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

pub(super) async fn sse(
    chat: &Arc<Chat>,
    req: &Request<RequestBody>,
) -> Result<Response<Body>, ChatError> {
    let user = user_of(req)?;
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
