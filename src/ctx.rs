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

use bytes::Bytes;
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
    /// The `addr` of the listener it arrived on, as configured (what a
    /// route's `listeners` name); unspecified outside a listener.
    pub listener: SocketAddr,
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
        // An IPv4 client of a dual-stack (`[::]`) listener arrives IPv4-mapped:
        // it is the IPv4 address to logs, limits and X-Forwarded-For, whose
        // readers would not match `::ffff:10.0.0.1` to `10.0.0.1`.
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
        Self {
            client,
            peer,
            tls,
            client_cert: None,
            listener: SocketAddr::from(([0, 0, 0, 0], 0)),
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
/// The text is owned by the value's `Bytes`, so its clones (one per proxied
/// request) share it by count; a value copied from a slice is copied again,
/// into a shared buffer, on its first clone.
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    let text = match client.to_canonical() {
        // IPv4 by hand: `Display` through `fmt::write` cost ~1.3 k
        // instructions, a tenth of a proxied request's own work (S5).
        IpAddr::V4(a) => Bytes::from_owner(dotted_quad(a)),
        IpAddr::V6(a) => Bytes::from_owner(a.to_string()),
    };
    HeaderValue::from_maybe_shared(text).unwrap_or(HeaderValue::from_static("unknown"))
}

/// An IPv4 address in dotted decimal: the bytes and how many are used.
struct DottedQuad([u8; 15], usize);

impl AsRef<[u8]> for DottedQuad {
    fn as_ref(&self) -> &[u8] {
        &self.0[..self.1]
    }
}

/// `a` in dotted decimal.
fn dotted_quad(a: std::net::Ipv4Addr) -> DottedQuad {
    let mut out = [0u8; 15];
    let mut n = 0;
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            out[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            out[n] = b'0' + (o / 10) % 10;
            n += 1;
        }
        out[n] = b'0' + o % 10;
        n += 1;
    }
    DottedQuad(out, n)
}

/// The authenticated subject of a request, put in its extensions by the
/// authentication filter; `key = "user"` rate limits count per it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User(pub Arc<str>);

/// In a request's extensions instead of [`User`] when the route
/// authenticated the client with a credential that names no user (a token
/// whose `sub` is missing or not a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoUser;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_matches_display_for_every_octet() {
        for o in 0..=255u8 {
            for a in [
                std::net::Ipv4Addr::new(o, 0, 255, o),
                std::net::Ipv4Addr::new(10, o, 9, 100),
            ] {
                assert_eq!(forwarded_for(IpAddr::V4(a)), a.to_string().as_str());
            }
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(forwarded_for(v6), "2001:db8::1");
    }

    /// A dual-stack listener's IPv4 client is its IPv4 address everywhere.
    #[test]
    fn an_ipv4_mapped_client_is_ipv4() {
        let mapped: SocketAddr = "[::ffff:9.9.9.5]:4000".parse().unwrap();
        let c = ConnCtx::new(mapped, false);
        assert_eq!(c.client, "9.9.9.5:4000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.forwarded_for(), "9.9.9.5");
        assert_eq!(forwarded_for(mapped.ip()), "9.9.9.5");
    }
}
