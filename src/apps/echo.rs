//! The `echo` app: every text or binary message comes back as it was sent
//! (fragmented messages reassembled first). The codec (yawc) answers pings,
//! completes the close handshake, and closes with 1002 on protocol errors, 1007
//! on invalid UTF-8 and 1009 over `max_message_size` (checked against frame
//! headers before the payload is read, so a claimed 2^62 bytes allocates nothing).
//! Optional server pings and an idle timeout keep dead peers from lingering.
//! Bytes read and not yet echoed count against the process's memory budget
//! (`server.max_buffered`); a session it evicts is closed with 1013.

use std::sync::Arc;
use std::time::Duration;

use crate::body::RequestBody;
use futures_util::{FutureExt, SinkExt};
use http::{Request, Response};
use yawc::close::CloseCode;
use yawc::frame::{Frame, OpCode};
use yawc::WebSocket;

use super::error::AppError;
use crate::access::{SessionHold, SessionLog};
use crate::body::{empty, Body};
use crate::budget::{Account, Budget};
use crate::config::EchoConfig;
use crate::limits::ConnSlot;
use crate::shutdown::{Pace, Shutdown, DRAIN_CLOSE};
use tokio_util::sync::CancellationToken;

/// Completes a validated upgrade and spawns the echo session on `shutdown`'s
/// session tracker, holding the connection's slot while it lives. Its reads
/// are charged to an account in `budget`.
pub fn accept(
    shutdown: &Shutdown,
    budget: &Arc<Budget>,
    cfg: &EchoConfig,
    mut req: Request<RequestBody>,
    hold: SessionHold,
) -> Result<Response<Body>, AppError> {
    let opts = super::codec::options(cfg.max_message_size, cfg.compression);
    keep_first_deflate_offer(req.headers_mut());
    let account = budget.open();
    let (resp, up) =
        super::codec::upgrade(&mut req, opts, account.clone()).map_err(AppError::Upgrade)?;
    // The session keeps only its clock from `cfg` (restarted once upgraded).
    let timers = Timers::new(
        cfg.ping_interval,
        cfg.idle_timeout,
        tokio::time::Instant::now(),
    );
    let SessionHold { slot, log } = hold;
    let stop = Stop {
        drain: shutdown.session_stop(),
        pace: shutdown.pace.clone(),
    };
    shutdown.spawn_session(session(up, timers, account, log, slot, stop));
    Ok(resp.map(|_| empty()))
}

/// What ends a session from outside besides its budget account: the drain's
/// paced token (shared with other sessions: only waited on) and the pace
/// that words the close.
struct Stop {
    drain: CancellationToken,
    pace: Arc<Pace>,
}

/// The session task: completes the upgrade, then echoes until the end. Every
/// idle session holds this future, so its size is idle memory.
///
/// Not an `async fn`: that would keep its arguments next to their moved
/// copies (1 064 bytes against 872; `the_session_task_stays_small`).
#[allow(clippy::manual_async_fn)]
fn session(
    up: Box<super::codec::Upgrade>,
    mut timers: Timers,
    account: Arc<Account>,
    mut log: SessionLog,
    slot: Arc<ConnSlot>,
    stop: Stop,
) -> impl std::future::Future<Output = ()> {
    async move {
        let _slot = slot;
        let Some(mut ws) = super::codec::upgraded(up, "echo").await else {
            return;
        };
        timers.restart(tokio::time::Instant::now());
        // Two steps, so that the closing futures (timeouts, close frames)
        // share the task's bytes with the echo loop's timer and waits
        // instead of sitting next to them for the whole idle life.
        let end = echo(&mut ws, &mut timers, &account, &stop.drain, &mut log).await;
        close(&mut ws, end, &mut log, &stop.pace).await;
    }
}

