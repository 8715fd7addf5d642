//! The `echo` app: every text or binary message comes back as it was sent
//! (fragmented messages reassembled first, [`super::messages`]). The codec (yawc) answers pings,
//! completes the close handshake, and closes with 1002 on protocol errors, 1007
//! on invalid UTF-8 and 1009 over `max_message_size` (checked against frame
//! headers before the payload is read, so a claimed 2^62 bytes allocates nothing).
//! Optional server pings and an idle timeout keep dead peers from lingering.
//! Bytes read and not yet echoed count against the process's memory budget
//! (`server.max_buffered`); a session it evicts is closed with 1013.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::body::RequestBody;
use futures_util::SinkExt;
use http::{Request, Response};
use yawc::close::CloseCode;
use yawc::frame::{Frame, OpCode};

use super::error::AppError;
use super::messages::Messages;
use crate::access::{SessionHold, SessionLog};
use crate::body::{empty, Body};
use crate::budget::{Account, Budget, Evicted};
use crate::config::EchoConfig;
use crate::limits::ConnSlot;
use crate::shutdown::{Pace, Shutdown, Stop, DRAIN_CLOSE};
use tokio_util::sync::WaitForCancellationFuture;

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
    super::deflate_offer::keep_first_acceptable(req.headers_mut());
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
    let stop = Stops {
        drain: shutdown.session_stop(),
        pace: shutdown.pace.clone(),
    };
    shutdown.spawn_session(session(up, timers, account, log, slot, stop));
    Ok(resp.map(|_| empty()))
}

/// What ends a session from outside besides its budget account: the drain's
/// paced token (shared with other sessions: only waited on) and the pace
/// that words the close.
struct Stops {
    drain: Stop,
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
    stop: Stops,
) -> impl std::future::Future<Output = ()> {
    async move {
        let _slot = slot;
        let Some(mut ws) = super::codec::upgraded_messages(up, "echo").await else {
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
    ws: &mut Messages<S>,
    timers: &mut Timers,
    account: &Account,
    drain: &Stop,
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
    // The last turn ended on a read that found the socket empty, with this
    // task's waker registered, and flushed all it echoed; the checks after
    // it found nothing due, and nothing was awaited since: the next wait's
    // first poll has nothing to look at (see [`poll_turn`]).
    let mut quiet = false;
    // The timer, drain and eviction waits hold this task's waker since they
    // were last polled (see [`Waits::poll`]).
    let mut armed = false;
    // A message or a client's ping came in the last turn: the idle clock
    // starts again (the pongs answering the session's own pings do not).
    let mut active = false;
    loop {
        let step = {
            let mut checked = std::mem::take(&mut quiet);
            let mut waits = Waits {
                timer: timer.as_mut(),
                drained: drained.as_mut(),
                evicted: evicted.as_mut(),
                armed: &mut armed,
                account,
                drain,
            };
            // The read first: woken by its socket, the session does not poll
            // the three waits at all. A client that always has a frame ready
            // would then never let them be polled, so each batch ends with a
            // cheap look at all three.
            std::future::poll_fn(|cx| {
                if std::mem::take(&mut checked) {
                    return waits.poll(cx, true);
                }
                match poll_turn(ws, cx, account, log, &mut active) {
                    Poll::Ready(turn) => Poll::Ready(Step::Turn(turn)),
                    Poll::Pending => waits.poll(cx, false),
                }
            })
            .await
        };
        match step {
            Step::Turn(turn) => {
                match turn {
                    Turn::End(end) => return end,
                    Turn::Quiet => {}
                    Turn::Unflushed => {
                        if ws.flush().await.is_err() {
                            return End::Finish;
                        }
                    }
                }
                if std::mem::take(&mut active) {
                    timers.seen(tokio::time::Instant::now());
                }
                if account.is_evicted() {
                    return End::Evicted { read_failed: false };
                }
                if drain.is_cancelled() {
                    return End::Drained;
                }
                if !timer.is_elapsed() {
                    // Nothing awaited since that read: no wake-up was missed.
                    quiet = matches!(turn, Turn::Quiet);
                    continue;
                }
            }
            Step::Timer => {}
            Step::Evicted => return End::Evicted { read_failed: false },
            Step::Drained => return End::Drained,
        }
        // The timer fired, or was found elapsed after a batch: polled again
        // after the reset below (a future that returned `Ready` promises no
        // wake-up until polled again, though tokio's timer keeps its waker).
        armed = false;
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

/// What ended one wait of the echo loop.
enum Step {
    Turn(Turn),
    Timer,
    Evicted,
    Drained,
}

/// The echo loop's three other waits: its timer, the drain and the budget's
/// eviction, polled when its turn is pending.
struct Waits<'a, 'f> {
    timer: Pin<&'a mut tokio::time::Sleep>,
    drained: Pin<&'a mut WaitForCancellationFuture<'f>>,
    evicted: Pin<&'a mut Evicted<'f>>,
    /// All three were polled with this task's waker, and none has fired
    /// since: each still holds the waker.
    armed: &'a mut bool,
    account: &'f Account,
    drain: &'f Stop,
}

impl Waits<'_, '_> {
    /// Polled after each pending turn. Once armed, a wait that comes due
    /// wakes the task and shows it in a flag first (the timer leaves the
    /// wheel, the token and the account are marked before their wakers run),
    /// so until one shows, polling them again would only register the same
    /// waker again: 364 instructions a message at depth 1, where every
    /// message is a turn of its own (callgrind). Sound because the session is
    /// only ever polled by its own task: every waker it registers is the same.
    /// `checked`: their flags were just looked at, with nothing awaited since.
    fn poll(&mut self, cx: &mut Context<'_>, checked: bool) -> Poll<Step> {
        if *self.armed && (checked || !self.due()) {
            return Poll::Pending;
        }
        *self.armed = true;
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Step::Timer);
        }
        if self.evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Step::Evicted);
        }
        if self.drained.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Step::Drained);
        }
        Poll::Pending
    }

    /// Whether one of the three has come due: the timer's state and two
    /// atomic loads (the drain's stop is read without its token's lock).
    fn due(&self) -> bool {
        self.timer.is_elapsed() || self.account.is_evicted() || self.drain.is_cancelled()
    }
}

