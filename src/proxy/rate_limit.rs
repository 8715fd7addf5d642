//! The rate-limit filter of the access phase: a route's `limits = [...]`,
//! checked in order on every request and WebSocket handshake (those keyed by
//! `user` in a second filter after authentication, `proxy::phases`); the first limit
//! over its budget answers 429 with `Retry-After` ([`ProxyError::RateLimited`]).
//! Node-scope limits decide synchronously (a hash and a mutex); a route with a
//! cluster-scope limit waits for Redis (at most `limit::cluster::TIMEOUT`,
//! then decides per node).
//!
//! Keys: `ip` is the request's real client address (`ctx::client_ip`: the
//! PROXY header's, or X-Forwarded-For's from trusted proxies); `header:NAME` its value, `user` the
//! authenticated subject (`crate::ctx::User`: such limits run after
//! authentication, `proxy::phases`), both falling back to the address when
//! absent; `route` one bucket for the route.

use std::sync::Arc;

use super::access_phase::{Filter, Head, Verdict};
use super::error::ProxyError;
use crate::config::LimitKey;
use crate::limit::{Decision, KeyId, KeyRef, Kind, Limiter};

/// A route's limits, in the order it names them.
#[derive(Debug)]
pub struct RateLimits {
    limits: Vec<(Arc<Limiter>, Arc<str>)>,
    /// Some limit may wait for Redis: decide in a `Verdict::Later`.
    any_cluster: bool,
}

impl RateLimits {
    /// `None` for a route without limits.
    pub fn new(limiters: Vec<Arc<Limiter>>) -> Option<Self> {
        if limiters.is_empty() {
            return None;
        }
        Some(Self {
            any_cluster: limiters.iter().any(|l| l.is_cluster()),
            limits: limiters
                .into_iter()
                .map(|l| {
                    let name = Arc::from(l.name());
                    (l, name)
                })
                .collect(),
        })
    }
}

/// The key `l` counts this request under.
fn key_of<'a>(l: &Limiter, head: &'a Head<'_>) -> KeyRef<'a> {
    let ip = KeyRef::Ip(crate::ctx::client_ip(head.req, head.conn));
    match l.key() {
        LimitKey::Ip => ip,
        LimitKey::Header(name) => head
            .req
            .headers()
            .get(name)
            .map_or(ip, |v| KeyRef::Header(v.as_bytes())),
        LimitKey::User => head.user.map_or(ip, |u| KeyRef::User(&u.0)),
        LimitKey::Route => KeyRef::Route(&head.route.label),
    }
}

fn answer(name: &Arc<str>, d: Decision) -> Option<Verdict> {
    match d {
        Decision::Allow => None,
        Decision::Limited { retry_after } => Some(Verdict::Answer(ProxyError::RateLimited {
            limit: name.clone(),
            retry_after,
        })),
    }
}

impl Filter for RateLimits {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn check(&self, head: &Head<'_>) -> Verdict {
        let kind = if head.upgrade {
            Kind::Handshake
        } else {
            Kind::Request
        };
        if !self.any_cluster {
            for (l, name) in &self.limits {
                let id = l.id(key_of(l, head));
                if let Some(v) = answer(name, l.check_local(&id, kind)) {
                    return v;
                }
            }
            return Verdict::Pass;
        }
        // Keys are resolved now (they borrow the request); the decisions,
        // which may wait for Redis, run after.
        let pending: Vec<(Arc<Limiter>, Arc<str>, KeyId)> = self
            .limits
            .iter()
            .map(|(l, name)| (l.clone(), name.clone(), l.id(key_of(l, head))))
            .collect();
        Verdict::Later(Box::pin(async move {
            for (l, name, id) in pending {
                if let Some(v) = answer(&name, l.check(&id, kind).await) {
                    return v;
                }
            }
            Verdict::Pass
        }))
    }
}
