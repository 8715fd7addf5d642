//! What a proxied request says about its client and its host: `Host`, the
//! `X-Forwarded-*` family, RFC 7239 `Forwarded`, and what an untrusted client
//! may not say about itself (docs/client-address.md).
//!
//! [`Forwarding`] decides once, reading the client's fields, and is then
//! either set on a header map ([`Forwarding::apply`]: the HTTP proxy, whose
//! request goes on as a map) or written beside the client's own fields
//! ([`Forwarding::replaces`] and [`Forwarding::for_each`]: a WebSocket
//! tunnel's upstream head, written as bytes without a map).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Static names: parsing "x-forwarded-*" from strings allocated on every request.
const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

use crate::config::client_addr::CLIENT_CLAIMS;

/// Sets what a proxied request carries about its client and host on `h`
/// (see [`Forwarding::new`]).
pub fn set_forwarding(
    h: &mut HeaderMap,
    hop: &HeaderValue,
    trusted: bool,
    tls: bool,
    host: Option<&str>,
) {
    Forwarding::new(h, hop, trusted, tls, host).apply(h);
}

/// The fields a proxied request gets about its client and host, in place of
/// the client's own.
#[derive(Debug)]
pub struct Forwarding {
    trusted: bool,
    /// `Host`, when the request's own does not already say it.
    host: Option<HeaderValue>,
    xff: Option<HeaderValue>,
    /// A trusted hop's `Forwarded` with `for=hop` appended.
    forwarded: Option<HeaderValue>,
    xfp: Option<HeaderValue>,
    xfh: Option<HeaderValue>,
}

impl Forwarding {
    /// For a request with fields `h`, whose connection's client is `hop`
    /// (its entry, from [`crate::ctx::ConnCtx::forwarded_for`]) and whose
    /// host is `host` (the HTTP/1.1 `Host`, or HTTP/2's `:authority`).
    /// `trusted`: `hop` is in `trusted_proxies`.
    ///
    /// - Trusted: its chain is kept and `hop` appended (nginx's
    ///   `$proxy_add_x_forwarded_for`), as is an RFC 7239 `Forwarded` it sent
    ///   (`for=hop` appended); its `X-Forwarded-Proto`/`-Host` are kept (it may
    ///   have terminated TLS), else set.
    /// - Not trusted: nothing a client can set about itself is passed on.
    ///   `X-Forwarded-For` becomes `hop` alone, `Forwarded`, `X-Real-IP` and
    ///   the rest of [`CLIENT_CLAIMS`] are removed, `X-Forwarded-Proto`/`-Host`
    ///   are this hop's.
    ///
    /// The untrusted path (every direct client) allocates nothing: `hop` is
    /// formatted once per connection and shared, and a `Host` that already
    /// says `host` is shared too.
    pub fn new(
        h: &HeaderMap,
        hop: &HeaderValue,
        trusted: bool,
        tls: bool,
        host: Option<&str>,
    ) -> Self {
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        let (xfh, host) = match host_value(h, host) {
            Some((v, true)) => (Some(v), None),
            Some((v, false)) => (Some(v.clone()), Some(v)),
            None => (None, None),
        };
        if !trusted {
            return Self {
                trusted,
                host,
                xff: Some(hop.clone()),
                forwarded: None,
                xfp: Some(proto),
                xfh,
            };
        }
        let forwarded = match h.contains_key(header::FORWARDED) {
            true => forwarded_for(hop).and_then(|e| joined(h, &header::FORWARDED, &e)),
            false => None,
        };
        Self {
            trusted,
            host,
            xff: joined(h, &XFF, hop),
            forwarded,
            xfp: (!h.contains_key(&XFP)).then_some(proto),
            xfh: xfh.filter(|_| !h.contains_key(&XFH)),
        }
    }

    /// Whether the client's own `name` fields are left out: set here, or
    /// (from an untrusted client) not to be passed on at all.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        if *name == header::HOST {
            self.host.is_some()
        } else if *name == header::FORWARDED {
            !self.trusted || self.forwarded.is_some()
        } else if *name == XFF {
            self.xff.is_some()
        } else if *name == XFP {
            self.xfp.is_some()
        } else if *name == XFH {
            !self.trusted || self.xfh.is_some()
        } else {
            !self.trusted && is_client_claim(name)
        }
    }

    /// The `Host` to set, when the request's own does not say it already:
    /// written first (RFC 9110 §7.2).
    pub fn host(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    /// The other fields to add: the `X-Forwarded-*` family and `Forwarded`.
    pub fn for_each(&self, mut f: impl FnMut(&HeaderName, &HeaderValue)) {
        // One by one, not as a table: a name is built (and dropped) only for
        // a field that is there.
        if let Some(v) = &self.xff {
            f(&XFF, v);
        }
        if let Some(v) = &self.forwarded {
            f(&header::FORWARDED, v);
        }
        if let Some(v) = &self.xfp {
            f(&XFP, v);
        }
        if let Some(v) = &self.xfh {
            f(&XFH, v);
        }
    }

    /// Sets them on `h`, the request's own fields.
    pub fn apply(self, h: &mut HeaderMap) {
        // Room for the X-Forwarded-* fields at once: a map sized for the
        // client's few fields would otherwise grow (rehash and move) once per
        // insert.
        h.reserve(3);
        if !self.trusted {
            // One look at the names present; removal is for the rare request
            // that has one.
            if h.keys().any(is_client_claim) {
                for name in CLIENT_CLAIMS {
                    h.remove(name);
                }
            }
            if self.xfh.is_none() {
                h.remove(XFH);
            }
        }
        if let Some(v) = self.host {
            h.insert(header::HOST, v);
        }
        if let Some(v) = self.xff {
            h.insert(XFF, v);
        }
        if let Some(v) = self.forwarded {
            h.insert(header::FORWARDED, v);
        }
        if let Some(v) = self.xfp {
            h.insert(XFP, v);
        }
        if let Some(v) = self.xfh {
            h.insert(XFH, v);
        }
    }
}

