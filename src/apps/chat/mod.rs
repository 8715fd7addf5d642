//! The `chat` app (docs/chat-protocol.md): rooms, DMs, presence and history over WebSocket,
//! with SSE, long-poll and `POST /send` fallbacks, an HTTP API and a demo page.
//!
//! ```text
//! proxy::ws ──accept──▶ ws        one task per WebSocket session
//! proxy ─────http─────▶ http      /sse  /poll  /send  /api/*  and the page
//!                        │
//!                        ▼
//!                       hub       this node's connections and room members;
//!                        │ ▲      executes client frames, fans events out
//!                        ▼ │ Deliver
//!                       bus       ids, history, membership, online registry,
//!                                 delivery to every node (LocalBus here)
//! ```
//! [`protocol`] holds the frames, names, errors and cursors; [`page`] the demo.
//! One [`Chat`] exists per process (built in `apps::Apps::new`), so rooms, users
//! and history survive config reloads; its settings are those of the config it
//! was started with.
//! The wire protocol is documented in `docs/chat-protocol.md`.

pub mod bus;
mod bus_error;
mod http;
pub mod hub;
pub mod identity;
mod page;
pub mod protocol;
mod ws;

use std::sync::Arc;

use crate::body::RequestBody;
use ::http::{Request, Response};
use dashmap::DashMap;

use self::bus::{Bus, Deliver, LocalBus};
use self::hub::{Hub, HubStats, Newcomer};
use self::identity::{ChatAuth, Grants, Identity};
use self::protocol::ChatError;
use crate::access::SessionHold;
use crate::apps::error::AppError;
use crate::body::Body;
use crate::budget::Budget;
use crate::config::ChatConfig;
use crate::shutdown::Shutdown;

pub struct Chat {
    /// Swapped on reload. `history` and `send_queue` size the hub and bus when
    /// the chat is built, so changes to those two need a restart.
    cfg: arc_swap::ArcSwap<ChatConfig>,
    node: Arc<str>,
    hub: Arc<Hub>,
    shutdown: Shutdown,
    /// The process's memory budget; WebSocket sessions' reads are charged to it.
    budget: Arc<Budget>,
    /// Long-poll sessions by user and room list (see `http::poll`).
    polls: DashMap<http::PollKey, Arc<http::PollSession>>,
    /// Long-poll sessions by client address (`max_poll_sessions_per_ip`).
    poll_clients: Arc<DashMap<std::net::IpAddr, usize>>,
    /// `[app.chat] auth`, its verifier rebuilt on reload.
    auth: arc_swap::ArcSwapOption<ChatAuth>,
}

impl Chat {
    /// A single-node chat: all shared state in a [`LocalBus`].
    pub fn new(
        cfg: ChatConfig,
        node_id: String,
        shutdown: Shutdown,
        budget: Arc<Budget>,
    ) -> Arc<Self> {
        let bus = LocalBus::new(
            &node_id,
            cfg.history,
            cfg.history_ttl,
            cfg.history_memory,
            cfg.max_rooms,
        );
        Self::with_bus(cfg, bus, shutdown, budget)
    }

    /// A chat whose shared state lives in `bus` (the cluster's Redis bus).
    pub fn with_bus(
        cfg: ChatConfig,
        bus: Arc<dyn Bus>,
        shutdown: Shutdown,
        budget: Arc<Budget>,
    ) -> Arc<Self> {
        let hub = Hub::new(
            bus.clone(),
            cfg.send_queue,
            cfg.history,
            cfg.max_rooms_per_connection,
            cfg.max_rooms_per_ip,
        );
        let sink: Arc<dyn Deliver> = hub.clone();
        bus.attach(Arc::downgrade(&sink));
        Arc::new(Self {
            node: Arc::from(bus.node()),
            cfg: arc_swap::ArcSwap::from_pointee(cfg),
            hub,
            shutdown,
            budget,
            polls: DashMap::new(),
            poll_clients: Arc::default(),
            auth: arc_swap::ArcSwapOption::empty(),
        })
    }

    /// Sets (or, with `None`, removes) the chat's token verifier.
    pub fn set_auth(&self, auth: Option<Arc<ChatAuth>>) {
        self.auth.store(auth);
    }

    fn auth(&self) -> Option<Arc<ChatAuth>> {
        self.auth.load_full()
    }

    /// Who sends `req` (see [`identity`]): with `[app.chat] auth` its token's
    /// user (or a read-only guest when `anonymous`); else the route's
    /// authenticated user, `?user=` or a guest.
    fn identify<B>(&self, req: &Request<B>, upgrade: bool) -> Result<Identity, ChatError> {
        match self.auth() {
            Some(a) => a.identify(req, upgrade, true),
            None => Ok(Identity {
                user: http::user_of(req)?,
                grants: Grants::all(),
                expires: None,
            }),
        }
    }

    /// A connection about to register for `id`, under this node's per-user cap.
    fn newcomer(&self, id: &Identity, addr: std::net::IpAddr) -> Newcomer {
        Newcomer {
            user: id.user.clone(),
            grants: id.grants.clone(),
            cap: self.cfg().max_connections_per_user,
            addr,
        }
    }

    /// The current settings (new sessions and requests read them).
    pub fn cfg(&self) -> Arc<ChatConfig> {
        self.cfg.load_full()
    }

    /// Applies reloaded settings: message size, ping interval, push token and
    /// poll idle timeout take effect for new sessions and requests.
    pub fn reconfigure(&self, cfg: ChatConfig) {
        let old = self.cfg();
        if old.history != cfg.history || old.send_queue != cfg.send_queue {
            tracing::warn!(
                "app.chat.history and app.chat.send_queue changes take effect after a restart"
            );
        }
        self.cfg.store(Arc::new(cfg));
    }

    /// A validated WebSocket upgrade under the chat route (`prefix`). The
    /// session lives at the route itself and at `PREFIX/ws`. Who it is comes
    /// from [`Chat::identify`]: a missing or bad token is a 401 here, before
    /// the upgrade.
    pub fn accept(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        prefix: &str,
        slot: SessionHold,
        client: std::net::IpAddr,
    ) -> Result<Response<Body>, AppError> {
        match http::subpath(req.uri().path(), prefix) {
            Some("" | "/" | "/ws") => {}
            _ => return Err(AppError::NotFound),
        }
        let who = self.identify(&req, true)?;
        ws::accept(self, req, who, slot, client)
    }

    /// Plain HTTP under the chat route: the demo page, the fallbacks and the API.
    /// Errors are answered as `error` frames by `proxy::error`.
    pub async fn http(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        prefix: &str,
        client: std::net::IpAddr,
    ) -> Result<Response<Body>, AppError> {
        Ok(http::handle(self, req, prefix, client).await?)
    }

    /// Connection and queue counters of this node.
    pub fn stats(&self) -> HubStats {
        self.hub.stats()
    }
}
