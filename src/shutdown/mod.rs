//! Drain coordination and the tasks it waits for. hyper's graceful shutdown
//! only sees HTTP connections: an upgraded WebSocket counts as finished for
//! hyper, so WebSocket sessions (app and spliced) are tracked separately here.
//! Every task spawned here has its panics contained ([`catch_panics`]).
//!
//! A drain closes WebSocket sessions paced over `server.drain_window`
//! ([`Pace`]), so their clients do not all reconnect in the same second; byte
//! splices, which cannot insert a close frame, watch only the hard stop
//! ([`Shutdown::hard`]) that `shutdown_grace` fires.

mod pace;
mod stop;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

pub use self::pace::{Pace, DRAIN_CLOSE};
pub use self::stop::Stop;

/// How long the sessions the hard stop cut get to end (a byte splice sees
/// its stop at once) before the drain returns: the process exits then, and
/// a session dropped unfinished writes no access line and counts no bytes.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// Shared by every listener and connection of one gateway.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when draining starts: listeners stop accepting, HTTP
    /// connections get `graceful_shutdown`. WebSocket sessions do not watch
    /// it: they take a paced token from [`Shutdown::session_stop`].
    pub token: Stop,
    /// Cancelled when `shutdown_grace` has passed (or everything finished):
    /// what byte splices and the process's background work stop on.
    pub hard: Stop,
    /// Hands out the paced stop tokens of WebSocket sessions.
    pub pace: Arc<Pace>,
    /// Every HTTP connection task (until it finishes or upgrades).
    pub conns: TaskTracker,
    /// Every live WebSocket session, app or spliced.
    pub sessions: TaskTracker,
}

impl Shutdown {
    pub fn is_draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The stop token of one WebSocket session (app or inspected splice): a
    /// drain cancels it at a random point of the drain window. Shared with
    /// other sessions ([`Pace::token`]): wait on it, never cancel it.
    pub fn session_stop(&self) -> Stop {
        self.pace.token()
    }

    /// Runs a WebSocket session (or any task that outlives its HTTP
    /// connection) until it ends; a drain waits for it, and a panic in it is
    /// logged and contained.
    pub fn spawn_session<F>(&self, fut: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.sessions.spawn(catch_panics(fut));
    }

    /// Runs one client connection; a drain waits for it.
    pub fn spawn_conn<F>(&self, fut: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.conns.spawn(catch_panics(fut));
    }

    /// Starts the drain: stop accepting, let HTTP requests finish, close
    /// WebSocket sessions spread over `window`; then waits until every
    /// connection and session is done, or `grace` has passed, when whatever
    /// is left (byte splices, sessions whose close stalls) is cut. Returns
    /// whether everything finished in time.
    pub async fn drain(&self, grace: Duration, window: Duration) -> bool {
        self.token.cancel();
        self.conns.close();
        self.sessions.close();
        let all = async {
            self.conns.wait().await;
            self.sessions.wait().await;
        };
        let paced = async {
            self.pace.run(window.min(grace)).await;
            std::future::pending::<()>().await
        };
        let done = tokio::select! {
            () = all => true,
            () = paced => false,
            () = tokio::time::sleep(grace) => false,
        };
        self.pace.stop_all();
        self.hard.cancel();
        if !done {
            let _ = tokio::time::timeout(CUT_WAIT, self.sessions.wait()).await;
        }
        done
    }
}

/// A panic inside one connection (or WebSocket session, or HTTP/2 stream) is
/// logged and contained to it: the future is dropped, which releases what it
/// held (its connection slot, session guards). `None` when it panicked.
///
/// A combinator, not an `async fn`: an `async fn` would keep its argument and
/// the running future side by side in its state, doubling every session task.
pub fn catch_panics<T>(fut: impl Future<Output = T>) -> impl Future<Output = Option<T>> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .map(|r| match r {
            Ok(v) => Some(v),
            Err(panic) => {
                tracing::error!(panic = %panic_message(&*panic), "connection task panicked; connection dropped");
                None
            }
        })
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}
