//! What a request handler knows about the connection a request arrived on,
//! and who the client of a request is. Built by `server` once per
//! connection, read by `proxy`, the access phase and the apps. A leaf.
//!
//! Three addresses, from the wire inwards (docs/client-address.md):
//! - [`ConnCtx::peer`]: the TCP peer;
//! - [`ConnCtx::client`]: the connection's client, the address a PROXY
//!   header named (else the peer);
//! - [`client_ip`]: a request's client, resolved from `X-Forwarded-For` when
//!   the connection's client is a trusted proxy (else the connection's
//!   client). Everything that keys on "the client" per request (rate limits,
//!   `sticky = "ip"`, access lines) uses this one.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::{Extensions, HeaderValue, Request};

use crate::client_cert::ClientCert;

/// One client connection, as handlers see it.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    /// The connection's client: the address its PROXY header named, else the
    /// TCP peer. Per-IP connection caps count this one.
    pub client: SocketAddr,
    /// The TCP peer (a load balancer when the listener speaks PROXY).
    pub peer: SocketAddr,
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
    /// A connection whose client is its TCP peer.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        Self::behind_proxy(peer, peer, tls)
    }

    /// A connection from `peer` whose PROXY header named `client`.
    pub fn behind_proxy(peer: SocketAddr, client: SocketAddr, tls: bool) -> Self {
        Self {
            client,
            peer,
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

/// The authenticated subject of a request, put in its extensions by the
/// authentication filter; `key = "user"` rate limits count per it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User(pub Arc<str>);
/// A request's client address when `X-Forwarded-For` named one, in the
/// request's extensions. Only present when the connection's client is a
/// trusted proxy: the common case (a direct client) costs no insertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The client of `req`: the `X-Forwarded-For`-resolved address, else the
/// connection's client. What rate limits, `sticky = "ip"` and access lines key on.
pub fn client_ip<B>(req: &Request<B>, conn: &ConnCtx) -> IpAddr {
    client_ip_in(req.extensions(), conn)
}

/// [`client_ip`] for a request already split into parts.
pub fn client_ip_in(ext: &Extensions, conn: &ConnCtx) -> IpAddr {
    match ext.get::<ClientAddr>() {
        Some(c) => c.0,
        None => conn.client.ip(),
    }
}