/// How a session ends, decided by [`echo`] and carried out by [`close`].
#[derive(Debug)]
enum End {
    /// The close handshake, a write failure or a failed ping: flush what
    /// yawc queued ([`finish`]).
    Finish,
    /// A read error: fail the connection with its close code, then close.
    Failed(yawc::WebSocketError),
    /// The budget evicted the session: 1013. `read_failed`: the client hung
    /// up meanwhile, so the socket is closed once more after it.
    Evicted { read_failed: bool },
    /// No message within `idle_timeout`: 1001.
    Idle,
    /// The drain's paced close: 1012 with a reconnect hint.
    Drained,
}

/// Echoes until the session must end. The codec comes by reference, boxed by
/// [`super::codec::upgraded`]: a by-value copy in an `async fn`'s state
/// would double an idle session.
async fn echo<S>(
    ws: &mut WebSocket<S>,
    timers: &mut Timers,
    account: &Account,
    drain: &CancellationToken,
    log: &mut SessionLog,
) -> End
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // One timer for pings and the idle deadline, re-armed only when it fires:
    // a message only moves `last_seen` (no timer registered per message).
    let timer = tokio::time::sleep_until(timers.next());
    // Made once: a new `cancelled()` per turn joins and leaves the token's
    // waiter list every message (7% of the echo's work, callgrind).
    let drained = drain.cancelled();
    let evicted = account.evicted();
    tokio::pin!(timer, drained, evicted);
    loop {
        tokio::select! {
            // The read first: woken by its socket, the session does not poll
            // the three other futures at all (in random order, half of them
            // were polled before the read, ~240 instructions a message). A
            // client that always has a frame ready would then never let them
            // be polled, so each batch ends with a cheap look at all three.
            biased;
            frame = ws.next_frame() => {
                // Echo every frame already received before flushing once, so a
                // pipelining client costs one write per batch, not per message.
                let mut frame = frame;
                let mut batch = 1;
                loop {
                    match on_read(frame, account, log) {
                        Read::Echo(echo) => {
                            let len = echo.payload().len();
                            if ws.feed(echo).await.is_err() {
                                return End::Finish;
                            }
                            log.message_out(len);
                        }
                        Read::Skip => {}
                        Read::End(end) => return end,
                    }
                    if batch == MAX_BATCH {
                        break;
                    }
                    let Some(next) = ws.next_frame().now_or_never() else { break };
                    frame = next;
                    batch += 1;
                }
                timers.seen(tokio::time::Instant::now());
                if ws.flush().await.is_err() {
                    return End::Finish;
                }
                if account.is_evicted() {
                    return End::Evicted { read_failed: false };
                }
                if drain.is_cancelled() {
                    return End::Drained;
                }
                if !timer.is_elapsed() {
                    continue;
                }
            }
            () = &mut timer => {}
            () = &mut evicted => return End::Evicted { read_failed: false },
            () = &mut drained => return End::Drained,
        }
        // The timer fired, or was found elapsed after a batch.
        match timers.fired(tokio::time::Instant::now()) {
            Due::Idle => return End::Idle,
            Due::Ping => {
                if ws.send(Frame::ping(bytes::Bytes::new())).await.is_err() {
                    return End::Finish;
                }
            }
            Due::Nothing => {}
        }
        timer.as_mut().reset(timers.next());
    }
}

/// Ends the session as `end` says, recording its close code.
async fn close<S>(ws: &mut WebSocket<S>, end: End, log: &mut SessionLog, pace: &Pace)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match end {
        End::Finish => {}
        End::Failed(e) => {
            log.close_code = Some(close_code_for(&e));
            fail(ws, &e).await;
            let _ = ws.close().await;
            return;
        }
        End::Evicted { read_failed } => {
            log.close_code = Some(u16::from(super::codec::BUDGET_CLOSE));
            super::codec::close_evicted(ws).await;
            if read_failed {
                let _ = ws.close().await;
            }
            return;
        }
        End::Idle => {
            log.close_code = Some(1001);
            let _ = ws.send(Frame::close(CloseCode::Away, "idle timeout")).await;
        }
        End::Drained => {
            log.close_code = Some(DRAIN_CLOSE);
            log.drained("app");
            let reason = pace.close_reason();
            let _ = ws
                .send(Frame::close(CloseCode::from(DRAIN_CLOSE), reason))
                .await;
        }
    }
    finish(ws).await;
}