/// Whether `name` is one of [`CLIENT_CLAIMS`]: compared as text, each
/// compare stopping at a length that differs (a search of `HeaderName`s cost
/// ~200 instructions on every proxied request).
pub(super) fn is_client_claim(name: &HeaderName) -> bool {
    CLIENT_CLAIMS.contains(&name.as_str())
}

/// Whether `name` is any field this hop writes or removes about the client:
/// the `X-Forwarded-*` it sets and every [`CLIENT_CLAIMS`] name.
pub(super) fn is_forwarding(name: &HeaderName) -> bool {
    *name == XFF || *name == XFP || *name == XFH || is_client_claim(name)
}

/// The `Host` value to send upstream for the request's `host`, and whether
/// the request's own `Host` already says that (its value is then shared, not
/// copied, and nothing needs replacing).
fn host_value(h: &HeaderMap, host: Option<&str>) -> Option<(HeaderValue, bool)> {
    let host = host?;
    match h.get(header::HOST) {
        Some(v) if v.as_bytes() == host.as_bytes() => Some((v.clone(), true)),
        _ => HeaderValue::from_str(host).ok().map(|v| (v, false)),
    }
}

/// `<every line of name joined>, item` (one line: a proxy may have sent the
/// chain over several, and only one is sent on).
fn joined(h: &HeaderMap, name: &HeaderName, item: &HeaderValue) -> Option<HeaderValue> {
    let mut joined: Vec<u8> = Vec::new();
    for line in h.get_all(name) {
        let line = line.as_bytes().trim_ascii();
        if line.is_empty() {
            continue;
        }
        if joined.is_empty() {
            joined.reserve(line.len() + 2 + item.len());
        } else {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line);
    }
    if joined.is_empty() {
        return Some(item.clone());
    }
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(item.as_bytes());
    HeaderValue::from_bytes(&joined).ok()
}

