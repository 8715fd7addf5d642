//! Where a token is found in a request: `Authorization: Bearer`, a query
//! parameter, a cookie, and on WebSocket handshakes a `bearer.<token>` entry
//! of `Sec-WebSocket-Protocol` (browsers cannot set headers on a WebSocket;
//! the subprotocol list is the one header they can). Pure functions over the
//! request head.

use std::borrow::Cow;

use http::{header, HeaderMap, HeaderValue};

/// Subprotocol prefix that carries a token.
pub const BEARER_PROTOCOL: &str = "bearer.";

/// One place a token is looked for (`token_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// `?NAME=<token>`.
    Query(String),
    /// `Cookie: NAME=<token>`.
    Cookie(String),
}

impl TokenSource {
    /// `"header"`, `"query:NAME"` or `"cookie:NAME"`.
    pub fn parse(s: &str) -> Option<Self> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        match s.split_once(':') {
            None if s == "header" => Some(TokenSource::Header),
            Some(("query", n)) if name_ok(n) => Some(TokenSource::Query(n.to_string())),
            Some(("cookie", n)) if name_ok(n) => Some(TokenSource::Cookie(n.to_string())),
            _ => None,
        }
    }

    /// The default `token_from`: the header, `?token=`, the `wsgate_token` cookie.
    pub fn defaults() -> Vec<Self> {
        vec![
            TokenSource::Header,
            TokenSource::Query("token".into()),
            TokenSource::Cookie("wsgate_token".into()),
        ]
    }
}

/// A token found in a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'a> {
    pub token: Cow<'a, str>,
}

/// The first token the `sources` find, in order. On a WebSocket handshake
/// (`upgrade`) the `bearer.` subprotocol is looked at last.
pub fn find<'a>(
    sources: &[TokenSource],
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    upgrade: bool,
) -> Option<Found<'a>> {
    let plain = |t: &'a str| Found {
        token: Cow::Borrowed(t),
    };
    for s in sources {
        let found = match s {
            TokenSource::Header => bearer_header(headers).map(plain),
            TokenSource::Query(name) => query
                .and_then(|q| query_param(q, name))
                .map(|token| Found { token }),
            TokenSource::Cookie(name) => cookie(headers, name).map(plain),
        };
        if found.is_some() {
            return found;
        }
    }
    if upgrade {
        return protocol_token(headers).map(plain);
    }
    None
}

/// Where a request carries more than one token for the same source, which
/// the gateway would read first-one-wins while an upstream reading the
/// token again may take the last: the source's name, for a 400. Only the
/// `sources` looked at count (and the `bearer.` subprotocol on a handshake).
pub fn ambiguous(
    sources: &[TokenSource],
    headers: &HeaderMap,
    query: Option<&str>,
    upgrade: bool,
) -> Option<&'static str> {
    for s in sources {
        let (n, what) = match s {
            TokenSource::Header => (
                headers.get_all(header::AUTHORIZATION).iter().count(),
                "Authorization header",
            ),
            TokenSource::Query(name) => (
                query.map_or(0, |q| {
                    q.split('&')
                        .filter(|p| {
                            p.split_once('=')
                                .is_some_and(|(k, v)| names(k, name) && !v.is_empty())
                        })
                        .count()
                }),
                "token in the query",
            ),
            // Distinct values: a browser sends a host-only and a domain
            // cookie of one name side by side, often with the same token.
            TokenSource::Cookie(name) => {
                let mut values: Vec<&str> = cookies_named(headers, name).collect();
                values.sort_unstable();
                values.dedup();
                (values.len(), "token cookie")
            }
        };
        if n > 1 {
            return Some(what);
        }
    }
    let bearers = || {
        protocols(headers)
            .filter(|p| p.starts_with(BEARER_PROTOCOL))
            .count()
    };
    (upgrade && bearers() > 1).then_some("bearer. subprotocol")
}

fn bearer_header(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn query_param<'a>(q: &'a str, name: &str) -> Option<Cow<'a, str>> {
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if !names(k, name) || v.is_empty() {
            return None;
        }
        percent_encoding::percent_decode_str(v).decode_utf8().ok()
    })
}

/// Whether a query parameter's name `k`, as sent, is `name`: compared
/// percent-decoded, as an upstream reads it. Compared as sent, a forged
/// `%74oken=` beside a good `token=` was neither found nor counted, and an
/// upstream that takes the first `token` read the forged one.
fn names(k: &str, name: &str) -> bool {
    k == name
        || (k.contains('%')
            && percent_encoding::percent_decode_str(k)
                .decode_utf8()
                .is_ok_and(|d| d == name))
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies_named(h, name).next()
}

/// The non-empty values of the cookies called `name`, in order.
fn cookies_named<'a, 'n>(
    h: &'a HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            let v = v.trim().trim_matches('"');
            (k.trim() == name && !v.is_empty()).then_some(v)
        })
}

