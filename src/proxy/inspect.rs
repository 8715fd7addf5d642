//! The inspected splice (`ws_inspect = true`): bytes are copied as they are in
//! both directions while a [`Scanner`] per direction watches frame headers.
//! Because it knows where frames begin, it can
//!
//! - close a session whose message exceeds `ws_max_message_size` (1009 to the
//!   side that sent it, 1001 to the other; the oversized frame's header is never
//!   forwarded, so the receiver sees the close at a frame boundary),
//! - close a session whose client sends messages faster than
//!   `ws_message_rate` (1008 to the client, 1001 upstream),
//! - count messages, bytes and close codes per route,
//! - send its own pings to a side silent for `ws_ping_interval` and swallow the
//!   matching pongs (their payload carries a per-session nonce), closing a side
//!   that misses two (1011 to it, 1001 to the live side),
//! - close both sides with 1001 on idle timeout; on drain (paced,
//!   `shutdown::Pace`) the client gets 1012 `reconnect <ms>`, the upstream 1001,
//! - close a session whose token expires (1008 "token expired" to the client,
//!   1001 upstream).
//!
//! Two pumps (client → upstream, upstream → client) run concurrently in the
//! session's task. A pump only writes injected frames to its destination between
//! frames of the stream it forwards; the other pump and the keeper (timers,
//! drain) send it [`Inject`] commands. Header bytes are forwarded only once the
//! header is complete and approved; payload bytes are forwarded as they arrive.
//! After a close is injected, a pump drops what its source sends until the
//! source's own close frame (the reply) or EOF; the whole session is cut
//! [`CLOSE_GRACE`] after the first injected close in any case.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::inspect_config::CloseReason;
pub use super::inspect_config::{InspectConfig, InspectMetrics};
use super::scan::{self, Event, Scanner, MAX_HEADER, OP_CLOSE, OP_PING, OP_PONG};
use super::splice::{SpliceEnd, SpliceStats};
use crate::limit::gcra::Bucket;
use crate::shutdown::{Stop, DRAIN_CLOSE};

/// How long peers get to answer an injected close before both connections are dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Length of the gateway's ping payload: a 4-byte session nonce and a 4-byte counter.
const PING_LEN: u64 = 8;

/// Close codes the gateway sends.
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_INTERNAL: u16 = 1011;

/// One end of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client = 0,
    Upstream = 1,
}

/// A frame a pump writes to its destination at the next frame boundary.
#[derive(Debug, Clone, Copy)]
enum Inject {
    Ping([u8; PING_LEN as usize]),
    /// Close with `code`; then wait for the pump's source to send its close
    /// (`wait_reply`) or stop at once (the source is dead or unreadable).
    Close {
        code: u16,
        reason: CloseReason,
        wait_reply: bool,
    },
}

/// State both pumps and the keeper see.
struct Shared {
    cfg: InspectConfig,
    metrics: InspectMetrics,
    nonce: [u8; 4],
    /// Bytes arrived from a side since the keeper last looked.
    alive: [AtomicBool; 2],
    /// Bytes read from each side.
    bytes: [AtomicU64; 2],
    /// Messages read from each side.
    messages: [AtomicU64; 2],
    /// Cancelled at the first close the gateway injects (or drain).
    closing: CancellationToken,
    /// A close frame passed through (the endpoints are closing by themselves).
    peer_closing: AtomicBool,
    /// First recorded [`SpliceEnd`] (0 = none yet).
    end: AtomicU8,
    /// The session's close code for the access line (0 = none yet): the
    /// first close either side sent, or the gateway sent the client.
    close_code: AtomicU16,
}

