//! Paced closes: every WebSocket session's stop token is one of [`SLOTS`]
//! slot tokens, picked at random when the session starts; a drain cancels the
//! slots one after another, evenly spaced over the drain window. Sessions
//! therefore close in random order, spread evenly, and no registry of
//! sessions is kept.
//!
//! A session gets a clone of its slot's token, not a child of it: a child
//! token is a ~112-byte allocation plus an entry in its parent's list, paid
//! by every idle session, where a clone is a reference count. The price is
//! that a session must never cancel its token (it would stop its slot-mates);
//! nothing does: the memory budget wakes the sessions it evicts through their
//! account (`budget::Account::evicted`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Stop;

/// Close code of a paced drain close: 1012, service restart (RFC 6455 registry).
pub const DRAIN_CLOSE: u16 = 1012;

/// Slots the window is cut into: 128 steps of 78 ms for the default 10 s.
const SLOTS: usize = 128;

/// Reconnect hints are drawn from at least this range, so a zero window
/// still spreads the reconnects a little.
const MIN_HINT_RANGE_MS: u64 = 1000;

/// The slots and the window of the drain in progress.
#[derive(Debug)]
pub struct Pace {
    slots: Box<[Stop]>,
    /// The drain window in ms, set when the drain starts (for the hints).
    window_ms: AtomicU64,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Stop::default()).collect(),
            window_ms: AtomicU64::new(0),
        }
    }
}

impl Pace {
    /// A new session's stop token: its random slot's token, shared with the
    /// slot's other sessions. Wait on it; never cancel it.
    pub fn token(&self) -> Stop {
        self.slots[rand::random_range(0..self.slots.len())].clone()
    }

    /// Cancels slot `i` at `i / SLOTS` of `window` from now.
    pub(super) async fn run(&self, window: Duration) {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.window_ms.store(ms, Ordering::Relaxed);
        let start = tokio::time::Instant::now();
        let n = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        for (i, slot) in (0u32..).zip(self.slots.iter()) {
            tokio::time::sleep_until(start + window * i / n).await;
            slot.cancel();
        }
    }

    /// Cancels every slot not cancelled yet (the grace ran out).
    pub(super) fn stop_all(&self) {
        self.slots.iter().for_each(Stop::cancel);
    }

    /// A reconnect delay to suggest to a client closed by the drain: random
    /// within the window, so reconnects stay spread too.
    pub fn reconnect_ms(&self) -> u64 {
        let range = self
            .window_ms
            .load(Ordering::Relaxed)
            .max(MIN_HINT_RANGE_MS);
        rand::random_range(0..=range)
    }

    /// The close reason of a drained session: `reconnect <ms>`.
    pub fn close_reason(&self) -> String {
        format!("reconnect {}", self.reconnect_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_fire_in_turn_over_the_window() {
        let pace = Pace::default();
        let tokens: Vec<_> = (0..1000).map(|_| pace.token()).collect();
        let window = Duration::from_millis(300);
        let start = std::time::Instant::now();
        let run = pace.run(window);
        tokio::pin!(run);
        // A tenth into the window, about a tenth of the sessions are stopped.
        let _ = tokio::time::timeout(window / 10, &mut run).await;
        let early = tokens.iter().filter(|t| t.is_cancelled()).count();
        assert!(early < 500, "{early} of 1000 stopped in the first tenth");
        run.await;
        assert!(start.elapsed() >= window * 9 / 10);
        assert!(tokens.iter().all(Stop::is_cancelled));
        let hint = pace.reconnect_ms();
        assert!(hint <= 1000, "{hint}");
        assert!(pace.close_reason().starts_with("reconnect "));
    }

    #[test]
    fn a_token_taken_after_the_drain_is_cancelled_at_once() {
        let pace = Pace::default();
        pace.stop_all();
        assert!(pace.token().is_cancelled());
    }
}
