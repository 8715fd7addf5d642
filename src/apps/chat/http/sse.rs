//! `GET /sse`: a `text/event-stream` of the WebSocket frames. The stream is a
//! hub connection like a WebSocket session (bounded outbox; an overflow ends
//! it), and its event ids are history cursors, so a browser reconnecting with
//! `Last-Event-ID` resumes without losing a room message. With
//! `[app.chat] auth` the stream ends when its token expires.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::body::RequestBody;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

use super::{query_param, rooms_param};
use crate::apps::chat::hub::{Conn, ConnKind, Hub};
use crate::apps::chat::identity::deadline;
use crate::apps::chat::protocol::{
    complete, ChatError, Cursor, Event, Head, RoomName, RoomStart, RoomStarts, Since, Verdict,
    Welcome,
};
use crate::apps::chat::Chat;
use crate::body::{Body, BoxError};
use crate::shutdown::Stop;

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

/// Where a room of a new stream starts, and (for a resumed one) whether it
/// can be recovered: the cursor's position in the same epoch, else the start
/// of what history holds (the client may have missed messages).
fn start_of(resume: Option<&Cursor>, room: &RoomName, head: &Head) -> (u64, Option<bool>) {
    let Some(c) = resume else {
        return (head.offset, None);
    };
    let Some(&offset) = c.rooms.get(room) else {
        return (head.offset, None);
    };
    let since = Since {
        offset,
        epoch: c.epochs.get(room).cloned(),
    };
    match since.verdict(head) {
        Verdict::Replay { after } => (after, Some(true)),
        Verdict::Lost => (0, Some(false)),
    }
}

pub(super) async fn sse(
    chat: &Arc<Chat>,
    req: &Request<RequestBody>,
    client: IpAddr,
) -> Result<Response<Body>, ChatError> {
    let who = chat.identify(req, false)?;
    let user = who.user.clone();
    let rooms = rooms_param(chat, req.uri())?;
    for room in &rooms {
        who.grants.check_room(room)?;
    }
    let header = match req.headers().get("last-event-id").map(|v| v.to_str()) {
        // Not text is no cursor: refused as one that does not parse, not
        // taken as absent (which would start live and skip the gap).
        Some(Err(_)) => return Err(ChatError::BadCursor("\u{FFFD}".into())),
        Some(Ok(v)) => Some(v.to_owned()),
        None => None,
    };
    let resume = header
        .or_else(|| query_param(req.uri(), "last_event_id"))
        .filter(|s| !s.trim().is_empty())
        .map(|s| Cursor::parse(&s))
        .transpose()?;
    // Admitted (the user's and the address's caps) before reading heads,
    // which may make each room's epoch in the shared store: a refused
    // stream must leave nothing there.
    chat.hub.check_rooms(client, &rooms)?;
    let (conn, rx) = chat
        .hub
        .connect(chat.newcomer(&who, client), ConnKind::Sse, None)
        .await?;
    let guard = ConnGuard {
        hub: chat.hub.clone(),
        conn: conn.clone(),
        tracker: chat.shutdown.sessions.clone(),
    };
    let bus = chat.hub.bus().clone();
    // Heads before joining: anything published after this arrives live.
    let heads = bus.heads(rooms.clone()).await?;
    let mut cursor = Cursor::default();
    let mut starts = RoomStarts::new();
    for (room, head) in rooms.iter().zip(heads) {
        let (pos, recovered) = start_of(resume.as_ref(), room, &head);
        cursor.rooms.insert(room.clone(), pos);
        cursor.epochs.insert(room.clone(), head.epoch.to_string());
        starts.insert(
            room.clone(),
            RoomStart {
                epoch: head.epoch,
                offset: head.offset,
                recovered,
            },
        );
    }
    // Where each room's live messages begin for this stream.
    let mut joined_at = Vec::with_capacity(rooms.len());
    for room in &rooms {
        joined_at.push(chat.hub.join(&conn, room, None).await?);
    }
    // What the stream missed: for a resumed one, since its cursor (checked
    // for gaps, aged out or trimmed, before the welcome says whether it was
    // recovered); for a new one, what was published between reading the
    // heads and joining, which reached neither the heads nor the outbox.
    // Messages that are also queued live are skipped by the cursor.
    let mut replay = Vec::new();
    for (room, &live_from) in rooms.iter().zip(&joined_at) {
        let after = cursor.rooms.get(room).copied().unwrap_or(0);
        if resume.is_none() && live_from == after {
            // Nothing was published in between: no history to read.
            continue;
        }
        let missed = match bus.history(room.clone(), after, chat.cfg().history).await {
            Ok(missed) => missed,
            // A new stream promised nothing before its welcome: history out
            // of reach (the shared store down) is no reason to refuse it.
            Err(e) if resume.is_none() => {
                tracing::debug!(error = %e, room = %room, "chat: SSE start without history");
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(st) = starts.get_mut(room).filter(|s| s.recovered == Some(true)) {
            st.recovered = Some(complete(after, st.offset, missed.iter().map(|m| m.id)));
        }
        replay.extend(missed);
    }
    let mut first = BytesMut::new();
    first.put_slice(b"retry: 2000\n\n");
    let welcome = Event::encode(&Welcome {
        user: &user,
        node: &chat.node,
        rooms: Some(&starts),
    })?;
    sse_event(&mut cursor, &welcome, &mut first);
    for m in &replay {
        sse_event(&mut cursor, &Event::msg(m)?, &mut first);
    }
    let state = SseState {
        // The drain ends streams spread over its window, as it closes
        // WebSocket sessions: all at once, every browser would reconnect at
        // the same moment (`retry: 2000` after the same close).
        stop: chat.shutdown.session_stop(),
        ending: false,
        chat: chat.clone(),
        _guard: guard,
        conn,
        rx,
        cursor,
        first: Some(first.freeze()),
        keepalive: tokio::time::interval_at(Instant::now() + SSE_KEEPALIVE, SSE_KEEPALIVE),
        // A stream cannot be refreshed: it ends when its token does, and the
        // browser reconnects with a fresh one (and `Last-Event-ID`).
        expiry: Box::pin(tokio::time::sleep_until(deadline(who.expires))),
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
    /// This stream's paced drain stop.
    stop: Stop,
    /// The drain's last chunk (a spread `retry:`) went out: end next.
    ending: bool,
    chat: Arc<Chat>,
    _guard: ConnGuard,
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Event>,
    cursor: Cursor,
    first: Option<Bytes>,
    keepalive: tokio::time::Interval,
    expiry: Pin<Box<Sleep>>,
}

enum SseStep {
    End,
    /// The drain reached this stream's slot.
    Drained,
    Event(Event),
    KeepAlive,
}

impl SseState {
    /// The next body chunk, or `None` to end the stream (shutdown, overflow).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.ending {
            return None;
        }
        loop {
            let step = tokio::select! {
                biased;
                _ = self.stop.cancelled() => SseStep::Drained,
                () = &mut self.expiry => SseStep::End,
                _ = self.conn.kicked().cancelled() => {
                    self.chat.hub.note_overflow();
                    SseStep::End
                }
                ev = self.rx.recv() => ev.map_or(SseStep::End, SseStep::Event),
                _ = self.keepalive.tick() => SseStep::KeepAlive,
            };
            match step {
                SseStep::End => return None,
                SseStep::Drained => {
                    // The browser waits `retry` before it reconnects: a
                    // random delay within the window spreads those too.
                    self.ending = true;
                    let ms = self.chat.shutdown.pace.reconnect_ms();
                    return Some(Bytes::from(format!("retry: {ms}\n\n")));
                }
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