impl Shared {
    fn note_close(&self, code: u16) {
        let _ = self
            .close_code
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn set_end(&self, end: SpliceEnd) {
        let _ = self
            .end
            .compare_exchange(0, end_code(end), Ordering::Relaxed, Ordering::Relaxed);
    }
}

fn end_code(e: SpliceEnd) -> u8 {
    match e {
        SpliceEnd::Closed => 1,
        SpliceEnd::Idle => 2,
        SpliceEnd::Drain => 3,
        SpliceEnd::Error => 4,
        SpliceEnd::TooBig => 5,
        SpliceEnd::PeerDead => 6,
        SpliceEnd::Protocol => 7,
        SpliceEnd::Policy => 8,
        SpliceEnd::Expired => 9,
    }
}

fn end_from(c: u8) -> SpliceEnd {
    match c {
        2 => SpliceEnd::Idle,
        3 => SpliceEnd::Drain,
        4 => SpliceEnd::Error,
        5 => SpliceEnd::TooBig,
        6 => SpliceEnd::PeerDead,
        7 => SpliceEnd::Protocol,
        8 => SpliceEnd::Policy,
        9 => SpliceEnd::Expired,
        _ => SpliceEnd::Closed,
    }
}

/// Splices `client` and `upstream` with frame inspection until both sides are
/// done, the session is closed by a limit, keepalive, idle timeout, or `stop`.
pub async fn splice_inspected<C, U>(
    client: C,
    upstream: U,
    cfg: InspectConfig,
    metrics: InspectMetrics,
    stop: Stop,
) -> SpliceStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let shared = Shared {
        cfg,
        metrics,
        nonce: rand::random(),
        alive: [AtomicBool::new(false), AtomicBool::new(false)],
        bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        messages: [AtomicU64::new(0), AtomicU64::new(0)],
        closing: CancellationToken::new(),
        peer_closing: AtomicBool::new(false),
        end: AtomicU8::new(0),
        close_code: AtomicU16::new(0),
    };
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    // Commands for the pump writing to the upstream, and to the client.
    let (to_up, to_up_rx) = mpsc::unbounded_channel();
    let (to_cl, to_cl_rx) = mpsc::unbounded_channel();
    let a = Pump {
        from: Side::Client,
        src: cr,
        dst: uw,
        cmds: to_up_rx,
        other: to_cl.clone(),
        shared: &shared,
    }
    .run();
    let b = Pump {
        from: Side::Upstream,
        src: ur,
        dst: cw,
        cmds: to_cl_rx,
        other: to_up.clone(),
        shared: &shared,
    }
    .run();
    let grace = async {
        shared.closing.cancelled().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::select! {
        (ra, rb) = async { tokio::join!(a, b) } => {
            if ra.is_err() || rb.is_err() {
                shared.set_end(SpliceEnd::Error);
            }
        }
        _ = grace => {}
        _ = keeper(&shared, &to_cl, &to_up, stop) => {}
    }
    SpliceStats {
        end: end_from(shared.end.load(Ordering::Relaxed)),
        bytes_in: shared.bytes[0].load(Ordering::Relaxed),
        bytes_out: shared.bytes[1].load(Ordering::Relaxed),
        messages: Some((
            shared.messages[0].load(Ordering::Relaxed),
            shared.messages[1].load(Ordering::Relaxed),
        )),
        close_code: match shared.close_code.load(Ordering::Relaxed) {
            0 => None,
            code => Some(code),
        },
        zero_copy: 0,
    }
}

/// Timers and drain: pings to silent sides, reaping dead ones, idle timeout.
/// Never returns (it parks once the session is closing).
async fn keeper(
    shared: &Shared,
    to_cl: &mpsc::UnboundedSender<Inject>,
    to_up: &mpsc::UnboundedSender<Inject>,
    stop: Stop,
) {
    let toward = |s: Side| if s == Side::Client { to_cl } else { to_up };
    // `code` and `reason` to the client, 1001 to the upstream.
    let close_both_with = |end: SpliceEnd, code: u16, reason: CloseReason| {
        shared.set_end(end);
        let _ = to_cl.send(Inject::Close {
            code,
            reason,
            wait_reply: true,
        });
        let _ = to_up.send(Inject::Close {
            code: CLOSE_GOING_AWAY,
            reason: CloseReason::NONE,
            wait_reply: true,
        });
        shared.closing.cancel();
    };
    let close_both = |end: SpliceEnd| close_both_with(end, CLOSE_GOING_AWAY, CloseReason::NONE);
    let expires = shared.cfg.expires.map(|t| {
        let left = t
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::Instant::now() + left
    });
    let expiry = tokio::time::sleep_until(expires.unwrap_or_else(tokio::time::Instant::now));
    tokio::pin!(expiry);
    let ping = shared.cfg.ping_interval;
    let idle = shared.cfg.idle_timeout;
    let mut ping_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + ping,
        ping.max(Duration::from_millis(1)),
    );
    let idle_step = (idle / 2).max(Duration::from_millis(10));
    let mut idle_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + idle_step, idle_step);
    let total =
        || shared.bytes[0].load(Ordering::Relaxed) + shared.bytes[1].load(Ordering::Relaxed);
    let mut last = total();
    let mut quiet = Duration::ZERO;
    let mut misses = [0u8; 2];
    let mut counter: u32 = 0;
    loop {
        if shared.closing.is_cancelled() {
            std::future::pending::<()>().await;
        }
        tokio::select! {
            _ = stop.cancelled() => {
                let hint = CloseReason::Reconnect(shared.cfg.pace.reconnect_ms());
                close_both_with(SpliceEnd::Drain, DRAIN_CLOSE, hint);
            }
            _ = &mut expiry, if expires.is_some() => {
                close_both_with(SpliceEnd::Expired, CLOSE_POLICY, CloseReason::Text("token expired"));
            }
            _ = idle_tick.tick() => {
                let now = total();
                if now == last {
                    quiet += idle_step;
                    if quiet >= idle {
                        close_both(SpliceEnd::Idle);
                    }
                } else {
                    quiet = Duration::ZERO;
                    last = now;
                }
            }
            _ = ping_tick.tick(), if !ping.is_zero() => {
                if shared.peer_closing.load(Ordering::Relaxed) {
                    continue;
                }
                for side in [Side::Client, Side::Upstream] {
                    let i = side as usize;
                    if shared.alive[i].swap(false, Ordering::Relaxed) {
                        misses[i] = 0;
                        continue;
                    }
                    if misses[i] >= 2 {
                        tracing::debug!(route = %shared.metrics.route, ?side, "peer missed two pings");
                        let (dead, live) = if side == Side::Client { (to_cl, to_up) } else { (to_up, to_cl) };
                        shared.set_end(SpliceEnd::PeerDead);
                        // The live side answers our close; the dead one is not waited for.
                        let _ = dead.send(Inject::Close { code: CLOSE_INTERNAL, reason: CloseReason::NONE, wait_reply: true });
                        let _ = live.send(Inject::Close { code: CLOSE_GOING_AWAY, reason: CloseReason::NONE, wait_reply: false });
                        shared.closing.cancel();
                        break;
                    }
                    counter = counter.wrapping_add(1);
                    let mut p = [0u8; PING_LEN as usize];
                    p[..4].copy_from_slice(&shared.nonce);
                    p[4..].copy_from_slice(&counter.to_be_bytes());
                    let _ = toward(side).send(Inject::Ping(p));
                    misses[i] += 1;
                }
            }
        }
    }
}

