//! The route keys of auth callouts (`auth_request`, `auth_request_path`,
//! `auth_request_headers`, `auth_request_cache`; docs/auth.md, nginx
//! `auth_request` semantics) → [`AuthRequestConfig`]. Kept apart from
//! `validate.rs`: it reports problems as `(span, message)` pairs that the
//! validator turns into `PATH:LINE:COL` issues.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use http::HeaderName;

use super::file::{RouteFile, SStr};
use super::messages::dropped_header;
use super::units::parse_duration;
use super::UpstreamConfig;

/// A route's auth callout, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequestConfig {
    /// The upstream pool asked (it exists: validation checked).
    pub upstream: String,
    /// Path (and query) of the GET subrequest; starts with `/`.
    pub path: String,
    /// Headers of a 2xx answer copied onto the upstream request. The client's
    /// own copies of these names are always removed on the route.
    pub headers: Vec<HeaderName>,
    /// How long a decision is reused for the same credentials; zero = never.
    pub cache_ttl: Duration,
    /// What of the subrequest tells one cached decision from another
    /// (`auth_request_cache_key`); the client certificate always does.
    pub cache_key: Vec<CacheKeyPart>,
}

/// One part of an auth callout's cache key: something the subrequest
/// carries, so the key is made only of what the service can decide by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKeyPart {
    /// Every value of a subrequest header (the `X-Original-*` included).
    Header(HeaderName),
    /// Every value of a parameter of the original query.
    Query(String),
    /// Every value of a cookie.
    Cookie(String),
}

impl CacheKeyPart {
    /// Whether the part can tell one client from another. The original
    /// request's method, URI, host and address (`X-Original-*`, always
    /// set) describe the request: a request whose only key parts are those
    /// is never cached.
    pub fn is_credential(&self) -> bool {
        match self {
            Self::Header(n) => !n.as_str().starts_with("x-original-"),
            Self::Query(_) | Self::Cookie(_) => true,
        }
    }

    /// The credentials a client presents in headers: the default key.
    pub fn defaults() -> Vec<Self> {
        [
            http::header::AUTHORIZATION,
            http::header::COOKIE,
            http::header::SEC_WEBSOCKET_PROTOCOL,
        ]
        .into_iter()
        .map(Self::Header)
        .collect()
    }

    /// `header:NAME`, `query:NAME`, `cookie:NAME`, or one of `uri`,
    /// `method`, `host`, `ip` (the subrequest's `X-Original-*` headers).
    fn parse(s: &str) -> Result<Self, String> {
        let original = |n: &'static str| Ok(Self::Header(HeaderName::from_static(n)));
        match s.trim() {
            "uri" => return original("x-original-uri"),
            "method" => return original("x-original-method"),
            "host" => return original("x-original-host"),
            "ip" => return original("x-original-for"),
            _ => {}
        }
        let bad = || {
            format!("{s:?} is not \"header:NAME\", \"query:NAME\", \"cookie:NAME\", \"uri\", \"method\", \"host\" or \"ip\"")
        };
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b";=&,\"".contains(&b));
        match kind.trim() {
            "header" => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) if UNSENT.contains(&n.as_str()) => Err(format!(
                    "{n} is not sent to the auth service (\"uri\", \"method\", \"host\" and \"ip\" name the original request)"
                )),
                Ok(n) => Ok(Self::Header(n)),
                Err(_) => Err(format!("{name:?} is not a header name")),
            },
            "query" if token => Ok(Self::Query(name.to_string())),
            "cookie" if token => Ok(Self::Cookie(name.to_string())),
            _ => Err(bad()),
        }
    }
}

/// Request headers the subrequest never carries: a key part naming one
/// would hold nothing.
const UNSENT: [&str; 15] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "expect",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "proxy-authorization",
];

/// Headers an auth service may not set upstream: they frame or route the
/// request, so copying them would corrupt it rather than annotate it.
const RESERVED: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "expect",
];

