//! What a request handler knows about the connection a request arrived on.
//! Built by `server` once per connection, read by `proxy`, the access phase
//! and the apps. A leaf.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::HeaderValue;

use crate::client_cert::ClientCert;

/// One client connection, as handlers see it.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    /// The client's address (the TCP peer).
    pub client: SocketAddr,
    /// Whether the connection arrived over TLS (`X-Forwarded-Proto`, cookie
    /// `Secure` flags).
    pub tls: bool,
    /// The client certificate verified in the TLS handshake (mTLS listeners).
    pub client_cert: Option<Arc<ClientCert>>,
    /// `client`'s address as an `X-Forwarded-For` entry, formatted on first
    /// use ([`ConnCtx::forwarded_for`]).
    forwarded_for: OnceLock<HeaderValue>,
}

impl ConnCtx {
    pub fn new(client: SocketAddr, tls: bool) -> Self {
        Self {
            client,
            tls,
            client_cert: None,
            forwarded_for: OnceLock::new(),
        }
    }

    /// The client as an `X-Forwarded-For` entry: formatted once per
    /// connection, and only if a request is proxied.
    pub fn forwarded_for(&self) -> &HeaderValue {
        self.forwarded_for
            .get_or_init(|| forwarded_for(self.client.ip()))
    }
}

/// The client address as an `X-Forwarded-For` entry. Built once per
/// connection: formatting an address on every request showed in profiles.
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}
