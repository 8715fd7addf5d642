//! WebSocket sessions: the upgrade (user name checked first, so a bad one is a
//! 400 at the handshake), then one task per connection that reads client
//! frames, executes them on the hub, and writes the connection's outbox to the
//! socket.
//!
//! The task is the only owner of the socket, so reading and writing take turns;
//! a write that cannot progress (the client stopped reading) is still
//! interrupted by the three ways a session is ended from outside:
//! - the outbox overflowed (`send_queue` frames behind): close 1008;
//! - the gateway is draining: close 1012 `reconnect <ms>`, paced over
//!   `server.drain_window` (`shutdown::Pace`);
//! - the client said nothing, not even a pong, for two `ping_interval`s: close 1011.
//!
//! Message rate (`message_rate`, `message_burst`): a frame over it is dropped
//! and answered with a `rate_limited` error frame; the third time within
//! [`STRIKE_WINDOW`] the session is closed with 1008.
//!
//! Tokens (`[app.chat] auth`): a session whose token expires (plus leeway)
//! without a `refresh` frame bringing a newer one is closed with 4001; a good
//! refresh is answered `refreshed` and its `rooms` apply to later joins.
//! `max_connections_per_user` is checked before the upgrade (429) and again,
//! atomically, when the session registers (a lost race closes with 1008).
//!
//! Size limits: a text frame over `max_message_size` (plus a small envelope for
//! the JSON around the text) is answered with a `too_large` error frame and the
//! connection stays open; the codec itself refuses frames over twice that
//! ([`hard_limit`]) with close 1009, before reading their payload.
//!
//! Bytes read and not yet delivered as a frame count against the process's
//! memory budget (`server.max_buffered`); a session it evicts is closed with
//! 1013 (`apps::codec::BUDGET_CLOSE`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::body::RequestBody;
use futures_util::SinkExt;
use http::{Request, Response};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use yawc::close::CloseCode;
use yawc::frame::{Frame, OpCode};
use yawc::WebSocket;

use super::hub::{Actor, Conn, ConnKind};
use super::identity::{deadline, Identity};
use super::protocol::{ChatError, ClientFrame, Event, Refreshed, Welcome, ENVELOPE};
use super::Chat;
use crate::access::SessionHold;
use crate::apps::error::AppError;
use crate::body::empty;
use crate::body::Body;
use crate::budget::Account;
use crate::limit::gcra::{Bucket, Gcra};
use crate::limit::Kind;
use crate::shutdown::{Stop, DRAIN_CLOSE};

/// How long closing may take (sending the close frame to a client that is not
/// reading, mostly) before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Queued events written per flush.
const WRITE_BATCH: usize = 64;
/// Three frames over the message rate within this closes the session.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// The codec's limit: frames above it close the connection with 1009.
pub fn hard_limit(max_message_size: u64) -> u64 {
    max_message_size
        .saturating_mul(2)
        .saturating_add(ENVELOPE as u64)
}

/// Completes a validated upgrade and spawns the session on the gateway's
/// session tracker (holding `slot`, so the connection counts against capacity).
pub fn accept(
    chat: &Arc<Chat>,
    mut req: Request<RequestBody>,
    who: Identity,
    slot: SessionHold,
    client: IpAddr,
) -> Result<Response<Body>, AppError> {
    let cap = chat.cfg().max_connections_per_user;
    if cap > 0 && chat.hub.conns_of(&who.user) >= cap {
        return Err(ChatError::TooManyConnections(cap).into());
    }
    // No compression: chat frames are small, and a deflate context per
    // connection costs far more memory than it saves.
    let opts = crate::apps::codec::options(hard_limit(chat.cfg().max_message_size), false);
    let account = chat.budget.open();
    // The drain's paced token, shared with other sessions: only waited on.
    let stop = chat.shutdown.session_stop();
    let (resp, up) =
        crate::apps::codec::upgrade(&mut req, opts, account.clone()).map_err(AppError::Upgrade)?;
    let rate = chat.cfg().message_rate.map(|r| MessageRate {
        bucket: Bucket::new(Gcra::new(r.rate.emission(), r.burst)),
        strikes: [None; 2],
        limited: slot
            .log
            .metrics()
            .limited("app.chat", Kind::Message.as_str()),
    });
    let shutdown = chat.shutdown.clone();
    let chat = chat.clone();
    let session = async move {
        let mut hold = slot;
        let Some(ws) = crate::apps::codec::upgraded(up, "chat").await else {
            return;
        };
        let code = run(&chat, ws, (who, client), &account, &stop, rate).await;
        hold.log.close_code = Some(code);
        if stop.is_cancelled() && !account.is_evicted() {
            hold.log.drained("app");
        }
    };
    shutdown.spawn_session(session);
    Ok(resp.map(|_| empty()))
}