/// A session's two deadlines: the next server ping (every `ping_every` from
/// the start; none when zero) and the idle close (`idle` after the last
/// message read).
#[derive(Debug)]
struct Timers {
    ping_every: Duration,
    next_ping: Option<tokio::time::Instant>,
    idle: Duration,
    last_seen: tokio::time::Instant,
}

#[derive(Debug, PartialEq, Eq)]
enum Due {
    Idle,
    Ping,
    /// Woken early: the idle deadline moved since the timer was set.
    Nothing,
}

impl Timers {
    fn new(ping_every: Duration, idle: Duration, now: tokio::time::Instant) -> Self {
        Self {
            ping_every,
            next_ping: (!ping_every.is_zero()).then(|| now + ping_every),
            idle,
            last_seen: now,
        }
    }

    /// Starts the clock again at `now` (the upgrade completed).
    fn restart(&mut self, now: tokio::time::Instant) {
        *self = Self::new(self.ping_every, self.idle, now);
    }

    fn seen(&mut self, now: tokio::time::Instant) {
        self.last_seen = now;
    }

    /// When the timer must fire next.
    fn next(&self) -> tokio::time::Instant {
        let idle_at = self.last_seen + self.idle;
        self.next_ping.map_or(idle_at, |p| p.min(idle_at))
    }

    /// What is due at `now`; a due ping is counted as sent.
    fn fired(&mut self, now: tokio::time::Instant) -> Due {
        if now >= self.last_seen + self.idle {
            return Due::Idle;
        }
        match self.next_ping {
            Some(p) if now >= p => {
                self.next_ping = Some(p + self.ping_every);
                Due::Ping
            }
            _ => Due::Nothing,
        }
    }
}

/// Frames echoed per flush at most: a fast client's batch ends, and with it
/// the wait for the ping, idle and shutdown checks that follow each batch.
const MAX_BATCH: usize = 64;

/// What one read asks for.
enum Read {
    /// A data message: echo it (queued by the caller, flushed per batch).
    Echo(Frame),
    /// A control frame yawc has handled.
    Skip,
    /// Stop reading; a close handshake's answer is already queued by yawc.
    End(End),
}

/// Classifies one read; what was read for the frame leaves the session's
/// budget account. Not `async`: the echo loop awaits only the codec's own
/// futures, so the session task holds no copy of a frame or of this call's
/// arguments while idle (an `async fn` here was 216 bytes of the task).
fn on_read(frame: yawc::Result<Frame>, account: &Account, log: &mut SessionLog) -> Read {
    let frame = match frame {
        Ok(f) => f,
        // The client hung up while the eviction was on its way.
        Err(_) if account.is_evicted() => return Read::End(End::Evicted { read_failed: true }),
        Err(e) => return Read::End(End::Failed(e)),
    };
    match frame.opcode() {
        OpCode::Close => {
            log.close_code = Some(frame.close_code().map(u16::from).unwrap_or(1005));
            Read::End(End::Finish)
        }
        OpCode::Text | OpCode::Binary => {
            account.message_delivered();
            log.message_in(frame.payload().len());
            Read::Echo(frame)
        }
        _ => {
            account.control_delivered(frame.payload().len());
            Read::Skip
        }
    }
}

/// RFC 7692 lets a client list several permessage-deflate offers, best first,
/// and the server accept any one. yawc parses a single offer, so keep the first
/// one (the client's preference) and drop the rest before it negotiates.
pub fn keep_first_deflate_offer(h: &mut http::HeaderMap) {
    let first = h
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|offer| {
            offer
                .split(';')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case("permessage-deflate"))
        })
        .and_then(|offer| http::HeaderValue::from_str(offer).ok());
    h.remove(http::header::SEC_WEBSOCKET_EXTENSIONS);
    if let Some(v) = first {
        h.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
}

