//! The serving side: accept loops ([`listener`]), TLS handshakes ([`tls`]) and
//! hyper connections ([`conn`]), for a [`Handler`] it is given. It knows
//! nothing of routes: what a request means is the handler's business.
//!
//! What it needs from the process is a [`ServerCtx`]: the connection caps,
//! shutdown tracking, the metrics (open-connection gauges) and the
//! `[server]` settings, swapped on reload.

#[cfg(test)]
mod ack_tests;
mod acks;
pub mod admin;
pub mod conn;
mod h1;
pub mod listener;
pub mod proxy_protocol;
mod resumption;
pub mod smuggle;
mod stall;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use crate::body::RequestBody;
use arc_swap::ArcSwap;
use http::{Request, Response};

use crate::body::Body;
use crate::config::ServerConfig;
use crate::ctx::ConnCtx;
use crate::limits::{ConnLimits, ConnSlot};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Answers the requests of served connections. `conn` describes the
/// connection; `slot` is its capacity slot, which an upgraded session keeps
/// for as long as it lives.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: Request<RequestBody>,
        conn: Arc<ConnCtx>,
        slot: Arc<ConnSlot>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// What the serving side needs from the process.
#[derive(Clone)]
pub struct ServerCtx {
    pub limits: Arc<ConnLimits>,
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
    /// `[server]`, replaced on reload: read once per connection (a load, not
    /// a copy).
    pub config: Arc<ArcSwap<ServerConfig>>,
}
