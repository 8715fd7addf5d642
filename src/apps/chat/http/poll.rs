//! `GET /poll`: long-poll. Each client gets a node-local session (a hub
//! connection whose live events wait in a bounded ring), kept between polls
//! until `poll_idle_timeout` passes without one. Room messages always come from
//! history by cursor, so a poll may go to any node.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::body::RequestBody;
use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use http::{Request, Response, StatusCode};
use tokio::time::{sleep_until, Instant};

use super::{json_response, query_param, rooms_param};
use crate::apps::chat::bus::BusError;
use crate::apps::chat::hub::{Conn, LiveRing};
use crate::apps::chat::identity::Identity;
use crate::apps::chat::protocol::{
    ChatError, Cursor, Event, Head, Reset, RoomName, RoomStart, RoomStarts, Since, UserName,
    Verdict, Welcome,
};
use crate::apps::chat::Chat;
use crate::body::Body;

/// Longest long-poll wait (docs/chat-protocol.md).
const POLL_WAIT: u64 = 25;

/// A poll session is shared by the polls of one user with one room list.
pub(crate) type PollKey = (UserName, String);

/// A long-poll client between and during polls: a hub connection (so it counts
/// in presence and receives DMs) whose live events wait in a bounded ring.
pub(crate) struct PollSession {
    conn: Arc<Conn>,
    /// Held for the session's life: its place in its address's count.
    _slot: PollSlot,
    ring: Arc<LiveRing>,
    /// Room heads when the session began: where its first poll starts.
    start: BTreeMap<RoomName, Head>,
    /// Its paced drain stop (a WebSocket session's): a drain answers its
    /// waiting poll, then ends it, at its turn within the window, so the
    /// user stays online and gets DMs until then.
    stop: crate::shutdown::Stop,
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

/// A poll session's place in its client address's count, given back when
/// the session is dropped. Long-poll sessions outlive their requests, so
/// `max_connections_per_ip` does not bound them: one client making sessions
/// for new users would otherwise hold memory and fan-out work for each until
/// `poll_idle_timeout`.
pub(crate) struct PollSlot {
    clients: Arc<DashMap<IpAddr, usize>>,
    ip: IpAddr,
}

impl PollSlot {
    fn take(chat: &Chat, ip: IpAddr) -> Result<Self, ChatError> {
        let cfg = chat.cfg();
        if chat.polls.len() >= cfg.max_poll_sessions {
            return Err(ChatError::PollSessionsFull);
        }
        let cap = cfg.max_poll_sessions_per_ip;
        let mut n = chat.poll_clients.entry(ip).or_insert(0);
        if cap > 0 && *n >= cap {
            return Err(ChatError::TooManyPollSessions(cap));
        }
        *n += 1;
        Ok(Self {
            clients: chat.poll_clients.clone(),
            ip,
        })
    }
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.clients.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
        }
        self.clients.remove_if(&self.ip, |_, n| *n == 0);
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
    who: &Identity,
    rooms: &[RoomName],
    client: IpAddr,
) -> Result<(Arc<PollSession>, bool), ChatError> {
    let user = &who.user;
    let mut names: Vec<&str> = rooms.iter().map(RoomName::as_str).collect();
    names.sort_unstable();
    let key: PollKey = (user.clone(), names.join(","));
    if let Some(s) = chat.polls.get(&key).map(|s| s.clone()) {
        return Ok((s, false));
    }
    let slot = PollSlot::take(chat, client)?;
    // In a task of its own: the request may be dropped (a reset stream, a
    // client gone) while the session is set up, and a connection registered
    // in the hub, or half disconnected, must not be left with no session
    // to end it.
    let setup = tokio::spawn(set_up(chat.clone(), who.clone(), rooms.to_vec(), key, slot));
    setup.await.unwrap_or_else(|_| {
        Err(ChatError::Bus(BusError::Unavailable(
            "setting up the poll session failed".into(),
        )))
    })
}

/// Makes the poll session `key` (the slot already taken), or finds the one a
/// concurrent first poll made meanwhile.
async fn set_up(
    chat: Arc<Chat>,
    who: Identity,
    rooms: Vec<RoomName>,
    key: PollKey,
    slot: PollSlot,
) -> Result<(Arc<PollSession>, bool), ChatError> {
    // Admitted before reading heads, which may make each room's epoch in
    // the shared store: a refused session must leave nothing there.
    chat.hub.check_rooms(slot.ip, &rooms)?;
    let (conn, ring) = chat.hub.connect_poll(chat.newcomer(&who, slot.ip)).await?;
    let heads = match chat.hub.bus().heads(rooms.clone()).await {
        Ok(h) => h,
        Err(e) => {
            chat.hub.disconnect(&conn).await;
            return Err(e.into());
        }
    };
    for room in &rooms {
        if let Err(e) = chat.hub.join(&conn, room, None).await {
            chat.hub.disconnect(&conn).await;
            return Err(e);
        }
    }
    let session = Arc::new(PollSession {
        conn,
        _slot: slot,
        ring,
        start: rooms.iter().cloned().zip(heads).collect(),
        stop: chat.shutdown.session_stop(),
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
            _ = session.stop.cancelled() => {
                session.state().reaped = true;
                break;
            }
        }
    }
    chat.polls.remove_if(&key, |_, s| Arc::ptr_eq(s, &session));
    chat.hub.disconnect(&session.conn).await;
}