/// Fails the connection after a read error with the close code RFC 6455 asks
/// for. Errors found by yawc's codec already queued a close frame (1002, 1009,
/// 1003 for reserved opcodes) and closed its read side: one more read flushes it
/// and reports the connection closed. Errors found after the codec (invalid UTF-8,
/// fragment assembly) did not, so the close is sent here.
pub async fn fail<S>(ws: &mut WebSocket<S>, err: &yawc::WebSocketError)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use yawc::WebSocketError as E;
    if matches!(err, E::ConnectionClosed) || err.is_io_error() {
        return;
    }
    if let Ok(Err(E::ConnectionClosed)) =
        tokio::time::timeout(Duration::from_millis(50), ws.next_frame()).await
    {
        return;
    }
    let code = match err {
        E::InvalidUTF8 => CloseCode::Invalid,
        E::FrameTooLarge => CloseCode::Size,
        _ => CloseCode::Protocol,
    };
    let _ = ws.send(Frame::close(code, err.to_string())).await;
}

/// The close code a read error leads to (for logs and metrics).
fn close_code_for(err: &yawc::WebSocketError) -> u16 {
    use yawc::WebSocketError as E;
    match err {
        E::InvalidUTF8 => 1007,
        E::FrameTooLarge => 1009,
        E::InvalidOpCode(_) => 1003,
        E::ConnectionClosed => 1006,
        e if e.is_io_error() => 1006,
        _ => 1002,
    }
}