/// A connection's `message_rate`: its bucket and its recent strikes.
struct MessageRate {
    bucket: Bucket,
    /// When the last two frames over the rate came, newest first.
    strikes: [Option<Instant>; 2],
    /// `wsgate_limited_total{limit="app.chat",kind="message"}`.
    limited: prometheus_client::metrics::counter::Counter,
}

/// What to do with a client frame under the message rate.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Pass,
    /// Drop it and tell the client.
    Drop,
    /// The third strike within the window: close 1008.
    Close,
}

impl MessageRate {
    fn admit(&mut self, now: Instant) -> Admit {
        if self.bucket.take().is_ok() {
            return Admit::Pass;
        }
        self.limited.inc();
        let third = self.strikes[1].is_some_and(|t| now.duration_since(t) < STRIKE_WINDOW);
        self.strikes = [Some(now), self.strikes[0]];
        if third {
            Admit::Close
        } else {
            Admit::Drop
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed, or the connection failed (the codec has already sent
    /// any close frame a protocol error calls for): the close code to record
    /// (the client's, the codec's, or 1006 for a connection that just ended).
    Client(u16),
    Overflow,
    Shutdown,
    /// The memory budget evicted the session.
    Evicted,
    Silent,
    /// Over the message rate three times within [`STRIKE_WINDOW`].
    RateLimited,
    /// The session task panicked (logged by `catch_panics`).
    Panicked,
    /// The token expired without a refresh.
    Expired,
}

/// The close code of an expired session (docs/chat-protocol.md).
const TOKEN_EXPIRED: u16 = 4001;

/// `ws` comes boxed: an `async fn` keeps a by-value argument and its moved
/// copy side by side, which for a ~900-byte codec doubled an idle session.
/// Returns the session's close code, for its access line and metrics.
async fn run<S>(
    chat: &Arc<Chat>,
    mut ws: Box<WebSocket<S>>,
    (who, client): (Identity, IpAddr),
    account: &Account,
    stop: &Stop,
    rate: Option<MessageRate>,
) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    let user = who.user.clone();
    let connected = match Event::encode(&Welcome {
        user: &user,
        node: &chat.node,
        rooms: None,
    }) {
        Ok(welcome) => {
            chat.hub
                .connect(
                    chat.newcomer(&who, client),
                    ConnKind::WebSocket,
                    Some(&welcome),
                )
                .await
        }
        Err(e) => Err(e.into()),
    };
    let (conn, rx) = match connected {
        Ok(c) => c,
        Err(e @ ChatError::TooManyConnections(_)) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                ws.send(Frame::close(CloseCode::Policy, e.to_string()))
                    .await?;
                ws.close().await
            })
            .await;
            return u16::from(CloseCode::Policy);
        }
        Err(e) => {
            tracing::warn!(error = %e, "chat: cannot register a WebSocket session");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                ws.send(Frame::close(CloseCode::Error, "chat unavailable"))
                    .await?;
                ws.close().await
            })
            .await;
            return u16::from(CloseCode::Error);
        }
    };
    // A panic in the session still leaves the hub below, so the user does not
    // stay listed as present with a dead connection.
    let s = Session {
        chat,
        conn: &conn,
        account,
        stop,
        expires: deadline(who.expires),
    };
    let end = crate::shutdown::catch_panics(s.run(&mut ws, rx, rate))
        .await
        .unwrap_or(End::Panicked);
    // Presence first: the others should not wait for a slow close.
    chat.hub.disconnect(&conn).await;
    if end == End::Overflow {
        chat.hub.note_overflow();
    }
    if end == End::Evicted {
        crate::apps::codec::close_evicted(&mut *ws).await;
        tracing::debug!(user = %user, ?end, "chat session closed by server.max_buffered");
        return u16::from(crate::apps::codec::BUDGET_CLOSE);
    }
    let drain_reason = match end {
        End::Shutdown => chat.shutdown.pace.close_reason(),
        _ => String::new(),
    };
    let close = match end {
        End::Client(_) => None,
        End::Overflow => Some((
            CloseCode::Policy,
            "send queue overflow: the client reads too slowly",
        )),
        End::Shutdown => Some((CloseCode::from(DRAIN_CLOSE), drain_reason.as_str())),
        // Closed above.
        End::Evicted => None,
        End::Silent => Some((CloseCode::Error, "no answer to pings")),
        End::RateLimited => Some((CloseCode::Policy, "message rate exceeded")),
        End::Panicked => Some((CloseCode::Error, "internal error")),
        End::Expired => Some((CloseCode::from(TOKEN_EXPIRED), "token expired")),
    };
    let code = match (&close, &end) {
        (Some((code, _)), _) => u16::from(*code),
        (None, End::Client(code)) => *code,
        (None, _) => 1006,
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        match close {
            Some((code, reason)) => ws.send(Frame::close(code, reason)).await?,
            // The codec has queued its answer to the client's close, or the
            // close its own error calls for (1009, 1002, 1007): a sink that is
            // ready has written it, and `close` then only flushes and shuts
            // down (it would send a 1000 of its own otherwise).
            None => std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?,
        }
        ws.close().await
    })
    .await;
    tracing::debug!(user = %user, ?end, secs = started.elapsed().as_secs_f64(), "chat session ended");
    code
}