/// A `Forwarded` `for=` element for `hop` (IPv6 quoted and bracketed, RFC
/// 7239 §6).
fn forwarded_for(hop: &HeaderValue) -> Option<HeaderValue> {
    let ip = hop.as_bytes();
    let mut elem = Vec::with_capacity(ip.len() + 8);
    if ip.contains(&b':') {
        elem.extend_from_slice(b"for=\"[");
        elem.extend_from_slice(ip);
        elem.extend_from_slice(b"]\"");
    } else {
        elem.extend_from_slice(b"for=");
        elem.extend_from_slice(ip);
    }
    HeaderValue::from_bytes(&elem).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::forwarded_for as entry;

    fn hop(ip: &str) -> HeaderValue {
        entry(ip.parse().unwrap())
    }

    #[test]
    fn a_trusted_hop_appends_to_the_chain() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=203.0.113.7"),
        );
        set_forwarding(&mut h, &hop("127.0.0.1"), true, false, Some("example.test"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.9, 127.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["x-forwarded-proto"], "https",
            "the balancer's scheme is kept"
        );
        assert_eq!(h["x-forwarded-host"], "example.test");
        assert_eq!(h[header::FORWARDED], "for=203.0.113.7, for=127.0.0.1");
        let mut v6 = HeaderMap::new();
        v6.insert(header::FORWARDED, HeaderValue::from_static("for=unknown"));
        set_forwarding(&mut v6, &hop("::1"), true, true, None);
        assert_eq!(v6[header::FORWARDED], "for=unknown, for=\"[::1]\"");
        assert_eq!(v6["x-forwarded-for"], "::1");
        assert_eq!(v6["x-forwarded-proto"], "https");
    }

    #[test]
    fn an_untrusted_client_says_nothing_about_itself() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        h.insert("x-real-ip", HeaderValue::from_static("1.1.1.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        set_forwarding(
            &mut h,
            &hop("198.51.100.7"),
            false,
            false,
            Some("example.test"),
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert!(!h.contains_key(header::FORWARDED));
        assert!(!h.contains_key("x-real-ip"));
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.test");
        let mut no_host = HeaderMap::new();
        no_host.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        set_forwarding(&mut no_host, &hop("::1"), false, true, None);
        assert!(!no_host.contains_key("x-forwarded-host"));
        assert_eq!(no_host["x-forwarded-proto"], "https");
    }

    #[test]
    fn other_proxies_client_claims_are_dropped_unless_trusted() {
        let claims = |h: &mut HeaderMap| {
            for n in ["true-client-ip", "x-client-ip", "cf-connecting-ip"] {
                h.insert(n, HeaderValue::from_static("1.1.1.1"));
            }
            h.insert("x-forwarded-ssl", HeaderValue::from_static("on"));
            h.insert("x-forwarded-port", HeaderValue::from_static("443"));
            h.insert("x-keep", HeaderValue::from_static("1"));
        };
        let mut h = HeaderMap::new();
        claims(&mut h);
        let f = Forwarding::new(&h, &hop("198.51.100.7"), false, false, None);
        assert!(f.replaces(&HeaderName::from_static("true-client-ip")));
        assert!(!f.replaces(&HeaderName::from_static("x-keep")));
        f.apply(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            left,
            ["x-keep", "x-forwarded-for", "x-forwarded-proto"],
            "only the client's own field and the gateway's are left"
        );
        let mut t = HeaderMap::new();
        claims(&mut t);
        let f = Forwarding::new(&t, &hop("10.0.0.1"), true, false, None);
        assert!(!f.replaces(&HeaderName::from_static("true-client-ip")));
        f.apply(&mut t);
        assert_eq!(t["true-client-ip"], "1.1.1.1", "a trusted proxy's word");
    }

    #[test]
    fn the_claim_test_and_the_claim_list_agree() {
        for name in CLIENT_CLAIMS {
            assert!(is_client_claim(&HeaderName::from_static(name)), "{name}");
        }
        assert!(!is_client_claim(&header::HOST));
        assert!(!is_client_claim(&XFF));
    }

    #[test]
    fn forwarding_sets_host_from_the_authority() {
        let mut h = HeaderMap::new();
        set_forwarding(&mut h, &hop("10.0.0.1"), false, true, Some("a.test"));
        assert_eq!(h[header::HOST], "a.test");
        assert_eq!(h["x-forwarded-host"], "a.test");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn host_is_replaced_only_when_it_differs() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.test"));
        let (same, kept) = host_value(&h, Some("a.test")).unwrap();
        assert_eq!((same.to_str().unwrap(), kept), ("a.test", true));
        let (other, kept) = host_value(&h, Some("b.test")).unwrap();
        assert_eq!((other.to_str().unwrap(), kept), ("b.test", false));
        assert!(host_value(&h, None).is_none());
        for (host, want) in [("a.test", "a.test"), ("b.test", "b.test")] {
            let mut m = h.clone();
            set_forwarding(&mut m, &hop("192.0.2.1"), false, false, Some(host));
            assert_eq!(m.get_all(header::HOST).iter().collect::<Vec<_>>(), [want]);
            assert_eq!(m["x-forwarded-host"], want);
        }
    }

    /// The client's fields, then `for_each`'s, minus what `replaces` leaves
    /// out: the written form of the head.
    fn written(h: &HeaderMap, fwd: &Forwarding) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = h
            .iter()
            .filter(|(n, _)| !fwd.replaces(n))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        if let Some(v) = fwd.host() {
            out.push(("host".into(), v.to_str().unwrap().into()));
        }
        fwd.for_each(|n, v| out.push((n.to_string(), v.to_str().unwrap().to_string())));
        out.sort();
        out
    }

    #[test]
    fn the_written_form_says_what_the_map_form_says() {
        let fields: [(&str, &str); 7] = [
            ("host", "a.test"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "lb.test"),
            ("forwarded", "for=203.0.113.7"),
            ("x-real-ip", "203.0.113.7"),
            ("x-keep", "1"),
        ];
        // Every subset of the client's fields, trusted or not, with the same,
        // another or no host, over TLS or not.
        for mask in 0u32..(1 << fields.len()) {
            let mut h = HeaderMap::new();
            for (i, (n, v)) in fields.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    h.append(*n, HeaderValue::from_static(v));
                    if *n == "x-forwarded-for" {
                        h.append(*n, HeaderValue::from_static("10.0.0.9"));
                    }
                }
            }
            for (trusted, tls, host) in [
                (false, false, Some("a.test")),
                (false, true, Some("b.test")),
                (false, false, None),
                (true, false, Some("a.test")),
                (true, true, Some("b.test")),
                (true, false, None),
            ] {
                let fwd = Forwarding::new(&h, &hop("192.0.2.1"), trusted, tls, host);
                let got = written(&h, &fwd);
                let mut m = h.clone();
                fwd.apply(&mut m);
                let mut want: Vec<(String, String)> = m
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                    .collect();
                want.sort();
                assert_eq!(got, want, "mask {mask:b}, trusted {trusted}, host {host:?}");
            }
        }
    }
}