/// What one turn of the echo loop did.
enum Turn {
    /// Every frame received was answered and the answers written, and the
    /// read after them found the socket empty (this task's waker registered).
    Quiet,
    /// The answers still need their flush, which may wait: [`MAX_BATCH`]
    /// frames answered and more may be there, or the socket is full.
    Unflushed,
    End(End),
}

/// Reads every frame already received (up to [`MAX_BATCH`]) and queues its
/// answer, then flushes once: a pipelining client costs one write per batch,
/// not per message. Ready once a frame was read. Polled with the task's own
/// waker: the batch's last read, the one that finds the socket empty,
/// registers the task, so after a [`Turn::Quiet`] (and nothing awaited
/// since) the next wait need not ask the socket again.
fn poll_turn<S>(
    ws: &mut Messages<S>,
    cx: &mut Context<'_>,
    account: &Account,
    log: &mut SessionLog,
    active: &mut bool,
) -> Poll<Turn>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut frames = 0;
    while frames < MAX_BATCH {
        // Room for an answer before a frame is taken: a client that does not
        // read its echoes is not read from either.
        match ws.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Turn::End(End::Finish)),
            Poll::Pending if frames == 0 => return Poll::Pending,
            Poll::Pending => return Poll::Ready(Turn::Unflushed),
        }
        let frame = match ws.poll_next_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending if frames == 0 => return Poll::Pending,
            Poll::Pending => {
                return Poll::Ready(match ws.poll_flush_unpin(cx) {
                    Poll::Ready(Ok(())) => Turn::Quiet,
                    Poll::Ready(Err(_)) => Turn::End(End::Finish),
                    Poll::Pending => Turn::Unflushed,
                })
            }
        };
        frames += 1;
        match on_read(frame, account, log) {
            Read::Echo(echo) => {
                let len = echo.payload().len();
                if ws.start_send_unpin(echo).is_err() {
                    return Poll::Ready(Turn::End(End::Finish));
                }
                log.message_out(len);
                *active = true;
            }
            Read::Control => *active = true,
            Read::Skip => {}
            Read::End(end) => return Poll::Ready(Turn::End(end)),
        }
    }
    Poll::Ready(Turn::Unflushed)
}

/// Ends the session as `end` says, recording its close code.
async fn close<S>(ws: &mut Messages<S>, end: End, log: &mut SessionLog, pace: &Pace)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match end {
        End::Finish => {}
        End::Failed(e) => {
            log.close_code = Some(super::codec::close_code_for(&e));
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
    /// A client's ping, which yawc has answered.
    Control,
    /// A pong (answering the session's ping), which yawc has handled.
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
        op => {
            account.control_delivered(frame.payload().len());
            if op == OpCode::Pong {
                Read::Skip
            } else {
                Read::Control
            }
        }
    }
}

/// Fails the connection after a read error with the close code RFC 6455 asks
/// for. Errors found by yawc's codec already queued a close frame (1002, 1009,
/// 1003 for reserved opcodes) and closed its read side: one more read flushes it
/// and reports the connection closed. Errors found after the codec (invalid UTF-8,
/// fragment assembly) did not, so the close is sent here.
pub async fn fail<S>(ws: &mut Messages<S>, err: &yawc::WebSocketError)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use yawc::WebSocketError as E;
    if matches!(err, E::ConnectionClosed)
        || (err.is_io_error() && !super::codec::corrupt_deflate(err))
    {
        return;
    }
    if let Ok(Err(E::ConnectionClosed)) =
        tokio::time::timeout(Duration::from_millis(50), ws.next_frame()).await
    {
        return;
    }
    let code = match err {
        E::InvalidUTF8 => CloseCode::Invalid,
        e if super::codec::corrupt_deflate(e) => CloseCode::Error,
        E::FrameTooLarge => CloseCode::Size,
        _ => CloseCode::Protocol,
    };
    let _ = ws.send(Frame::close(code, err.to_string())).await;
}

/// Ends a session cleanly. yawc queues its close frames (the echo of a client's
/// close, or 1002/1007/1009 after a protocol error) and writes them on the next
/// read, so keep reading until it reports the connection closed, bounded in time.
pub async fn finish<S>(ws: &mut Messages<S>)
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
mod tests;