fn protocols(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

fn protocol_token(h: &HeaderMap) -> Option<&str> {
    protocols(h).find_map(|p| p.strip_prefix(BEARER_PROTOCOL).filter(|t| !t.is_empty()))
}

/// Whether a `bearer.` entry is among the offered subprotocols.
pub fn offers_bearer(h: &HeaderMap) -> bool {
    protocols(h).any(|p| p.starts_with(BEARER_PROTOCOL))
}

/// The offered subprotocols without the `bearer.` entries: `None` when
/// nothing is left (the header is then removed), else the new header value.
pub fn protocols_without_bearer(h: &HeaderMap) -> Option<HeaderValue> {
    let rest: Vec<&str> = protocols(h)
        .filter(|p| !p.starts_with(BEARER_PROTOCOL))
        .collect();
    if rest.is_empty() {
        return None;
    }
    HeaderValue::from_str(&rest.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn sources_parse() {
        assert_eq!(TokenSource::parse("header"), Some(TokenSource::Header));
        assert_eq!(
            TokenSource::parse("query:token"),
            Some(TokenSource::Query("token".into()))
        );
        assert_eq!(
            TokenSource::parse("cookie:wsgate_token"),
            Some(TokenSource::Cookie("wsgate_token".into()))
        );
        for bad in ["headers", "query:", "cookie:a b", "form:x"] {
            assert_eq!(TokenSource::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn finds_in_order() {
        let all = TokenSource::defaults();
        let h = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("cookie", "x=1; wsgate_token=c.o.k"),
        ]);
        assert_eq!(
            find(&all, &h, Some("token=q.q.q"), false).unwrap().token,
            "a.b.c"
        );
        let h = headers(&[("cookie", "x=1; wsgate_token=c.o.k")]);
        assert_eq!(
            find(&all, &h, Some("a=1&token=q%2Eq.q"), false)
                .unwrap()
                .token,
            "q.q.q"
        );
        assert_eq!(find(&all, &h, None, false).unwrap().token, "c.o.k");
        let h = headers(&[("authorization", "Basic dXNlcg==")]);
        assert_eq!(find(&all, &h, Some("token="), false), None);
    }

    #[test]
    fn subprotocol_only_on_handshakes_and_removed() {
        let h = headers(&[("sec-websocket-protocol", "chat, bearer.t.o.k")]);
        let src = [TokenSource::Header];
        assert_eq!(find(&src, &h, None, false), None);
        let f = find(&src, &h, None, true).unwrap();
        assert_eq!(f.token.as_ref(), "t.o.k");
        assert!(offers_bearer(&h));
        assert_eq!(protocols_without_bearer(&h).unwrap(), "chat");
        let only = headers(&[("sec-websocket-protocol", "bearer.t.o.k")]);
        assert_eq!(protocols_without_bearer(&only), None);
    }

    /// A second token of a source the gateway reads: refused, as the
    /// upstream might read the other one.
    #[test]
    fn a_token_given_twice_by_one_source_is_ambiguous() {
        let all = TokenSource::defaults();
        let amb = |h: &HeaderMap, q: Option<&str>, up: bool| ambiguous(&all, h, q, up);
        let none = HeaderMap::new();
        assert_eq!(amb(&none, Some("token=a&x=1"), false), None);
        assert_eq!(
            amb(&none, Some("token=a&token=b"), false),
            Some("token in the query")
        );
        // An empty value is no token (as `find` reads it).
        assert_eq!(amb(&none, Some("token=&token=b"), false), None);
        // Names are compared as an upstream decodes them.
        for q in [
            "token=a&%74oken=b",
            "%74oken=b&token=a",
            "token=a&tok%65n=b",
        ] {
            assert_eq!(
                amb(&none, Some(q), false),
                Some("token in the query"),
                "{q}"
            );
        }
        let lone = find(&all, &none, Some("%74oken=t.o.k"), false).map(|f| f.token);
        assert_eq!(lone.as_deref(), Some("t.o.k"));
        let two = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(amb(&two, None, false), Some("Authorization header"));
        let cookies = headers(&[
            ("cookie", "wsgate_token=a; x=1"),
            ("cookie", "wsgate_token=b"),
        ]);
        assert_eq!(amb(&cookies, None, false), Some("token cookie"));
        let protos = headers(&[("sec-websocket-protocol", "bearer.a, chat, bearer.b")]);
        assert_eq!(amb(&protos, None, true), Some("bearer. subprotocol"));
        assert_eq!(amb(&protos, None, false), None);
        // Sources the route does not read do not count.
        assert_eq!(
            ambiguous(
                &[TokenSource::Header],
                &cookies,
                Some("token=a&token=b"),
                false
            ),
            None
        );
    }
}
