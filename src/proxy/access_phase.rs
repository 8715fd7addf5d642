//! The access phase: an ordered list of per-route filters that every request
//! and WebSocket handshake passes after routing and before its handler
//! (pingora's request phases, as one list). A filter sees the request head,
//! the route and the connection, and either lets it pass, answers it (a
//! [`ProxyError`], turned into a response in `proxy::error` like every other
//! failure), or passes it with headers to add upstream.
//!
//! Order of the phase (docs/architecture): real client address → rate limits
//! → authentication → authorization; the per-route checks that exist today
//! (WebSocket allowed, Origin allowlist) are authorization filters. A route
//! with no filter gets an empty list and the phase costs a length check.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{header, HeaderMap, HeaderName, Request};
use hyper::body::Incoming;

use super::auth_request::AuthRequest;
use super::error::ProxyError;
use crate::config::RouteConfig;
use crate::ctx::ConnCtx;
use crate::metrics::Metrics;
use crate::router::Route;
use crate::upstream::Pool;

/// What a filter is shown.
pub struct Head<'a> {
    pub req: &'a Request<Incoming>,
    pub route: &'a Route,
    pub conn: &'a ConnCtx,
    /// Whether the request is a (validated) WebSocket handshake.
    pub upgrade: bool,
    /// Where filters count their decisions.
    pub metrics: &'a Metrics,
}

/// A filter's decision.
pub enum Verdict {
    /// Go on to the next filter.
    Pass,
    /// Go on, and send these headers upstream (replacing any of the same
    /// name the client sent).
    Annotate(HeaderMap),
    /// Stop here and answer the client.
    Answer(ProxyError),
    /// Decided asynchronously (a callout, a shared counter): the phase waits.
    Later(Pin<Box<dyn Future<Output = Verdict> + Send>>),
}

/// One per-request check.
pub trait Filter: Send + Sync + fmt::Debug {
    /// The filter's name in logs.
    fn name(&self) -> &'static str;
    fn check(&self, head: &Head<'_>) -> Verdict;
    /// Headers this filter alone may set upstream: the client's own copies
    /// are removed on the route whether or not the filter sets them on a
    /// given request (else a client could send what the filter left unset).
    fn owned_headers(&self) -> &[HeaderName] {
        &[]
    }
}

/// What the phase adds to a request that passed it.
#[derive(Default, Debug)]
pub struct Notes {
    /// Headers to set on the upstream request.
    pub upstream_headers: HeaderMap,
    /// Headers of the client's to remove first ([`Filter::owned_headers`]).
    pub strip: Option<Arc<[HeaderName]>>,
}

impl Notes {
    /// Removes the filters' owned headers from an upstream request's
    /// headers, then sets the annotated ones.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in self.strip.iter().flat_map(|s| s.iter()) {
            headers.remove(name);
        }
        for (name, value) in &self.upstream_headers {
            headers.insert(name, value.clone());
        }
    }
}

/// The filters of one route, in order.
#[derive(Debug, Default)]
pub struct Phase {
    filters: Vec<Box<dyn Filter>>,
    /// Every filter's [`Filter::owned_headers`]; `None` when there are none.
    strip: Option<Arc<[HeaderName]>>,
}

impl Phase {
    /// The filters a route's config asks for; `pools` are the table's
    /// upstream pools (auth callouts go to one).
    pub fn for_route(cfg: &RouteConfig, pools: &HashMap<String, Arc<Pool>>) -> Self {
        let mut filters: Vec<Box<dyn Filter>> = Vec::new();
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
                None => filters.push(Box::new(Misconfigured(a.upstream.clone()))),
            }
        }
        let owned: Vec<HeaderName> = filters
            .iter()
            .flat_map(|f| f.owned_headers().iter().cloned())
            .collect();
        Self {
            filters,
            strip: (!owned.is_empty()).then(|| owned.into()),
        }
    }

    /// Runs every filter in order; the first answer wins.
    pub async fn run(&self, head: &Head<'_>) -> Result<Notes, ProxyError> {
        let mut notes = Notes {
            upstream_headers: HeaderMap::new(),
            strip: self.strip.clone(),
        };
        for f in &self.filters {
            let mut verdict = f.check(head);
            loop {
                match verdict {
                    Verdict::Pass => break,
                    Verdict::Annotate(h) => {
                        for (name, value) in h {
                            if let Some(name) = name {
                                notes.upstream_headers.insert(name, value);
                            }
                        }
                        break;
                    }
                    Verdict::Answer(e) => {
                        tracing::debug!(filter = f.name(), error = %e, "access phase answered");
                        return Err(e);
                    }
                    Verdict::Later(fut) => verdict = fut.await,
                }
            }
        }
        Ok(notes)
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
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
        let origin = head
            .req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .unwrap_or("");
        let trimmed = origin.trim_end_matches('/');
        if self.allowed.iter().any(|a| a.eq_ignore_ascii_case(trimmed)) {
            Verdict::Pass
        } else {
            Verdict::Answer(ProxyError::OriginNotAllowed(origin.to_string()))
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
        Verdict::Answer(ProxyError::Internal(format!(
            "auth pool {} missing",
            self.0
        )))
    }
}
