//! The route keys of auth callouts (`auth_request`, `auth_request_path`,
//! `auth_request_headers`, `auth_request_cache`; docs/auth.md, nginx
//! `auth_request` semantics) → [`AuthRequestConfig`]. Kept apart from
//! `validate.rs`: it reports problems as `(span, message)` pairs that the
//! validator turns into `PATH:LINE:COL` issues.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use http::HeaderName;

use super::file::RouteFile;
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
}

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
    ok.then(|| AuthRequestConfig {
        upstream: name.get_ref().clone(),
        path,
        headers,
        cache_ttl,
    })
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