/// What a running session needs besides its socket.
struct Session<'a> {
    chat: &'a Arc<Chat>,
    conn: &'a Arc<Conn>,
    account: &'a Account,
    /// The drain's paced stop token.
    stop: &'a Stop,
    /// When the session's token expires (a refresh moves it).
    expires: Instant,
}

impl Session<'_> {
    async fn run<S>(
        mut self,
        ws: &mut WebSocket<S>,
        mut rx: mpsc::Receiver<Event>,
        mut rate: Option<MessageRate>,
    ) -> End
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (chat, conn, account) = (self.chat, self.conn, self.account);
        let max_text = usize::try_from(chat.cfg().max_message_size).unwrap_or(usize::MAX);
        // Zero disables pings and the silence check.
        let every = if chat.cfg().ping_interval.is_zero() {
            Duration::from_secs(86_400 * 365)
        } else {
            chat.cfg().ping_interval
        };
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        // Made once, not per turn: a fresh `cancelled()` joins and leaves the
        // token's waiter list, and a fresh sleep registers a timer, on every
        // message. The silence timer is re-armed only when it fires early.
        let stopped = self.stop.cancelled();
        let evicted = account.evicted();
        let kicked = conn.kicked().cancelled();
        let mut armed_for = last_seen + every * 2;
        let silence = sleep_until(armed_for);
        let expiry = sleep_until(self.expires);
        tokio::pin!(stopped, evicted, kicked, silence, expiry);
        loop {
            let mut out: Vec<Frame> = Vec::new();
            tokio::select! {
                biased;
                // Eviction first: an evicted session closes with 1013 even
                // when a drain has reached it too.
                () = &mut evicted => return End::Evicted,
                () = &mut stopped => return End::Shutdown,
                () = &mut kicked => return End::Overflow,
                () = &mut expiry => return End::Expired,
                () = &mut silence => {
                    let silent_at = last_seen + every * 2;
                    if Instant::now() >= silent_at {
                        return End::Silent;
                    }
                    silence.as_mut().reset(silent_at);
                    armed_for = silent_at;
                    continue;
                }
                // Outbox before input: a client is only read from as fast as it can
                // be written to, and its own burst cannot starve its queue.
                ev = rx.recv() => {
                    let Some(ev) = ev else { return End::Client(1006) };
                    out.push(Frame::text(ev.json));
                    while out.len() < WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(ev) => out.push(Frame::text(ev.json)),
                            Err(_) => break,
                        }
                    }
                }
                frame = ws.next_frame() => {
                    let frame = match frame {
                        Ok(f) => f,
                        Err(e) => return End::Client(crate::apps::codec::close_code_for(&e)),
                    };
                    last_seen = Instant::now();
                    let data = matches!(frame.opcode(), OpCode::Text | OpCode::Binary);
                    match rate.as_mut().filter(|_| data).map(|r| r.admit(last_seen)) {
                        Some(Admit::Close) => return End::RateLimited,
                        Some(Admit::Drop) => {
                            conn.offer(&Event::error(&ChatError::RateLimited));
                            continue;
                        }
                        _ => {}
                    }
                    match frame.opcode() {
                        OpCode::Text | OpCode::Binary => account.message_delivered(),
                        _ => account.control_delivered(frame.payload().len()),
                    }
                    match frame.opcode() {
                        OpCode::Text => {
                            let reply = match ClientFrame::parse(frame.payload(), max_text) {
                                Ok(ClientFrame::Refresh { token }) => {
                                    let reply = self.refresh(&token);
                                    expiry.as_mut().reset(self.expires);
                                    Some(reply)
                                }
                                Ok(f) => execute(chat, conn, f).await,
                                Err(e) => Some(Event::error(&e)),
                            };
                            if let Some(reply) = reply {
                                conn.offer(&reply);
                            }
                            // One client frame per turn: a burst already buffered
                            // from this client must not fill the members' queues
                            // before their sessions get to run and drain them.
                            tokio::task::yield_now().await;
                        }
                        OpCode::Binary => {
                            conn.offer(&Event::error(&ChatError::Binary));
                        }
                        OpCode::Close => {
                            return End::Client(frame.close_code().map(u16::from).unwrap_or(1005))
                        }
                        _ => {}
                    }
                }
                _ = ping.tick() => out.push(Frame::ping(bytes::Bytes::new())),
            }
            if out.is_empty() {
                continue;
            }
            // The write may block on a client that stopped reading; keep watching
            // the reasons to give up on it meanwhile.
            let write = async {
                for f in out {
                    ws.feed(f).await?;
                }
                ws.flush().await
            };
            let silent_at = last_seen + every * 2;
            if armed_for != silent_at {
                silence.as_mut().reset(silent_at);
                armed_for = silent_at;
            }
            tokio::select! {
                r = write => if r.is_err() { return End::Client(1006) },
                () = &mut evicted => return End::Evicted,
                () = &mut stopped => return End::Shutdown,
                () = &mut kicked => return End::Overflow,
                () = &mut expiry => return End::Expired,
                () = &mut silence => return End::Silent,
            }
        }
    }

    /// A `refresh` frame: a good token for the same user moves the session's
    /// expiry and replaces its grants; anything else is an `error` frame and
    /// leaves both as they were.
    fn refresh(&mut self, token: &str) -> Event {
        let Some(auth) = self.chat.auth() else {
            return Event::error(&ChatError::RefreshUnsupported);
        };
        let id = match auth.refresh(&self.conn.user, token) {
            Ok(id) => id,
            Err(e) => return Event::error(&e),
        };
        self.conn.set_grants(id.grants);
        self.expires = deadline(id.expires);
        let expires = id
            .expires
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        Event::encode(&Refreshed { expires }).unwrap_or_else(|e| Event::error(&e.into()))
    }
}

/// Executes one parsed client frame; returns the reply for this connection
/// (`history`, `who`, or an `error` frame).
async fn execute(chat: &Chat, conn: &Arc<Conn>, frame: ClientFrame) -> Option<Event> {
    chat.hub
        .execute(Actor::Conn(conn), frame)
        .await
        .unwrap_or_else(|e| Some(Event::error(&e)))
}
