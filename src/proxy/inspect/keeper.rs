//! The inspected session's keeper: the drain, token expiry, idle timeout,
//! and keepalive, which judges each side alive or dead once per
//! `ws_ping_interval` ([`verdict`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use super::SpliceEnd;
use super::{
    CloseReason, Inject, Shared, Side, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_POLICY, PING_LEN,
};
use crate::shutdown::{Stop, DRAIN_CLOSE};

/// What the keeper saw of one side over the last ping interval.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Seen {
    /// Bytes came from it.
    pub read: bool,
    /// A write to it is waiting: a ping to it waits too, behind what fills
    /// its socket's buffer (a slow reader's answer can be seconds late).
    pub waiting: bool,
    /// Writes to it have waited, its socket taking nothing, for
    /// [`stuck_limit`]: it is not reading. (Bytes a socket takes are no
    /// sign of life: the kernel takes them for a dead peer until its
    /// buffer fills.)
    pub stuck: bool,
    /// The pump that reads it waits on a write to the other side: its
    /// bytes (a pong too) may be there, unread.
    pub unread: bool,
    /// The ping queued for it is not written yet (its destination is in
    /// the middle of a frame): it cannot have answered.
    pub unpinged: bool,
}

/// What the keeper does about a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Live,
    /// Nothing to judge by this time.
    Wait,
    Ping,
    Dead,
}

/// A side is dead after two pings unanswered, or when the bytes waiting for
/// it have not moved for [`stuck_limit`] (as nginx's `proxy_send_timeout`
/// ends a client that stopped reading). A side is never blamed for a ping
/// it was not sent or that waits behind its unread bytes, nor for a pong
/// the gateway has not read.
pub(super) fn verdict(seen: Seen, misses: &mut u8) -> Verdict {
    if seen.stuck {
        return Verdict::Dead;
    }
    if seen.read {
        *misses = 0;
        return Verdict::Live;
    }
    if seen.waiting || seen.unread || seen.unpinged {
        return Verdict::Wait;
    }
    if *misses >= 2 {
        return Verdict::Dead;
    }
    *misses += 1;
    Verdict::Ping
}

/// How long writes to a side may take nothing before it is dead: the
/// session's `ws_idle_timeout`, and at least two ping intervals. Linux says
/// a socket is writable again only once a third of its buffer has drained,
/// so a slow reader behind a few MiB takes nothing for seconds at a time
/// (the fifteenth verification: two intervals of 1 s cut a client reading
/// 500 kB/s).
fn stuck_limit(ping: Duration, idle: Duration) -> Duration {
    idle.max(ping * 2)
}

/// Per side, what the keeper remembers between ticks.
#[derive(Default)]
struct Watch {
    misses: u8,
    /// The counter of the last ping queued for it.
    queued: Option<u32>,
    /// How long writes to it have waited with nothing taken (whole ticks).
    stuck_for: Duration,
}

impl Shared {
    /// What `side` did since the last look, one `tick` ago (the flags are
    /// taken).
    fn seen(&self, side: Side, w: &mut Watch, tick: Duration) -> Seen {
        let i = side as usize;
        let waiting = self.writing[i].load(Ordering::Relaxed);
        let took = self.took[i].swap(false, Ordering::Relaxed);
        w.stuck_for = if waiting && !took {
            w.stuck_for + tick
        } else {
            Duration::ZERO
        };
        let limit = stuck_limit(tick, self.cfg.idle_timeout);
        Seen {
            read: self.alive[i].swap(false, Ordering::Relaxed),
            waiting,
            // The first tick of a wait may have come just after it began.
            stuck: w.stuck_for > limit,
            unread: self.writing[1 - i].load(Ordering::Relaxed),
            unpinged: w
                .queued
                .is_some_and(|c| self.pinged[i].load(Ordering::Relaxed) != c),
        }
    }

