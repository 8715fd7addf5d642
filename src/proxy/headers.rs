//! Header hygiene for proxying: hop-by-hop removal (RFC 9110 §7.6.1), the
//! mTLS client-certificate headers, and the path rewrite for `strip_prefix`
//! (what a request says about its client and host is `proxy::forwarded`'s).
//! Pure functions.

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

/// `h` as what goes on sees it, for deciding the fields the gateway adds: a
/// field `Connection` names (`Host`, a trusted hop's `X-Forwarded-For`) is
/// not forwarded, so it must not count as present either. Borrowed unless
/// `names_more` ([`names_more`] of its `Connection` lines).
pub fn forwarded_view(h: &HeaderMap, names_more: bool) -> std::borrow::Cow<'_, HeaderMap> {
    if !names_more {
        return std::borrow::Cow::Borrowed(h);
    }
    let mut stripped = h.clone();
    strip_hop_by_hop(&mut stripped);
    std::borrow::Cow::Owned(stripped)
}

/// A handshake's `Connection`: `None` without the `upgrade` token, else
/// whether it names more than the hop-by-hop fields ([`names_more`]); one
/// look for the field serves both.
pub fn connection_upgrade(h: &HeaderMap) -> Option<bool> {
    let lines = h.get_all(header::CONNECTION);
    lines
        .iter()
        .filter(|v| v.to_str().is_ok())
        .any(|v| list_has(v.as_bytes(), b"upgrade"))
        .then(|| names_more(&lines))
}

/// Whether `Connection` lines name a field besides the hop-by-hop ones (a
/// WebSocket handshake's `Upgrade`).
fn names_more(lines: &http::header::GetAll<'_, HeaderValue>) -> bool {
    let mut each = lines.iter();
    if let (Some(v), None) = (each.next(), each.next()) {
        // Most handshakes: one `Connection: Upgrade`, told at one compare.
        if v.as_bytes().eq_ignore_ascii_case(b"upgrade") {
            return false;
        }
    }
    lines
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| {
            !t.is_empty()
                && !["upgrade", "keep-alive", "close"]
                    .iter()
                    .any(|s| t.eq_ignore_ascii_case(s))
        })
}

