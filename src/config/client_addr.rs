//! The keys that decide who the client is: `[server] trusted_proxies` (the
//! peers whose PROXY header and `X-Forwarded-For` are believed) and
//! `[[listener]] proxy_protocol`. Parsed here into [`TrustedProxies`], which
//! the serving side (PROXY header admission) and the proxy (the
//! `X-Forwarded-For` walk) both read; `validate.rs` only hooks these in.

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use toml::Spanned;

use super::file::{ListenerFile, SStr};

/// What an untrusted client may not say about itself, besides the
/// `X-Forwarded-For`/`-Proto`/`-Host` the proxy sets: RFC 7239 `Forwarded`,
/// and the client-address and scheme fields other proxies and CDNs set,
/// which applications read as the gateway's word (a client claiming
/// `X-Forwarded-Ssl: on` or `True-Client-IP` would otherwise be believed).
/// `proxy::forwarded` removes them; token claims may not be written to them.
pub const CLIENT_CLAIMS: [&str; 15] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-url-scheme",
    "front-end-https",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
];

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Why a `trusted_proxies` entry is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\", \"::1/128\")", crate::quoted::Quoted(.0))]
    Syntax(String),
    #[error("prefix length /{prefix} is longer than {max} bits")]
    Prefix { prefix: u8, max: u8 },
    /// Host bits set: `10.0.0.1/8` is almost always a typo, and silently
    /// trusting all of 10/8 for it is not a guess a security setting should make.
    #[error("{given} has host bits set: the block is {net}")]
    HostBits { given: String, net: Cidr },
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits only, no leading zero: `u8::from_str` would take "+8" and "08".
            Some(p)
                if !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0')) =>
            {
                p.parse::<u8>().map_err(|_| CidrError::Syntax(s.into()))?
            }
            Some(_) => return Err(CidrError::Syntax(s.into())),
        };
        if prefix > max {
            return Err(CidrError::Prefix { prefix, max });
        }
        let cidr = Cidr {
            net: mask(net, prefix),
            prefix,
        };
        if cidr.net != net {
            return Err(CidrError::HostBits {
                given: s.into(),
                net: cidr,
            });
        }
        Ok(cidr)
    }

    /// Whether `ip` is in the block. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`, what a dual-stack socket reports) count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.prefix) == self.net
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// `[server] trusted_proxies`: the peers whose PROXY header and
/// `X-Forwarded-For` entries are believed. Empty by default: nobody is.
/// Cloning shares the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Arc<[Cidr]>);

impl TrustedProxies {
    pub fn new(blocks: Vec<Cidr>) -> Self {
        Self(blocks.into())
    }

    /// Whether `ip` is a trusted proxy. A linear scan: lists are a handful of
    /// blocks, and an empty list (the default) costs one length check.
    pub fn contains(&self, ip: IpAddr) -> bool {
        !self.0.is_empty() && self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A problem to report at a span of the file.
pub(super) type Issue = (Range<usize>, String);

/// Parses `server.trusted_proxies`; bad entries are reported, the rest kept.
pub(super) fn trusted_proxies(list: Option<&[SStr]>) -> (TrustedProxies, Vec<Issue>) {
    let mut blocks = Vec::new();
    let mut issues = Vec::new();
    for (i, v) in list.unwrap_or_default().iter().enumerate() {
        match Cidr::parse(v.get_ref()) {
            Ok(c) => blocks.push(c),
            Err(e) => issues.push((v.span(), format!("server.trusted_proxies[{i}]: {e}"))),
        }
    }
    (TrustedProxies::new(blocks), issues)
}

/// `[[listener]] proxy_protocol` of each listener, and an issue for each one
/// that asks for it while no proxy is trusted: such a listener would close
/// every connection, which is a config mistake, not a policy.
pub(super) fn proxy_protocol(
    listeners: &[Spanned<ListenerFile>],
    trusted: &TrustedProxies,
) -> Vec<Issue> {
    listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let pp = l.get_ref().proxy_protocol.as_ref()?;
            (*pp.get_ref() && trusted.is_empty()).then(|| {
                (
                    pp.span(),
                    format!(
                        "listener[{i}].proxy_protocol: no peer may send a PROXY header while \
                         server.trusted_proxies is empty (list the load balancers' addresses there)"
                    ),
                )
            })
        })
        .collect()
}

/// Whether listener `l` reads a PROXY header.
pub(super) fn listener_proxy_protocol(l: &ListenerFile) -> bool {
    l.proxy_protocol.as_ref().is_some_and(|b| *b.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(
            c.contains(ip("::ffff:10.9.9.9")),
            "IPv4-mapped counts as v4"
        );
        assert!(!c.contains(ip("::1")));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::7")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::2")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
    }

    #[test]
    fn bad_blocks_are_refused() {
        assert!(matches!(
            Cidr::parse("10.0.0.0/33"),
            Err(CidrError::Prefix { .. })
        ));
        assert!(matches!(
            Cidr::parse("10.0.0.1/8"),
            Err(CidrError::HostBits { .. })
        ));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "example.test",
            "10.0.0/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = Cidr::parse("10.0.0.1/8").unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn empty_list_trusts_nobody() {
        let t = TrustedProxies::default();
        assert!(!t.contains(ip("127.0.0.1")));
        let t = TrustedProxies::new(vec![Cidr::parse("127.0.0.1/32").unwrap()]);
        assert!(t.contains(ip("127.0.0.1")) && !t.contains(ip("127.0.0.2")));
    }
}