    /// Bytes read either way, but for the pongs answering the gateway's own
    /// pings: keepalive alone does not keep a session from going idle.
    fn traffic(&self) -> u64 {
        let read = self.bytes[0].load(Ordering::Relaxed) + self.bytes[1].load(Ordering::Relaxed);
        read.saturating_sub(self.own_pongs.load(Ordering::Relaxed))
    }
}

/// Timers and drain: pings to silent sides, reaping dead ones, idle timeout.
/// Never returns (it parks once the session is closing).
pub(super) async fn keeper(
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
    let mut last = shared.traffic();
    let mut quiet = Duration::ZERO;
    let mut watch = [Watch::default(), Watch::default()];
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
                let now = shared.traffic();
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
                    let w = &mut watch[side as usize];
                    let seen = shared.seen(side, w, ping);
                    match verdict(seen, &mut w.misses) {
                        Verdict::Live | Verdict::Wait => {}
                        Verdict::Dead => {
                            tracing::debug!(route = %shared.metrics.route, ?side, ?seen, "peer shows no life for two ping intervals");
                            let (dead, live) = if side == Side::Client { (to_cl, to_up) } else { (to_up, to_cl) };
                            shared.set_end(SpliceEnd::PeerDead);
                            // The live side answers our close; the dead one is not waited for.
                            let _ = dead.send(Inject::Close { code: CLOSE_INTERNAL, reason: CloseReason::NONE, wait_reply: true });
                            let _ = live.send(Inject::Close { code: CLOSE_GOING_AWAY, reason: CloseReason::NONE, wait_reply: false });
                            shared.closing.cancel();
                            break;
                        }
                        Verdict::Ping => {
                            counter = counter.wrapping_add(1).max(1);
                            let mut p = [0u8; PING_LEN as usize];
                            p[..4].copy_from_slice(&shared.nonce);
                            p[4..].copy_from_slice(&counter.to_be_bytes());
                            w.queued = Some(counter);
                            let _ = toward(side).send(Inject::Ping(p));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{stuck_limit, verdict, Seen, Verdict};
    use std::time::Duration;

    fn run(seen: &[Seen]) -> Vec<Verdict> {
        let mut misses = 0;
        seen.iter().map(|s| verdict(*s, &mut misses)).collect()
    }

    const SILENT: Seen = Seen {
        read: false,
        waiting: false,
        stuck: false,
        unread: false,
        unpinged: false,
    };
    const READ: Seen = Seen {
        read: true,
        ..SILENT
    };

    #[test]
    fn a_silent_side_is_pinged_twice_then_dead() {
        use Verdict::*;
        assert_eq!(run(&[SILENT; 3]), [Ping, Ping, Dead]);
        assert_eq!(
            run(&[SILENT, READ, SILENT, SILENT, SILENT]),
            [Ping, Live, Ping, Ping, Dead]
        );
    }

    #[test]
    fn a_side_that_cannot_have_answered_is_not_blamed() {
        use Verdict::*;
        // Its ping waits behind a long frame (review 14: a slow message
        // cut a healthy client), behind bytes its socket has not taken
        // yet, or its answer waits unread.
        for cannot in [
            Seen {
                unpinged: true,
                ..SILENT
            },
            Seen {
                waiting: true,
                ..SILENT
            },
            Seen {
                unread: true,
                ..SILENT
            },
        ] {
            assert_eq!(
                run(&[SILENT, cannot, cannot, READ, SILENT]),
                [Ping, Wait, Wait, Live, Ping]
            );
        }
    }

    #[test]
    fn a_side_whose_bytes_do_not_move_for_the_limit_is_dead() {
        use Verdict::*;
        // Even one that sends.
        let stuck = Seen {
            stuck: true,
            read: true,
            ..SILENT
        };
        assert_eq!(run(&[READ, stuck]), [Live, Dead]);
        let s = Duration::from_secs;
        assert_eq!(stuck_limit(s(1), s(600)), s(600));
        assert_eq!(stuck_limit(s(30), s(10)), s(60));
    }
}
