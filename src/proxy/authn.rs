//! The authentication filter of a route with `auth = "NAME"`: finds the
//! token (`token_from`, and the `bearer.` subprotocol on handshakes),
//! verifies it, and passes the request on as the token's user with the
//! route's `auth_claims_to_headers` set upstream. A missing or bad token is
//! answered 401 before anything reaches the upstream or the app; why it was
//! bad goes to the debug log only.

use std::sync::{Arc, OnceLock};

use http::{header, HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;

use super::access_phase::{Filter, Head, Identity, Verdict};
use super::error::ProxyError;
use crate::auth::{self, AuthError, Verifier};
use crate::config::RouteAuth;
use crate::ctx::User;
use crate::metrics::{Metrics, RouteResult};

/// `wsgate_auth_total` results this filter produces, in counter order.
const RESULTS: [&str; 4] = ["ok", "missing", "invalid", "expired"];

#[derive(Debug)]
pub struct Authenticate {
    verifier: Arc<Verifier>,
    claims_to_headers: Vec<(HeaderName, String)>,
    /// This route's counters, looked up once (a family lookup per request
    /// clones and hashes the labels).
    counters: [OnceLock<Counter>; RESULTS.len()],
}

impl Authenticate {
    pub fn new(verifier: Arc<Verifier>, cfg: &RouteAuth) -> Self {
        Self {
            verifier,
            claims_to_headers: cfg.claims_to_headers.clone(),
            counters: Default::default(),
        }
    }

    fn count(&self, m: &Metrics, route: &str, result: &'static str) {
        let i = RESULTS.iter().position(|r| *r == result).unwrap_or(2);
        self.counters[i]
            .get_or_init(|| {
                m.auth
                    .get_or_create(&RouteResult {
                        route: route.to_string(),
                        result: result.to_string(),
                    })
                    .clone()
            })
            .inc();
    }
}

impl Filter for Authenticate {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn check(&self, head: &Head<'_>) -> Verdict {
        let req = head.req;
        let twice = auth::ambiguous(
            &self.verifier.token_from,
            req.headers(),
            req.uri().query(),
            head.upgrade,
        );
        if let Some(what) = twice {
            // The gateway would check one and the upstream might read the
            // other, as with a repeated Host or Origin: refused.
            self.count(head.metrics, &head.route.label, "invalid");
            return Verdict::Answer(ProxyError::BadRequest(format!("more than one {what}")));
        }
        let found = auth::find(
            &self.verifier.token_from,
            req.headers(),
            req.uri().query(),
            head.upgrade,
        );
        let verified = match &found {
            None => Err(AuthError::Missing),
            Some(f) => self.verifier.verify(&f.token),
        };
        let v = match verified {
            Ok(v) => v,
            Err(e) => {
                self.count(head.metrics, &head.route.label, e.result());
                tracing::debug!(
                    route = %head.route.label,
                    verifier = %self.verifier.name,
                    reason = %e,
                    "authentication failed"
                );
                return Verdict::Answer(ProxyError::Auth(e));
            }
        };
        self.count(head.metrics, &head.route.label, "ok");
        let mut headers = HeaderMap::with_capacity(self.claims_to_headers.len());
        for (name, claim) in &self.claims_to_headers {
            // A claim that cannot be a header value (control characters) is
            // left out rather than failing a valid token. UTF-8 goes as it
            // is (obs-text): http 1.6's string conversions take ASCII only,
            // and would drop `José`.
            if let Some(value) = v
                .header_text(claim)
                .and_then(|t| HeaderValue::from_bytes(t.as_bytes()).ok())
            {
                headers.insert(name.clone(), value);
            }
        }
        let mut remove = Vec::new();
        if head.upgrade && auth::offers_bearer(req.headers()) {
            // A token rode in the subprotocol list (whether or not it is the
            // one verified: one in `Authorization` is looked at first): the
            // application must not see it offered (nor ever echo it back as
            // the chosen protocol).
            match auth::protocols_without_bearer(req.headers()) {
                Some(rest) => {
                    headers.insert(header::SEC_WEBSOCKET_PROTOCOL, rest);
                }
                None => remove.push(header::SEC_WEBSOCKET_PROTOCOL),
            }
        }
        Verdict::Identify(Identity {
            user: v.str_claim("sub").map(|s| User(Arc::from(s))),
            // Checked: a signed `exp` near the end of time must not overflow.
            expires: v
                .expires()
                .map(|t| t.checked_add(self.verifier.leeway).unwrap_or(t)),
            headers,
            remove,
        })
    }
}
