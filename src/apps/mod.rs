//! WebSocket apps hosted in-process. The proxy validates the handshake (and the
//! route's Origin and capacity rules) before an app sees the request; the app
//! completes the upgrade with the yawc codec and runs the session under the
//! gateway's session tracker so a drain can close it with 1001.

pub mod chat;
pub mod codec;
pub mod echo;

use std::sync::Arc;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// App state that must survive config reloads (chat rooms, users, history).
pub struct Apps {
    pub chat: Arc<chat::Chat>,
    /// The Redis bus when `[cluster]` is configured (its status feeds `/readyz`).
    pub cluster: Option<Arc<crate::cluster::RedisBus>>,
}

impl Apps {
    /// Builds the chat: on a [`crate::cluster::RedisBus`] when `[cluster]` is
    /// set, else all in memory.
    pub fn new(cfg: &Config, shutdown: Shutdown) -> Result<Self, crate::cluster::ClusterError> {
        let Some(c) = &cfg.cluster else {
            return Ok(Self {
                chat: chat::Chat::new(cfg.chat.clone(), cfg.server.node_id.clone(), shutdown),
                cluster: None,
            });
        };
        let bus = crate::cluster::RedisBus::start(
            c,
            &cfg.server.node_id,
            cfg.chat.history,
            shutdown.token.clone(),
        )?;
        Ok(Self {
            chat: chat::Chat::with_bus(cfg.chat.clone(), bus.clone(), shutdown),
            cluster: Some(bus),
        })
    }

    /// Applies reloaded app settings. The echo app reads its settings from the
    /// config snapshot per session; chat takes what can change live (see
    /// [`chat::Chat::reconfigure`]).
    pub fn reconfigure(&self, cfg: &Config) {
        self.chat.reconfigure(cfg.chat.clone());
    }
}
