//! The serving side: accept loops ([`listener`]), TLS handshakes ([`tls`]) and
//! hyper connections ([`conn`]).

pub mod admin;
pub mod conn;
pub mod listener;
pub mod smuggle;
pub mod tls;

use std::net::SocketAddr;

/// What a request handler knows about the connection it arrived on.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub client: SocketAddr,
    /// `client`'s address as an `X-Forwarded-For` entry, formatted once.
    pub forwarded_for: http::HeaderValue,
    /// The listener's bound address (its label in metrics and logs).
    pub listener: SocketAddr,
    pub tls: bool,
    /// Server name the client asked for in its TLS ClientHello.
    pub sni: Option<String>,
}
