//! WebSocket apps hosted in-process. The proxy validates the handshake (and
//! runs the route's access phase) before an app sees the request; the app
//! completes the upgrade with the yawc codec ([`codec`]) and runs the session
//! on the shutdown's session tracker so a drain can close it with 1001. Apps
//! know neither the server nor the proxy: they take a request and answer it,
//! or fail with an [`error::AppError`].

pub mod chat;
pub mod codec;
pub mod deflate_offer;
pub mod echo;
pub mod error;
pub mod messages;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::auth::Verifier;
use crate::budget::Budget;
use crate::config::Config;
use crate::metrics::RouteResult;
use crate::shutdown::Shutdown;

/// App state that must survive config reloads (chat rooms, users, history),
/// and the memory budget every app session's reads are charged to.
pub struct Apps {
    pub chat: Arc<chat::Chat>,
    pub budget: Arc<Budget>,
    /// `wsgate_auth_total`, where the chat counts its token checks.
    auth_counts: Family<RouteResult, Counter>,
}

impl Apps {
    /// Builds the apps. `bus` carries the chat's shared state when the
    /// process spans nodes (the composition root picks it); `None` keeps it
    /// all in memory. `budget` (`server.max_buffered`) is the process's,
    /// built by the composition root with its metric.
    pub fn new(
        cfg: &Config,
        shutdown: Shutdown,
        bus: Option<Arc<dyn chat::bus::Bus>>,
        budget: Arc<Budget>,
        auth_counts: Family<RouteResult, Counter>,
    ) -> Self {
        let chat = match bus {
            Some(bus) => chat::Chat::with_bus(cfg.chat.clone(), bus, shutdown, budget.clone()),
            None => chat::Chat::new(
                cfg.chat.clone(),
                cfg.server.node_id.clone(),
                shutdown,
                budget.clone(),
            ),
        };
        chat.set_auth(chat_auth(cfg, &auth_counts));
        Self {
            chat,
            budget,
            auth_counts,
        }
    }

    /// Applies reloaded app settings. The echo app reads its settings from the
    /// route table per session; chat takes what can change live (see
    /// [`chat::Chat::reconfigure`]).
    pub fn reconfigure(&self, cfg: &Config) {
        self.budget.set_limit(cfg.server.max_buffered);
        self.chat.reconfigure(cfg.chat.clone());
        self.chat.set_auth(chat_auth(cfg, &self.auth_counts));
    }
}

/// The chat's verifier for `[app.chat] auth` (its keys as the config loaded
/// them, so a reload re-reads them like the routes' verifiers).
fn chat_auth(
    cfg: &Config,
    counts: &Family<RouteResult, Counter>,
) -> Option<Arc<chat::identity::ChatAuth>> {
    let a = cfg.chat.auth.as_ref()?;
    // Validation made sure the name exists.
    let keys = cfg.auth.get(&a.verifier)?;
    Some(Arc::new(chat::identity::ChatAuth::new(
        Arc::new(Verifier::new(keys)),
        a.clone(),
        counts.clone(),
    )))
}
