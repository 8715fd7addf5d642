//! The serving side: accept loops ([`listener`]), TLS handshakes ([`tls`]) and
//! hyper connections ([`conn`]).

pub mod admin;
pub mod conn;
pub mod listener;
pub mod smuggle;
pub mod tls;

use std::net::SocketAddr;

impl ConnCtx {
    /// The client as an `X-Forwarded-For` entry: formatted once per
    /// connection, and only if a request is proxied.
    pub fn forwarded_for(&self) -> &http::HeaderValue {
        self.forwarded_for
            .get_or_init(|| crate::proxy::headers::forwarded_for(self.client.ip()))
    }
}

/// What a request handler knows about the connection it arrived on.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub client: SocketAddr,
    /// `client`'s address as an `X-Forwarded-For` entry, formatted on first
    /// use ([`ConnCtx::forwarded_for`]).
    pub forwarded_for: std::sync::OnceLock<http::HeaderValue>,
    /// The listener's bound address (its label in metrics and logs).
    pub listener: SocketAddr,
    pub tls: bool,
    /// Server name the client asked for in its TLS ClientHello.
    pub sni: Option<String>,
}
