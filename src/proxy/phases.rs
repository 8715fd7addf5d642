//! Which access-phase filters a route gets, built once per route when a
//! config is loaded: rate limits, authentication (then the limits keyed by
//! the authenticated `user`), then authorization (the
//! route's own checks — `websocket = false`, the Origin allowlist — and last
//! an auth callout, so a request the local checks refuse costs no callout).

use std::collections::HashMap;
use std::sync::Arc;

use http::header;

use super::access_phase::{Filter, Head, Phase, Verdict};
use super::auth_request::AuthRequest;
use super::authn::Authenticate;
use super::error::ProxyError;
use super::rate_limit::RateLimits;
use crate::auth::Verifiers;
use crate::config::{LimitKey, RouteConfig};
use crate::limit::Registry;
use crate::upstream::Pool;

/// The filters a route's config asks for, in the phase's order: rate
/// limits (`limits` resolves the names in its `limits`), authentication
/// (`verifiers` holds every `[auth.NAME]`; validation made sure the
/// route's exists), then authorization (the local checks, then an auth
/// callout to one of `pools`).
pub fn for_route(
    cfg: &RouteConfig,
    limits: &Registry,
    verifiers: &Verifiers,
    pools: &HashMap<String, Arc<Pool>>,
) -> Phase {
    let mut filters: Vec<Box<dyn Filter>> = Vec::new();
    let authn = cfg
        .auth
        .as_ref()
        .and_then(|a| Some(Authenticate::new(verifiers.get(&a.verifier)?.clone(), a)));
    // A limit keyed by `user` counts the authenticated subject, so on a route
    // with `auth` it runs right after authentication; the others run first,
    // as the phase's order says, so a flood costs no token check.
    let (by_user, before): (Vec<_>, Vec<_>) = limits
        .pick(&cfg.limits)
        .into_iter()
        .partition(|l| authn.is_some() && *l.key() == LimitKey::User);
    if let Some(f) = RateLimits::new(before) {
        filters.push(Box::new(f));
    }
    match (authn, &cfg.auth) {
        (Some(a), _) => filters.push(Box::new(a)),
        // Validation guarantees the verifier; fail closed if it ever is not.
        (None, Some(a)) => filters.push(Box::new(Misconfigured(format!(
            "verifier [auth.{}] missing",
            a.verifier
        )))),
        (None, None) => {}
    }
    if let Some(f) = RateLimits::new(by_user) {
        filters.push(Box::new(f));
    }
    if !cfg.websocket {
        filters.push(Box::new(WebSocketDisabled));
    }
    if let Some(allowed) = &cfg.origins {
        filters.push(Box::new(OriginAllowlist {
            allowed: allowed.clone(),
        }));
    }
    // After the local checks: a request they refuse costs no callout.
    if let Some(a) = &cfg.auth_request {
        match pools.get(&a.upstream) {
            Some(pool) => filters.push(Box::new(AuthRequest::new(a, pool.clone()))),
            // Validation guarantees the pool; fail closed if it ever is not.
            None => filters.push(Box::new(Misconfigured(format!(
                "auth pool {} missing",
                a.upstream
            )))),
        }
    }
    Phase::new(filters)
}

/// `websocket = false`: handshakes are refused (403), plain requests pass.
#[derive(Debug)]
struct WebSocketDisabled;

impl Filter for WebSocketDisabled {
    fn name(&self) -> &'static str {
        "websocket"
    }

    fn check(&self, head: &Head<'_>) -> Verdict {
        if head.upgrade {
            Verdict::Answer(ProxyError::WebSocketDisabled)
        } else {
            Verdict::Pass
        }
    }
}

/// `origins = [...]`: a handshake's `Origin` must be listed (browsers send it;
/// this is the cross-site WebSocket hijacking defence). Plain requests pass.
#[derive(Debug)]
struct OriginAllowlist {
    allowed: Vec<String>,
}

impl Filter for OriginAllowlist {
    fn name(&self) -> &'static str {
        "origin"
    }

    fn check(&self, head: &Head<'_>) -> Verdict {
        if !head.upgrade {
            return Verdict::Pass;
        }
        let value = head.req.headers().get(header::ORIGIN);
        let origin = value.and_then(|o| o.to_str().ok()).unwrap_or("");
        let trimmed = origin.trim_end_matches('/');
        if self.allowed.iter().any(|a| a.eq_ignore_ascii_case(trimmed)) {
            Verdict::Pass
        } else {
            Verdict::Answer(ProxyError::OriginNotAllowed(shown_origin(value)))
        }
    }
}

/// A filter whose configuration could not be built: refuses everything
/// rather than letting requests through unchecked.
#[derive(Debug)]
struct Misconfigured(String);

impl Filter for Misconfigured {
    fn name(&self) -> &'static str {
        "misconfigured"
    }

    fn check(&self, _: &Head<'_>) -> Verdict {
        Verdict::Answer(ProxyError::Internal(self.0.clone()))
    }
}

/// A refused `Origin` as the answer shows it: what the client sent, as
/// UTF-8 text with invalid bytes replaced (a non-ASCII origin read as ""
/// before), and at most 200 characters of it (a client's 3 KB origin was
/// echoed whole).
fn shown_origin(value: Option<&http::HeaderValue>) -> String {
    const MAX: usize = 200;
    let Some(v) = value else {
        return String::new();
    };
    let text = String::from_utf8_lossy(v.as_bytes());
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_origin_is_shown_as_text_and_cut() {
        let h = |b: &[u8]| http::HeaderValue::from_bytes(b).expect("value");
        assert_eq!(shown_origin(None), "");
        assert_eq!(shown_origin(Some(&h(b"https://a.test"))), "https://a.test");
        assert_eq!(
            shown_origin(Some(&h("https://é.test".as_bytes()))),
            "https://é.test"
        );
        let long = shown_origin(Some(&h("x".repeat(3000).as_bytes())));
        assert_eq!(long.chars().count(), 201);
        assert!(long.ends_with('…'));
    }
}
