//! Drain coordination. hyper's graceful shutdown only sees HTTP connections: an
//! upgraded WebSocket counts as finished for hyper, so WebSocket sessions (app and
//! spliced) are tracked separately here and told to close with 1001.

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