/// The `recovery` frame of a room whose history stream changed.
fn reset(room: &RoomName, head: &Head) -> Result<Bytes, ChatError> {
    Ok(Event::encode(&Reset {
        room,
        epoch: head.epoch.clone(),
        offset: head.offset,
        recovered: false,
    })?
    .json)
}

pub(super) async fn poll(
    chat: &Arc<Chat>,
    req: &Request<RequestBody>,
    client: IpAddr,
) -> Result<Response<Body>, ChatError> {
    let uri = req.uri();
    // Every poll shows its token: once it has expired the poll is a 401.
    let who = chat.identify(req, false)?;
    let user = who.user.clone();
    let rooms = rooms_param(chat, uri)?;
    for room in &rooms {
        who.grants.check_room(room)?;
    }
    let cursor = query_param(uri, "cursor")
        .filter(|c| !c.is_empty())
        .map(|c| Cursor::parse(&c))
        .transpose()?;
    let wait = match query_param(uri, "timeout") {
        None => POLL_WAIT,
        Some(t) => super::whole_number(&t).ok_or(ChatError::BadField {
            field: "timeout",
            why: "must be whole seconds",
        })?,
    }
    .min(POLL_WAIT);
    let (session, created) = loop {
        let (s, created) = poll_session(chat, &who, &rooms, client).await?;
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
    let mut epochs: BTreeMap<RoomName, String> = BTreeMap::new();
    let mut events: Vec<Bytes> = Vec::new();
    if first {
        let starts: RoomStarts = session
            .start
            .iter()
            .map(|(room, h)| {
                let start = RoomStart {
                    epoch: h.epoch.clone(),
                    offset: h.offset,
                    recovered: None,
                };
                (room.clone(), start)
            })
            .collect();
        events.push(
            Event::encode(&Welcome {
                user: &user,
                node: &chat.node,
                rooms: Some(&starts),
            })?
            .json,
        );
    }
    for (room, head) in joined.into_iter().zip(heads) {
        let p = match given.rooms.get(&room) {
            Some(&p) => {
                let since = Since {
                    offset: p,
                    epoch: given.epochs.get(&room).cloned(),
                };
                match since.verdict(&head) {
                    Verdict::Replay { after } => after,
                    // History was lost (or the cursor is from elsewhere):
                    // say so, and start again with what the new one holds.
                    Verdict::Lost => {
                        events.push(reset(&room, &head)?);
                        0
                    }
                }
            }
            None if first && created => session.start.get(&room).map_or(head.offset, |h| h.offset),
            None => head.offset,
        };
        epochs.insert(room.clone(), head.epoch.to_string());
        pos.insert(room, p);
    }
    let mut live_after = match given.live {
        Some(n) => session.ring.resume_from(n),
        // A new session's own events (its presence acknowledgements) are news.
        None if created => 0,
        None => session.ring.now(),
    };
    // A first poll answers at once: it only hands out the cursor to continue from.
    let deadline = Instant::now() + Duration::from_secs(if first { 0 } else { wait });
    // A drain answers waiting polls spread over its window (the session's
    // paced stop), as it closes WebSocket sessions and ends SSE streams:
    // all at once, every client would poll again (another node) in the
    // same moment.
    let stop = &session.stop;
    let mut drained = false;
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
            _ = stop.cancelled() => {
                drained = true;
                break;
            }
        }
    }
    session.ring.handed_to(live_after);
    let next = Cursor {
        rooms: pos,
        epochs,
        live: Some(live_after),
    };
    let mut body = BytesMut::new();
    body.put_slice(b"{\"cursor\":");
    body.put_slice(&serde_json::to_vec(&next.to_string()).map_err(BusError::from)?);
    body.put_slice(b",\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(e);
    }
    body.put_slice(b"]");
    if drained {
        // A reconnect delay within the window: the next polls stay spread.
        let ms = chat.shutdown.pace.reconnect_ms();
        body.put_slice(format!(",\"retry\":{ms}").as_bytes());
    }
    body.put_slice(b"}");
    Ok(json_response(StatusCode::OK, body.freeze()))
}
