//! WebSocket apps hosted in-process. The proxy validates the handshake (and the
//! route's Origin and capacity rules) before an app sees the request; the app
//! completes the upgrade with the yawc codec and runs the session under the
//! gateway's session tracker so a drain can close it with 1001.

pub mod chat;
pub mod echo;

use std::sync::Arc;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// App state that must survive config reloads (chat rooms, users, history).
pub struct Apps {
    pub chat: Arc<chat::Chat>,
}

impl Apps {
    pub fn new(cfg: &Config, shutdown: Shutdown) -> Self {
        Self {
            chat: chat::Chat::new(cfg.chat.clone(), cfg.server.node_id.clone(), shutdown),
        }
    }

    /// Applies reloaded app settings. The echo app reads its settings from the
    /// config snapshot per session; chat keeps the settings it started with
    /// (documented in docs/operations.md).
    pub fn reconfigure(&self, _cfg: &Config) {}
}
