//! [`Stop`]: a cancellation token whose state is read without its lock.
//!
//! The drain's tokens are shared: one per pace slot by a 128th of the
//! WebSocket sessions each, the hard stop by every byte splice, the drain's
//! own token by every HTTP/1.1 connection. Sessions look at theirs once or
//! twice a message (whether it fired since they last polled it), and a
//! `CancellationToken` answers that under its mutex: a lock and an unlock,
//! two atomic writes to a cache line every worker thread writes too, so the
//! line moves between cores on each message of each session. Here the answer
//! is a flag set before the token fires: reading it writes nothing, and the
//! line stays in every core's cache until a drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Cheap to clone (one reference count, as the token it wraps). Fired by
/// [`Stop::cancel`] only: a holder that waits on it must not cancel it.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    fired: AtomicBool,
    token: CancellationToken,
}

impl Stop {
    /// Fires the stop: the flag first, so that a task its waiters wake sees
    /// it set (the wake-up orders the two), then the token's waiters.
    pub fn cancel(&self) {
        self.0.fired.store(true, Ordering::Release);
        self.0.token.cancel();
    }

    /// Whether the stop fired: one load, no lock.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }

    /// Resolves once the stop fires.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.0.token.cancelled()
    }

    /// The token inside, for work that takes one (child tokens, background
    /// tasks): to wait on, never to cancel.
    pub fn token(&self) -> &CancellationToken {
        &self.0.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_woken_waiter_sees_the_stop_fired() {
        let stop = Stop::default();
        let waiter = {
            let stop = stop.clone();
            tokio::spawn(async move {
                assert!(!stop.is_cancelled());
                stop.cancelled().await;
                stop.is_cancelled()
            })
        };
        tokio::task::yield_now().await;
        assert!(!stop.is_cancelled() && !stop.token().is_cancelled());
        stop.cancel();
        assert!(stop.is_cancelled() && stop.token().is_cancelled());
        assert!(waiter.await.expect("waiter"), "woken, the flag is set");
    }

    #[test]
    fn clones_share_one_state() {
        let a = Stop::default();
        let b = a.clone();
        b.cancel();
        assert!(a.is_cancelled());
        assert!(!Stop::default().is_cancelled());
    }
}
