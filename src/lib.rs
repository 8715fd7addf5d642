//! # wsgate: reverse proxy and WebSocket gateway
//!
//! One connection flows top to bottom through these modules:
//!
//! ```text
//! server::listener   accept, connection caps (503/429), per-connection span
//!   └ server::tls     rustls handshake (SNI → certificate, ALPN h2/http1.1, timeout)
//!     └ server::conn  hyper-util auto (HTTP/1.1 + HTTP/2, upgrades, graceful drain)
//!       └ proxy::Proxy  route (router) → access phase → handler; ProxyError → status
//!         ├ proxy::ws      handshake validation → apps::{echo, chat} | splice to upstream
//!         ├ proxy::http    reverse proxy to an upstream pool (upstream::pool)
//!         └ proxy::files   static files under a root
//! ```
//!
//! [`gateway`] is the composition root: it builds each layer's narrow context
//! ([`server::ServerCtx`], [`proxy::Proxy`], [`apps::Apps`], [`access::Access`])
//! and nothing below it imports it. [`Gateway::start`] binds the configured
//! listeners (port 0 allowed, so tests can run many gateways side by side) and
//! returns a handle; `main.rs` only parses the command line and waits for
//! signals. Deploys: [`upgrade`] (SIGUSR2 hands the listening sockets to a new
//! binary), [`inherit`] (sockets handed to this process: by an upgrade or by
//! systemd socket activation), [`sd_notify`] (readiness to systemd).

pub mod access;
pub mod acme;
pub mod apps;
pub mod auth;
pub mod body;
pub mod budget;
pub mod certs;
pub mod client_cert;
pub mod cluster;
pub mod config;
pub mod ctx;
pub mod field_spans;
pub mod fields;
pub mod fsread;
pub mod gateway;
pub mod grpc_reply;
pub mod inherit;
pub mod limit;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod quoted;
pub mod redis_conn;
pub mod rewind;
pub mod router;
pub mod runtime;
pub mod sd_notify;
pub mod send_timeout;
pub mod server;
pub mod shutdown;
pub mod tls_reason;
pub mod upgrade;
pub mod upgraded;
pub mod upstream;

pub use gateway::{Gateway, GatewayHandle, StartError};

pub use body::{Body, BoxError};