/// What happens to the bytes of the frame in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// A pong that may answer our ping: kept until complete.
    Hold,
    Drop,
}

/// One direction: reads `src`, writes `dst` (the other side).
struct Pump<'a, R, W> {
    from: Side,
    src: R,
    dst: W,
    cmds: mpsc::UnboundedReceiver<Inject>,
    /// Commands for the pump writing to our source.
    other: mpsc::UnboundedSender<Inject>,
    shared: &'a Shared,
}

/// A pump's per-frame state, apart from its IO.
struct PumpState {
    scanner: Scanner,
    mode: Mode,
    held: [u8; MAX_HEADER + PING_LEN as usize],
    held_len: usize,
    pending_ping: Option<[u8; PING_LEN as usize]>,
    pending_close: Option<(u16, CloseReason, bool)>,
    /// A close went to the destination (forwarded or injected).
    closed_out: bool,
    /// We injected a close: everything from the source is dropped from now on.
    injected: bool,
    wait_reply: bool,
    /// The source sent its close after ours.
    src_closed: bool,
    /// The scanner failed: the source is not WebSocket.
    failed: bool,
    /// Toward the upstream: injected frames are masked.
    mask_out: bool,
    /// `ws_message_rate` on the client's messages (client pump only).
    rate: Option<Bucket>,
}

impl PumpState {
    /// Is the destination between frames (nothing of a frame half-written)?
    fn dst_at_boundary(&self) -> bool {
        !self.scanner.in_payload() || self.mode != Mode::Forward
    }