/// The fields of `h` but its hop-by-hop ones (those [`strip_hop_by_hop`]
/// removes) and any named in `also`, in order: for a head written as bytes
/// (a WebSocket tunnel's upstream request), which always has some (its
/// `Connection` and `Upgrade`), filtering while writing is cheaper than
/// copying into a map and removing: nothing is built and nothing hashed.
pub fn end_to_end<'a>(
    h: &'a HeaderMap,
    also: &'a [HeaderName],
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> {
    let connection = h.get_all(header::CONNECTION);
    h.iter().filter(move |(name, _)| {
        !(is_hop_by_hop(name)
            || also.contains(name)
            || connection
                .iter()
                .any(|v| v.to_str().is_ok() && list_has(v.as_bytes(), name.as_str().as_bytes())))
    })
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

/// The headers naming the client's verified TLS certificate upstream (mTLS).
pub const CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
pub const CLIENT_CERT_SHA256: HeaderName = HeaderName::from_static("x-client-cert-sha256");

/// Sets `X-Client-Cert-Subject` / `X-Client-Cert-Sha256` from the connection's
/// verified certificate, removing whatever the client sent under those names
/// first: on every route and listener, so a client without a certificate (or
/// on a listener without mTLS) can never claim one.
pub fn set_client_cert(h: &mut HeaderMap, cert: Option<&ClientCert>) {
    remove_present(h, &[CLIENT_CERT_SUBJECT, CLIENT_CERT_SHA256]);
    client_cert_fields(cert, |name, value| {
        h.insert(name.clone(), value.clone());
    });
}

/// Whether `name` is one of the client-certificate headers, which only
/// [`client_cert_fields`] may set (the written form of [`set_client_cert`]).
pub fn is_client_cert(name: &HeaderName) -> bool {
    *name == CLIENT_CERT_SUBJECT || *name == CLIENT_CERT_SHA256
}

/// The client-certificate headers for the connection's verified `cert`.
pub fn client_cert_fields(cert: Option<&ClientCert>, mut f: impl FnMut(&HeaderName, &HeaderValue)) {
    if let Some(c) = cert {
        if let Some(s) = &c.subject {
            f(&CLIENT_CERT_SUBJECT, s);
        }
        f(&CLIENT_CERT_SHA256, &c.sha256);
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

/// Drops every field whose name contains `_`, as nginx does by default
/// (`underscores_in_headers off`). CGI, WSGI, PHP and Rack read `X_User_Id`
/// and `X-User-Id` as the same variable (`HTTP_X_USER_ID`), so a client could
/// otherwise pass an identity or client-address field the gateway strips by
/// its dashed name. One look at the names; removal only when one has `_`.
pub fn drop_underscored(h: &mut HeaderMap) {
    let underscored = |k: &HeaderName| k.as_str().as_bytes().contains(&b'_');
    if h.keys().any(underscored) {
        let names: Vec<HeaderName> = h.keys().filter(|k| underscored(k)).cloned().collect();
        for n in names {
            h.remove(n);
        }
    }
}

/// Cleans a client's request trailers for an HTTP/2 upstream: they lose what
/// a request head is stripped of (hop-by-hop fields, names with `_`,
/// client-address claims, client-certificate fields and the access phase's
/// `dropped` names), and credentials, which the access phase checks in the
/// head only. A trailer is not a header, but a framework may read it
/// as one (RFC 9110 §6.5.2 asks it not to), and nothing the gateway vouches
/// for may come from the client by that way either. `_` names go whatever
/// `underscores_in_headers` says: no known client needs them in trailers.
pub fn clean_trailers(t: &mut HeaderMap, dropped: &[HeaderName]) {
    strip_hop_by_hop(t);
    drop_underscored(t);
    let bad = |k: &HeaderName| {
        super::forwarded::is_forwarding(k)
            || is_client_cert(k)
            || is_credential(k)
            || dropped.contains(k)
    };
    if t.keys().any(bad) {
        let names: Vec<HeaderName> = t.keys().filter(|k| bad(k)).cloned().collect();
        for n in names {
            t.remove(n);
        }
    }
}

/// Where a client's credentials travel (every `token_from`, and what auth
/// callouts are usually keyed on): checked in the head only, so a second
/// copy in the trailers would reach the upstream unchecked. RFC 9110
/// §6.5.1 keeps authentication fields out of trailers anyway.
fn is_credential(name: &HeaderName) -> bool {
    *name == header::AUTHORIZATION
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::COOKIE
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

    #[test]
    fn trailers_lose_what_a_head_is_stripped_of() {
        let mut t = HeaderMap::new();
        for (k, v) in [
            ("grpc-status", "0"),
            ("x-user-id", "alice"),
            ("authorization", "Bearer other"),
            ("cookie", "sid=other"),
            ("x-forwarded-proto", "https"),
            ("true-client-ip", "192.0.2.1"),
            ("x-client-cert-subject", "CN=admin"),
            ("x_user_id", "alice"),
            ("keep-alive", "1"),
        ] {
            t.insert(k, HeaderValue::from_static(v));
        }
        clean_trailers(&mut t, &[HeaderName::from_static("x-user-id")]);
        let left: Vec<&str> = t.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["grpc-status"]);
    }

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
        // The filtering variant keeps exactly what the removing one keeps.
        let copied: HeaderMap = end_to_end(&h, &[header::SEC_WEBSOCKET_KEY])
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        h.remove(header::SEC_WEBSOCKET_KEY);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h.get_all("x-keep").iter().count(), 2);
        assert_eq!(copied, h);
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
