//! The first step of the access phase: who is the client of this request?
//! Run once per request, before routing (so even an unrouted request's access
//! line names the real client), by [`super::Proxy`]:
//!
//! - the connection's client (the TCP peer, or what its PROXY header named)
//!   is not in `trusted_proxies`: it is the client, and whatever
//!   `X-Forwarded-For` it sent is a claim nobody checked (ignored here,
//!   removed before proxying: `forwarded::Forwarding`);
//! - it is trusted: walk `X-Forwarded-For` from the right, skipping trusted
//!   addresses; the first untrusted one is the client (the rightmost entry a
//!   trusted hop vouched for). If every entry is trusted the leftmost is.
//!
//! The result goes into the request's extensions as [`ClientAddr`], read
//! through [`crate::ctx::client_ip`].

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderName;
use http::HeaderMap;

use crate::config::TrustedProxies;
pub use crate::ctx::ClientAddr;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client of a request that came from the trusted proxy `hop`, by its
/// `X-Forwarded-For` chain (every line of it, in order). An entry that is
/// not an address stops the walk at the last address a trusted hop gave:
/// what is left of it cannot be vouched for, and guessing further left would
/// hand the choice to whoever wrote the garbage. No allocation.
pub fn resolve(headers: &HeaderMap, hop: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let mut client = hop;
    for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for entry in line.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                // "a, , b" and trailing commas: lists allow empty elements.
                continue;
            }
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            if !trusted.contains(ip) {
                return ip;
            }
            client = ip;
        }
    }
    client
}

/// One `X-Forwarded-For` element: an address, optionally bracketed (IPv6)
/// or with a port (some balancers append one).
fn parse_entry(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::client_addr::Cidr;
    use http::HeaderValue;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|c| Cidr::parse(c).unwrap()).collect())
    }

    fn xff(lines: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(X_FORWARDED_FOR, HeaderValue::from_static(l));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rightmost_untrusted_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        let hop = ip("10.0.0.1");
        // The client forged the first entry; the trusted hop appended the truth.
        let h = xff(&["1.1.1.1, 203.0.113.7, 10.0.0.5"]);
        assert_eq!(resolve(&h, hop, &t), ip("203.0.113.7"));
        // The same chain over two lines.
        let h = xff(&["1.1.1.1", "203.0.113.7, 10.0.0.5"]);
        assert_eq!(resolve(&h, hop, &t), ip("203.0.113.7"));
    }

    #[test]
    fn all_trusted_means_the_leftmost_and_none_means_the_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let hop = ip("10.0.0.1");
        assert_eq!(
            resolve(&xff(&["10.0.0.9, 10.0.0.5"]), hop, &t),
            ip("10.0.0.9")
        );
        assert_eq!(resolve(&HeaderMap::new(), hop, &t), hop);
        assert_eq!(resolve(&xff(&[" , "]), hop, &t), hop);
    }

    #[test]
    fn garbage_stops_at_the_last_vouched_address() {
        let t = trusted(&["10.0.0.0/8"]);
        let hop = ip("10.0.0.1");
        assert_eq!(
            resolve(&xff(&["203.0.113.7, unknown, 10.0.0.5"]), hop, &t),
            ip("10.0.0.5")
        );
        assert_eq!(resolve(&xff(&["nonsense"]), hop, &t), hop);
    }

    #[test]
    fn entries_with_ports_brackets_and_mapped_addresses() {
        let t = trusted(&["10.0.0.0/8"]);
        let hop = ip("10.0.0.1");
        assert_eq!(
            resolve(&xff(&["198.51.100.2:5555"]), hop, &t),
            ip("198.51.100.2")
        );
        assert_eq!(
            resolve(&xff(&["[2001:db8::1]:443"]), hop, &t),
            ip("2001:db8::1")
        );
        assert_eq!(
            resolve(&xff(&["[2001:db8::2]"]), hop, &t),
            ip("2001:db8::2")
        );
        // A mapped trusted address is trusted, and a mapped client is IPv4.
        assert_eq!(
            resolve(&xff(&["::ffff:198.51.100.3, ::ffff:10.0.0.7"]), hop, &t),
            ip("198.51.100.3")
        );
    }
}
