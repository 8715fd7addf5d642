//! Header hygiene for proxying: hop-by-hop removal (RFC 9110 §7.6.1), the
//! `X-Forwarded-*` family (and what an untrusted client may not say about
//! itself), the mTLS client-certificate headers, and the path rewrite for
//! `strip_prefix`. Pure functions.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::client_cert::ClientCert;
use crate::fields::list_has;

/// Headers that describe one hop and must never be forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Removes `Connection`, every header it names, `Keep-Alive`, `Proxy-*`, `TE`,
/// `Trailer`, `Transfer-Encoding` and `Upgrade`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the names is cheaper
    // than a hashed removal per name (this runs twice per proxied request).
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = connection_tokens(h)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed {
        h.remove(name);
    }
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    h.remove("keep-alive");
    let proxy: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        h.remove(name);
    }
}

/// A copy of `h` without its hop-by-hop fields (those [`strip_hop_by_hop`]
/// removes) nor any named in `also`, with room for `spare` more. For a
/// request that always has some (a WebSocket upgrade's `Connection` and
/// `Upgrade`), filtering while copying is cheaper than copying then removing:
/// no list of names is built and nothing is hashed twice.
pub fn end_to_end(h: &HeaderMap, also: &[HeaderName], spare: usize) -> HeaderMap {
    let listed: Vec<&str> = connection_tokens(h).collect();
    let mut out = HeaderMap::with_capacity(h.len() + spare);
    for (name, value) in h {
        let n = name.as_str();
        if is_hop_by_hop(name)
            || also.contains(name)
            || listed.iter().any(|t| t.eq_ignore_ascii_case(n))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The field names a `Connection` header lists (RFC 9110 §7.6.1).
fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == "keep-alive" || name.as_str().starts_with("proxy-")
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` for a
/// request whose connection's client is `hop` (its entry, from
/// [`crate::ctx::ConnCtx::forwarded_for`]). `trusted`: `hop` is in
/// `trusted_proxies` (docs/client-address.md).
///
/// - Trusted: its chain is kept and `hop` appended (nginx's
///   `$proxy_add_x_forwarded_for`), as is an RFC 7239 `Forwarded` it sent
///   (`for=hop` appended); its `X-Forwarded-Proto`/`-Host` are kept (it may
///   have terminated TLS), else set.
/// - Not trusted: nothing a client can set about itself is passed on.
///   `X-Forwarded-For` becomes `hop` alone, `Forwarded` and `X-Real-IP` are
///   removed, `X-Forwarded-Proto`/`-Host` are this hop's.
///
/// The untrusted path (every direct client) allocates nothing: `hop` is
/// formatted once per connection and shared.
pub fn add_forwarded(
    h: &mut HeaderMap,
    hop: &HeaderValue,
    trusted: bool,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    if trusted {
        append_to_list(h, XFF, hop);
        if h.contains_key(header::FORWARDED) {
            append_forwarded_for(h, hop);
        }
        if !h.contains_key(&XFP) {
            h.insert(XFP, proto);
        }
        if let Some(v) = host {
            if !h.contains_key(&XFH) {
                h.insert(XFH, v.clone());
            }
        }
    } else {
        h.insert(XFF, hop.clone());
        remove_present(h, &[header::FORWARDED, X_REAL_IP]);
        h.insert(XFP, proto);
        match host {
            Some(v) => h.insert(XFH, v.clone()),
            None => h.remove(XFH),
        };
    }
}

// Static names: parsing "x-forwarded-*" from strings allocated on every request.
const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// `name: <every line joined>, item` (one line: a proxy may have sent the
/// chain over several, and a later `insert` would keep only the first).
fn append_to_list(h: &mut HeaderMap, name: HeaderName, item: &HeaderValue) {
    let mut joined: Vec<u8> = Vec::new();
    for line in h.get_all(&name) {
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
    let value = if joined.is_empty() {
        Some(item.clone())
    } else {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(item.as_bytes());
        HeaderValue::from_bytes(&joined).ok()
    };
    if let Some(v) = value {
        h.insert(name, v);
    }
}

/// Appends a `for=` element for `hop` to `Forwarded` (IPv6 quoted and
/// bracketed, RFC 7239 §6).
fn append_forwarded_for(h: &mut HeaderMap, hop: &HeaderValue) {
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
    if let Ok(v) = HeaderValue::from_bytes(&elem) {
        append_to_list(h, header::FORWARDED, &v);
    }
}

/// Sets what a proxied request carries about its client and host: the
/// `X-Forwarded-*` family ([`add_forwarded`]) and `Host` = the request's host
/// (already there for HTTP/1.1, added for HTTP/2 `:authority`).
pub fn set_forwarding(
    h: &mut HeaderMap,
    hop: &HeaderValue,
    trusted: bool,
    tls: bool,
    host: Option<&str>,
) {
    // Room for the X-Forwarded-* fields at once: a map sized for the client's
    // few fields would otherwise grow (rehash and move) once per insert.
    h.reserve(3);
    let host = host_value(h, host);
    add_forwarded(h, hop, trusted, tls, host.as_ref().map(|(v, _)| v));
    if let Some((v, false)) = host {
        h.insert(header::HOST, v);
    }
}

/// The headers naming the client's verified TLS certificate upstream (mTLS).
pub const CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
pub const CLIENT_CERT_SHA256: HeaderName = HeaderName::from_static("x-client-cert-sha256");

/// Sets `X-Client-Cert-Subject` / `X-Client-Cert-Sha256` from the connection's
/// verified certificate, removing whatever the client sent under those names
/// first: on every route and listener, so a client without a certificate (or
/// on a listener without mTLS) can never claim one.
pub fn set_client_cert(h: &mut HeaderMap, cert: Option<&ClientCert>) {
    remove_present(h, &[CLIENT_CERT_SUBJECT, CLIENT_CERT_SHA256]);
    if let Some(c) = cert {
        if let Some(s) = &c.subject {
            h.insert(CLIENT_CERT_SUBJECT, s.clone());
        }
        h.insert(CLIENT_CERT_SHA256, c.sha256.clone());
    }
}

/// Removes `names` from `h`, looking at the names present once instead of
/// hashing each of `names`: these are headers a client may not send, almost
/// never there, and checked on every proxied request.
pub fn remove_present(h: &mut HeaderMap, names: &[HeaderName]) {
    if h.keys().any(|k| names.contains(k)) {
        for n in names {
            h.remove(n);
        }
    }
}

/// The `Host` value to send upstream for the request's `host`, and whether
/// the request's own `Host` already says that (its value is then shared, not
/// copied, and nothing needs replacing).
pub fn host_value(h: &HeaderMap, host: Option<&str>) -> Option<(HeaderValue, bool)> {
    let host = host?;
    match h.get(header::HOST) {
        Some(v) if v.as_bytes() == host.as_bytes() => Some((v.clone(), true)),
        _ => HeaderValue::from_str(host).ok().map(|v| (v, false)),
    }
}

/// Does the comma-separated header list contain `token` (case-insensitively)?
/// A value that is not visible ASCII names none (it is not read as text).
pub fn has_token(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter(|v| v.to_str().is_ok())
        .any(|v| list_has(v.as_bytes(), token.as_bytes()))
}

/// The upstream path and query for `path_and_query` under a route `prefix`.
pub fn rewrite_path(path_and_query: &str, prefix: &str, strip: bool) -> String {
    if !strip {
        return path_and_query.to_string();
    }
    let rest = path_and_query
        .strip_prefix(prefix.trim_end_matches('/'))
        .unwrap_or(path_and_query);
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::forwarded_for;

    #[test]
    fn strips_listed_and_static_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("x"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert("x-keep", HeaderValue::from_static("yes"));
        h.append("x-keep", HeaderValue::from_static("too"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("k"));
        // The copying variant keeps exactly what the removing one keeps.
        let copied = end_to_end(&h, &[header::SEC_WEBSOCKET_KEY], 4);
        h.remove(header::SEC_WEBSOCKET_KEY);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h.get_all("x-keep").iter().count(), 2);
        assert_eq!(copied, h);
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
        add_forwarded(
            &mut h,
            &forwarded_for("127.0.0.1".parse().unwrap()),
            true,
            false,
            Some(&HeaderValue::from_static("example.test")),
        );
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
        add_forwarded(
            &mut v6,
            &forwarded_for("::1".parse().unwrap()),
            true,
            true,
            None,
        );
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
        add_forwarded(
            &mut h,
            &forwarded_for("198.51.100.7".parse().unwrap()),
            false,
            false,
            Some(&HeaderValue::from_static("example.test")),
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert!(!h.contains_key(header::FORWARDED));
        assert!(!h.contains_key("x-real-ip"));
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.test");
        let mut no_host = HeaderMap::new();
        no_host.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        add_forwarded(
            &mut no_host,
            &forwarded_for("::1".parse().unwrap()),
            false,
            true,
            None,
        );
        assert!(!no_host.contains_key("x-forwarded-host"));
        assert_eq!(no_host["x-forwarded-proto"], "https");
    }

    #[test]
    fn messages_without_hop_headers_are_untouched() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert(
            "x-proxy-id",
            HeaderValue::from_static("kept: not a proxy- header"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        h.insert("proxy-foo", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(!h.contains_key("proxy-foo"));
    }

    #[test]
    fn forwarding_sets_host_from_the_authority() {
        let mut h = HeaderMap::new();
        set_forwarding(
            &mut h,
            &forwarded_for("10.0.0.1".parse().unwrap()),
            false,
            true,
            Some("a.test"),
        );
        assert_eq!(h[header::HOST], "a.test");
        assert_eq!(h["x-forwarded-host"], "a.test");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn client_cert_headers_are_always_replaced() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-client-cert-subject",
            HeaderValue::from_static("CN=admin"),
        );
        h.insert("X-Client-Cert-Sha256", HeaderValue::from_static("00"));
        set_client_cert(&mut h, None);
        assert!(h.is_empty(), "{h:?}");
        h.insert(
            "x-client-cert-subject",
            HeaderValue::from_static("CN=admin"),
        );
        let c = ClientCert {
            subject: Some(HeaderValue::from_static("CN=alice")),
            sha256: HeaderValue::from_static("ab"),
        };
        set_client_cert(&mut h, Some(&c));
        assert_eq!(h["x-client-cert-subject"], "CN=alice");
        assert_eq!(h["x-client-cert-sha256"], "ab");
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn host_value_reuses_the_request_header() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.test"));
        let (same, kept) = host_value(&h, Some("a.test")).unwrap();
        assert_eq!((same.to_str().unwrap(), kept), ("a.test", true));
        let (other, kept) = host_value(&h, Some("b.test")).unwrap();
        assert_eq!((other.to_str().unwrap(), kept), ("b.test", false));
        assert!(host_value(&h, None).is_none());
        // Set when it differs, left alone (one field, not two) when it agrees.
        for (host, want) in [("a.test", "a.test"), ("b.test", "b.test")] {
            let mut m = h.clone();
            set_forwarding(
                &mut m,
                &HeaderValue::from_static("192.0.2.1"),
                false,
                false,
                Some(host),
            );
            assert_eq!(m.get_all(header::HOST).iter().collect::<Vec<_>>(), [want]);
            assert_eq!(m["x-forwarded-host"], want);
        }
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("foo, UpGrade"));
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "close"));
    }

    #[test]
    fn rewrite() {
        assert_eq!(rewrite_path("/api/users?x=1", "/api/", true), "/users?x=1");
        assert_eq!(rewrite_path("/api", "/api", true), "/");
        assert_eq!(rewrite_path("/api/x", "/api", false), "/api/x");
        assert_eq!(rewrite_path("/api?q", "/api", true), "/?q");
    }
}