/// Reads the route's `auth_request*` keys. Problems go to `issues`; `None`
/// when the route has no callout (or its callout is unusable).
pub(super) fn parse(
    r: &RouteFile,
    key: &str,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    underscores: bool,
    issues: &mut Vec<(Range<usize>, String)>,
) -> Option<AuthRequestConfig> {
    let Some(name) = &r.auth_request else {
        // The other keys alone would silently do nothing: say so.
        let stray = [
            r.auth_request_path
                .as_ref()
                .map(|v| (v.span(), "auth_request_path")),
            r.auth_request_cache
                .as_ref()
                .map(|v| (v.span(), "auth_request_cache")),
            r.auth_request_cache_key
                .as_ref()
                .map(|v| (v.span(), "auth_request_cache_key")),
            r.auth_request_headers
                .as_ref()
                .and_then(|v| v.first())
                .map(|v| (v.span(), "auth_request_headers")),
        ];
        for (span, k) in stray.into_iter().flatten() {
            issues.push((
                span,
                format!("{key}.{k}: needs `auth_request` (an upstream name)"),
            ));
        }
        return None;
    };
    let mut ok = true;
    if !upstreams.contains_key(name.get_ref()) {
        let known = super::known(upstreams.keys());
        issues.push((
            name.span(),
            format!(
                "{key}.auth_request: no [upstream.{}] is defined ({known})",
                name.get_ref()
            ),
        ));
        ok = false;
    }
    let path = match &r.auth_request_path {
        None => "/".to_string(),
        Some(p) => {
            let valid = p.get_ref().starts_with('/')
                && http::uri::PathAndQuery::try_from(p.get_ref().as_str()).is_ok();
            if !valid {
                issues.push((
                    p.span(),
                    format!(
                        "{key}.auth_request_path: {:?} is not a path starting with '/'",
                        p.get_ref()
                    ),
                ));
                ok = false;
            }
            p.get_ref().clone()
        }
    };
    let mut headers = Vec::new();
    for h in r.auth_request_headers.iter().flatten() {
        match HeaderName::from_bytes(h.get_ref().trim().as_bytes()) {
            Ok(n) if RESERVED.contains(&n.as_str()) => {
                issues.push((
                    h.span(),
                    format!("{key}.auth_request_headers: {n} cannot be copied from an auth answer"),
                ));
                ok = false;
            }
            Ok(n) => {
                if !headers.contains(&n) {
                    headers.push(n);
                }
            }
            Err(_) => {
                issues.push((
                    h.span(),
                    format!(
                        "{key}.auth_request_headers: {:?} is not a header name",
                        h.get_ref()
                    ),
                ));
                ok = false;
            }
        }
    }
    let cache_ttl = match &r.auth_request_cache {
        None => Duration::ZERO,
        Some(c) => parse_duration(c.get_ref()).unwrap_or_else(|e| {
            issues.push((c.span(), format!("{key}.auth_request_cache: {e}")));
            ok = false;
            Duration::ZERO
        }),
    };
    let cache_key = match &r.auth_request_cache_key {
        None => CacheKeyPart::defaults(),
        Some(parts) => {
            let found = cache_key(parts, key, cache_ttl, underscores, issues);
            ok &= found.is_some();
            found.unwrap_or_default()
        }
    };
    ok.then(|| AuthRequestConfig {
        upstream: name.get_ref().clone(),
        path,
        headers,
        cache_ttl,
        cache_key,
    })
}

