//! Drain coordination and the tasks it waits for. hyper's graceful shutdown
//! only sees HTTP connections: an upgraded WebSocket counts as finished for
//! hyper, so WebSocket sessions (app and spliced) are tracked separately here
//! and told to close with 1001. Every task spawned here has its panics
//! contained ([`catch_panics`]).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by every listener and connection of one gateway.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when draining starts: listeners stop accepting, HTTP connections
    /// get `graceful_shutdown`, WebSocket sessions send close 1001.
    pub token: CancellationToken,
    /// Every HTTP connection task (until it finishes or upgrades).
    pub conns: TaskTracker,
    /// Every live WebSocket session, app or spliced.
    pub sessions: TaskTracker,
}

impl Shutdown {
    pub fn is_draining(&self) -> bool {
        self.token.is_cancelled()
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

    /// Starts the drain and waits until every connection and session is done, or
    /// `grace` has passed. Returns whether everything finished in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.conns.close();
        self.sessions.close();
        let all = async {
            self.conns.wait().await;
            self.sessions.wait().await;
        };
        tokio::time::timeout(grace, all).await.is_ok()
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
