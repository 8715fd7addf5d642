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

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::inspect_config::CloseReason;
pub use super::inspect_config::{InspectConfig, InspectMetrics};
use super::scan;
use super::splice::{SpliceEnd, SpliceStats};
use crate::shutdown::Stop;

mod keeper;
mod pump;

use keeper::keeper;
use pump::Pump;

/// How long peers get to answer an injected close before both connections are dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Length of the gateway's ping payload: a 4-byte session nonce and a 4-byte counter.
const PING_LEN: u64 = 8;

/// Close codes the gateway sends.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Never sent: the access line's code for a client gone without a close.
pub const CLOSE_ABNORMAL: u16 = 1006;
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
    /// A side's socket took bytes written to it since the keeper last looked.
    took: [AtomicBool; 2],
    /// A write to a side is under way (the pump writing it waits on it).
    writing: [AtomicBool; 2],
    /// The counter of the last ping written toward a side.
    pinged: [AtomicU32; 2],
    /// Bytes read from each side.
    bytes: [AtomicU64; 2],
    /// Bytes of pongs answering the gateway's own pings (swallowed).
    own_pongs: AtomicU64,
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
        took: [AtomicBool::new(false), AtomicBool::new(false)],
        writing: [AtomicBool::new(false), AtomicBool::new(false)],
        pinged: [AtomicU32::new(0), AtomicU32::new(0)],
        bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        own_pongs: AtomicU64::new(0),
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

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