/// Reads `auth_request_cache_key`; `None` after reporting a problem.
fn cache_key(
    parts: &toml::Spanned<Vec<SStr>>,
    key: &str,
    cache_ttl: Duration,
    underscores: bool,
    issues: &mut Vec<(Range<usize>, String)>,
) -> Option<Vec<CacheKeyPart>> {
    let k = format!("{key}.auth_request_cache_key");
    if cache_ttl.is_zero() {
        issues.push((parts.span(), format!("{k}: needs `auth_request_cache`")));
        return None;
    }
    if parts.get_ref().is_empty() {
        issues.push((
            parts.span(),
            format!("{k}: names nothing; to cache nothing, leave auth_request_cache out"),
        ));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for p in parts.get_ref() {
        let part = CacheKeyPart::parse(p.get_ref())
            .map_err(|e| format!("{k}: {e}"))
            .and_then(|part| match &part {
                CacheKeyPart::Header(n) => {
                    dropped_header(&k, n.as_str(), underscores).map_or(Ok(part), Err)
                }
                _ => Ok(part),
            });
        match part {
            Ok(part) => out.push(part),
            Err(m) => {
                issues.push((p.span(), m));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn check(route: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n[upstream.authsvc]\nservers = [\"127.0.0.1:9\"]\n[upstream.api]\nservers = [\"127.0.0.1:9\"]\n[[route]]\npath = \"/api/\"\nupstream = \"api\"\n{route}"
        );
        crate::config::parse(Path::new("t.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn full_callout_config() {
        let cfg = check(
            "auth_request = \"authsvc\"\nauth_request_path = \"/check?x=1\"\nauth_request_headers = [\"X-User-Id\", \"x-user-id\", \"X-Roles\"]\nauth_request_cache = \"10s\"\n",
        )
        .unwrap();
        let a = cfg.routes[0].auth_request.as_ref().unwrap();
        assert_eq!(a.upstream, "authsvc");
        assert_eq!(a.path, "/check?x=1");
        assert_eq!(a.headers, vec!["x-user-id", "x-roles"]);
        assert_eq!(a.cache_ttl, std::time::Duration::from_secs(10));
        assert_eq!(a.cache_key, super::CacheKeyPart::defaults());
        // The default key is said out loud: a service that reads an API key
        // would share decisions between clients that differ only there.
        assert!(
            cfg.warnings.iter().any(|w| w.starts_with(
                "route[0].auth_request_cache: decisions are cached per Authorization"
            )),
            "{:?}",
            cfg.warnings
        );
    }

    #[test]
    fn cache_keys_name_what_the_subrequest_carries() {
        use super::CacheKeyPart::{Cookie, Header, Query};
        let cfg = check(
            "auth_request = \"authsvc\"\nauth_request_cache = \"5s\"\nauth_request_cache_key = [\"header:X-Api-Key\", \"query:token\", \"cookie:sid\", \"uri\", \"ip\"]\n",
        )
        .unwrap();
        let a = cfg.routes[0].auth_request.as_ref().unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let h = http::HeaderName::from_static;
        assert_eq!(
            a.cache_key,
            vec![
                Header(h("x-api-key")),
                Query("token".into()),
                Cookie("sid".into()),
                Header(h("x-original-uri")),
                Header(h("x-original-for")),
            ]
        );
        let bad = |key: &str| {
            check(&format!(
                "auth_request = \"authsvc\"\nauth_request_cache = \"5s\"\nauth_request_cache_key = {key}\n"
            ))
            .unwrap_err()
        };
        let e = bad("[\"header:Host\"]");
        assert!(
            e.contains("t.toml:12:27: route[0].auth_request_cache_key: host is not sent"),
            "{e}"
        );
        let e = bad("[\"uri\", \"query:\", \"form:x\", \"cookie:a;b\"]");
        assert!(e.contains("\"query:\" is not \"header:NAME\""), "{e}");
        assert!(e.contains("\"form:x\" is not"), "{e}");
        assert!(e.contains("\"cookie:a;b\" is not"), "{e}");
        assert!(bad("[]").contains("names nothing"));
        assert!(bad("[\"header:X_Key\"]").contains("has a '_'"));
        let e =
            check("auth_request = \"authsvc\"\nauth_request_cache_key = [\"uri\"]\n").unwrap_err();
        assert!(
            e.contains("t.toml:11:26: route[0].auth_request_cache_key: needs `auth_request_cache`"),
            "{e}"
        );
    }

    #[test]
    fn defaults_and_absence() {
        let cfg = check("auth_request = \"authsvc\"\n").unwrap();
        let a = cfg.routes[0].auth_request.as_ref().unwrap();
        assert_eq!(a.path, "/");
        assert!(a.headers.is_empty());
        assert!(a.cache_ttl.is_zero());
        assert!(check("").unwrap().routes[0].auth_request.is_none());
    }

    #[test]
    fn errors_name_key_and_position() {
        let e = check("auth_request = \"nope\"\n").unwrap_err();
        assert!(
            e.starts_with("t.toml:10:16: route[0].auth_request: no [upstream.nope]"),
            "{e}"
        );
        let e = check("auth_request = \"authsvc\"\nauth_request_path = \"check\"\n").unwrap_err();
        assert!(
            e.contains("t.toml:11:21: route[0].auth_request_path"),
            "{e}"
        );
        let e =
            check("auth_request = \"authsvc\"\nauth_request_cache = \"10 parsecs\"\n").unwrap_err();
        assert!(
            e.contains("t.toml:11:22: route[0].auth_request_cache"),
            "{e}"
        );
        let e =
            check("auth_request = \"authsvc\"\nauth_request_headers = [\"bad name\", \"Host\"]\n")
                .unwrap_err();
        assert!(e.contains("\"bad name\" is not a header name"), "{e}");
        assert!(e.contains("host cannot be copied"), "{e}");
        let e = check("auth_request_path = \"/check\"\n").unwrap_err();
        assert!(
            e.contains("t.toml:10:21: route[0].auth_request_path: needs `auth_request`"),
            "{e}"
        );
    }
}