/// Ends a session cleanly. yawc queues its close frames (the echo of a client's
/// close, or 1002/1007/1009 after a protocol error) and writes them on the next
/// read, so keep reading until it reports the connection closed, bounded in time.
pub async fn finish<S>(ws: &mut WebSocket<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for _ in 0..16 {
        match tokio::time::timeout_at(deadline, ws.next_frame()).await {
            Ok(Err(yawc::WebSocketError::ConnectionClosed)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    let _ = ws.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_timer_serves_pings_and_the_idle_deadline() {
        let secs = Duration::from_secs;
        let start = tokio::time::Instant::now();
        let mut t = Timers::new(secs(10), secs(25), start);
        assert_eq!(t.next(), start + secs(10));
        assert_eq!(t.fired(start + secs(10)), Due::Ping);
        assert_eq!(t.next(), start + secs(20));
        // A message at 15 s moves the idle deadline to 40 s; the timer set for
        // 20 s finds a ping due, then 30 s, then the idle close at 40 s.
        t.seen(start + secs(15));
        assert_eq!(t.fired(start + secs(20)), Due::Ping);
        assert_eq!(t.fired(start + secs(30)), Due::Ping);
        assert_eq!(t.next(), start + secs(40));
        assert_eq!(t.fired(start + secs(40)), Due::Idle);
        // Without pings the timer is the idle deadline alone, and an early
        // wake-up (the deadline moved) does nothing.
        let mut quiet = Timers::new(Duration::ZERO, secs(5), start);
        assert_eq!(quiet.next(), start + secs(5));
        quiet.seen(start + secs(3));
        assert_eq!(quiet.fired(start + secs(5)), Due::Nothing);
        assert_eq!(quiet.next(), start + secs(8));
    }

    #[test]
    fn keeps_the_first_deflate_offer() {
        let mut h = http::HeaderMap::new();
        h.append(
            "sec-websocket-extensions",
            "x-foo, permessage-deflate; client_no_context_takeover; server_max_window_bits=9"
                .parse()
                .unwrap(),
        );
        h.append(
            "sec-websocket-extensions",
            "permessage-deflate".parse().unwrap(),
        );
        keep_first_deflate_offer(&mut h);
        assert_eq!(h.get_all("sec-websocket-extensions").iter().count(), 1);
        assert_eq!(
            h["sec-websocket-extensions"],
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=9"
        );
        let mut none = http::HeaderMap::new();
        none.insert("sec-websocket-extensions", "x-foo".parse().unwrap());
        keep_first_deflate_offer(&mut none);
        assert!(none.is_empty());
    }

    /// The echo loop polls the read first. A client whose frames are always
    /// ready must still meet the drain, once the batch in hand is echoed,
    /// not only after it stops sending. Fails without the checks after each
    /// batch: all 1 000 frames come back before the drain is seen.
    #[tokio::test]
    async fn a_client_that_never_pauses_still_meets_the_drain() {
        use crate::config::{AppKind, RouteConfig};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const FRAMES: usize = 1000;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        // Masked (key 0) binary frames of 4 bytes, all sent before the session
        // reads: a read finds a frame ready every time.
        let mut burst = Vec::new();
        for i in 0..FRAMES as u32 {
            burst.extend_from_slice(&[0x82, 0x84, 0, 0, 0, 0]);
            burst.extend_from_slice(&i.to_be_bytes());
        }
        client.write_all(&burst).await.unwrap();
        let opts = super::super::codec::options(1024, false);
        let mut ws = WebSocket::from_stream(server, yawc::Role::Server, opts).unwrap();
        let route = crate::router::Route::new(0, RouteConfig::test_app("/echo", AppKind::Echo));
        let access = crate::access::Access::new(Arc::new(crate::metrics::Metrics::new()), false);
        let mut log = SessionLog::new(&access, &route, "app", [127, 0, 0, 1].into());
        let account = Budget::new(1 << 20, Default::default()).open();
        let drain = CancellationToken::new();
        drain.cancel();
        let now = tokio::time::Instant::now();
        let mut timers = Timers::new(Duration::ZERO, Duration::from_secs(60), now);
        let end = tokio::time::timeout(
            Duration::from_secs(10),
            echo(&mut ws, &mut timers, &account, &drain, &mut log),
        )
        .await
        .expect("the session ends");
        assert!(matches!(end, End::Drained), "{end:?}");
        // Everything the session flushed is in the client's receive queue
        // (loopback delivers within the write): take the first echo, then
        // all that is there without waiting.
        let mut echoed = vec![0u8; 6];
        client.read_exact(&mut echoed).await.unwrap();
        let mut more = [0u8; 8192];
        while let Ok(n) = client.try_read(&mut more) {
            assert!(n > 0, "the session closed its socket");
            echoed.extend_from_slice(&more[..n]);
        }
        // Unmasked echoes: 2 bytes of header and the 4 of payload.
        let frames = echoed.len() / 6;
        assert!(
            frames <= MAX_BATCH,
            "{frames} frames echoed before the drain"
        );
    }

    /// Every idle session holds its task's future. A by-value codec once made
    /// it 6.9 KB (the codec stored three times, the whole future twice); it is
    /// 736 bytes now (in this test's build), the session's one timer and its
    /// drain and eviction waits included (they replaced a boxed ping interval
    /// and per-turn futures). tokio stores a task with about 100 bytes of its
    /// own (header, scheduler handle, trailer) and the tracker's token, in a
    /// block rounded up to 128 bytes: 776 keeps the 896-byte block an idle
    /// session takes now (944 took 1 152, heaptrack on the release build).
    /// This fails if a change brings copies back or nears the next block.
    #[test]
    fn the_session_task_stays_small() {
        fn task_size<F>(
            _: impl FnOnce(Box<super::super::codec::Upgrade>, Timers, SessionLog) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let (account, slot, stop) = (None::<Arc<Account>>, None::<Arc<ConnSlot>>, None::<Stop>);
        let size = task_size(|up, timers, log| {
            crate::shutdown::catch_panics(super::session(
                up,
                timers,
                account.unwrap(),
                log,
                slot.unwrap(),
                stop.unwrap(),
            ))
        });
        assert!(size <= 776, "echo session task is {size} bytes");
    }
}