    fn push_control(&self, out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
        let mut f = [0u8; MAX_HEADER + 125];
        let mask = self.mask_out.then(rand::random::<[u8; 4]>);
        let n = scan::write_control(&mut f, opcode, payload, mask);
        out.extend_from_slice(&f[..n]);
    }

    /// Writes pending injections into `out` if the destination is between
    /// frames; the close code written, if it wrote a close.
    fn inject_pending(&mut self, out: &mut Vec<u8>, metrics: &InspectMetrics) -> Option<u16> {
        let mut closed = None;
        if !self.dst_at_boundary() {
            return None;
        }
        if let Some((code, reason, wait)) = self.pending_close.take() {
            if !self.closed_out {
                let mut payload = code.to_be_bytes().to_vec();
                reason.append_to(&mut payload);
                self.push_control(out, OP_CLOSE, &payload);
                metrics.close_code(code);
                self.closed_out = true;
                closed = Some(code);
            }
            self.injected = true;
            self.wait_reply = wait;
            self.pending_ping = None;
            if self.scanner.in_payload() {
                self.mode = Mode::Drop;
            }
        }
        if let Some(p) = self.pending_ping.take() {
            if !self.closed_out {
                self.push_control(out, OP_PING, &p);
            }
        }
        closed
    }

    fn done(&self) -> bool {
        self.failed || (self.injected && (!self.wait_reply || self.src_closed))
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Pump<'_, R, W> {
    async fn run(mut self) -> io::Result<()> {
        let r = self.pump().await;
        let _ = self.dst.flush().await;
        let _ = self.dst.shutdown().await;
        r
    }

    async fn pump(&mut self) -> io::Result<()> {
        let i = self.from as usize;
        let mut st = PumpState {
            scanner: Scanner::new(),
            mode: Mode::Forward,
            held: [0; MAX_HEADER + PING_LEN as usize],
            held_len: 0,
            pending_ping: None,
            pending_close: None,
            closed_out: false,
            injected: false,
            wait_reply: true,
            src_closed: false,
            failed: false,
            mask_out: self.from == Side::Client,
            rate: match self.from {
                Side::Client => self.shared.cfg.message_rate.map(Bucket::new),
                Side::Upstream => None,
            },
        };
        let mut inb = vec![0u8; 16 * 1024];
        let mut out: Vec<u8> = Vec::with_capacity(16 * 1024 + 2 * (MAX_HEADER + 125));
        let mut cmds_open = true;
        while !st.done() {
            let n = tokio::select! {
                biased;
                cmd = self.cmds.recv(), if cmds_open => {
                    match cmd {
                        Some(Inject::Ping(p)) => st.pending_ping = Some(p),
                        Some(Inject::Close { code, reason, wait_reply }) => st.pending_close = Some((code, reason, wait_reply)),
                        None => cmds_open = false,
                    }
                    0
                }
                r = self.src.read(&mut inb) => match r? {
                    0 => return Ok(()),
                    n => n,
                },
            };
            if n > 0 {
                self.shared.alive[i].store(true, Ordering::Relaxed);
                self.shared.bytes[i].fetch_add(n as u64, Ordering::Relaxed);
                self.shared.metrics.bytes[i].inc_by(n as u64);
            }
            let messages = self.process(&mut st, &inb[..n], &mut out);
            if messages > 0 {
                self.shared.metrics.messages[i].inc_by(messages);
                self.shared.messages[i].fetch_add(messages, Ordering::Relaxed);
            }
            self.injected(st.inject_pending(&mut out, &self.shared.metrics));
            if !out.is_empty() {
                self.dst.write_all(&out).await?;
                self.dst.flush().await?;
                out.clear();
            }
        }
        Ok(())
    }

    /// Runs one chunk through the scanner, appending what the destination gets
    /// to `out`. Returns the number of messages finished.
    fn process(&self, st: &mut PumpState, chunk: &[u8], out: &mut Vec<u8>) -> u64 {
        let sh = self.shared;
        let mut pos = 0;
        let mut messages = 0;
        while !st.failed {
            let payload = st.scanner.in_payload();
            let (used, ev) = st.scanner.feed(&chunk[pos..]);
            if payload {
                let bytes = &chunk[pos..pos + used];
                match st.mode {
                    Mode::Forward => out.extend_from_slice(bytes),
                    Mode::Hold => {
                        let end = (st.held_len + used).min(st.held.len());
                        st.held[st.held_len..end].copy_from_slice(&bytes[..end - st.held_len]);
                        st.held_len = end;
                    }
                    Mode::Drop => {}
                }
            }
            pos += used;
            match ev {
                None => break,
                Some(Event::Header(h)) => {
                    if st.injected {
                        st.mode = Mode::Drop;
                    } else if !h.is_control() && st.scanner.message_len() > sh.cfg.max_message_size
                    {
                        tracing::debug!(route = %sh.metrics.route, from = ?self.from, size = st.scanner.message_len(), "message too big");
                        sh.set_end(SpliceEnd::TooBig);
                        self.close_both(st, CLOSE_TOO_BIG, true);
                    } else if h.opcode != 0
                        && !h.is_control()
                        && st.rate.as_mut().is_some_and(|b| b.take().is_err())
                    {
                        // A new data message (not a continuation) over the rate.
                        tracing::debug!(route = %sh.metrics.route, "client message rate exceeded");
                        if let Some(c) = &sh.metrics.limited {
                            c.inc();
                        }
                        sh.set_end(SpliceEnd::Policy);
                        self.close_both(st, CLOSE_POLICY, true);
                    } else if h.opcode == OP_PONG && h.len == PING_LEN {
                        st.mode = Mode::Hold;
                        let hb = st.scanner.header_bytes();
                        st.held[..hb.len()].copy_from_slice(hb);
                        st.held_len = hb.len();
                    } else {
                        st.mode = Mode::Forward;
                        out.extend_from_slice(st.scanner.header_bytes());
                    }
                }
                Some(Event::End(e)) => {
                    if e.message_done {
                        messages += 1;
                    }
                    if e.header.opcode == OP_CLOSE {
                        if st.injected {
                            st.src_closed = true;
                        } else {
                            sh.metrics.close_code(e.close_code.unwrap_or(1005));
                            sh.note_close(e.close_code.unwrap_or(1005));
                            sh.peer_closing.store(true, Ordering::Relaxed);
                            st.closed_out = true;
                        }
                    }
                    if st.mode == Mode::Hold {
                        let hl = usize::from(e.header.header_len);
                        let mut p = [0u8; PING_LEN as usize];
                        for (k, b) in st.held[hl..st.held_len].iter().enumerate().take(p.len()) {
                            p[k] = b ^ e.header.mask.map_or(0, |m| m[k % 4]);
                        }
                        if p[..4] != sh.nonce {
                            out.extend_from_slice(&st.held[..st.held_len]);
                        }
                        st.held_len = 0;
                    }
                    st.mode = if st.injected {
                        Mode::Drop
                    } else {
                        Mode::Forward
                    };
                    self.injected(st.inject_pending(out, &sh.metrics));
                    if st.done() {
                        break;
                    }
                }
                Some(Event::Error(e)) => {
                    tracing::debug!(route = %sh.metrics.route, from = ?self.from, error = %e, "not a WebSocket stream");
                    sh.set_end(SpliceEnd::Protocol);
                    self.close_both(st, CLOSE_PROTOCOL, false);
                    st.failed = true;
                }
            }
        }
        messages
    }

    /// A close the gateway wrote: the session's code when it went to the
    /// client.
    fn injected(&self, close: Option<u16>) {
        if let (Some(code), Side::Upstream) = (close, self.from) {
            self.shared.note_close(code);
        }
    }

    /// The source broke a rule: `code` to it, 1001 to the destination (which
    /// is between frames: the offending header was not forwarded).
    fn close_both(&self, st: &mut PumpState, code: u16, wait_reply: bool) {
        let _ = self.other.send(Inject::Close {
            code,
            reason: CloseReason::NONE,
            wait_reply: true,
        });
        st.mode = Mode::Drop;
        st.pending_close = Some((CLOSE_GOING_AWAY, CloseReason::NONE, wait_reply));
        self.shared.closing.cancel();
    }
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
