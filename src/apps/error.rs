//! Why an in-process app refused a request before any session started. The
//! one place that turns these into status codes is `proxy::error`.

use super::chat::protocol::ChatError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The path is not one the app serves.
    #[error("not found")]
    NotFound,
    /// The codec refused to complete the upgrade.
    #[error("invalid WebSocket upgrade: {0}")]
    Upgrade(#[source] yawc::WebSocketError),
    /// A bad parameter (a user name, for example).
    #[error("bad request: {0}")]
    Chat(#[from] ChatError),
}
