//! The access phase: an ordered list of per-route filters that every request
//! and WebSocket handshake passes after routing and before its handler
//! (pingora's request phases, as one list). A filter sees the request head,
//! the route and the connection, and either lets it pass, answers it (a
//! [`ProxyError`], turned into a response in `proxy::error` like every other
//! failure), or passes it with headers to add upstream.
//!
//! Order of the phase (docs/access-phase.md): real client address → rate limits
//! → authentication → authorization; the per-route checks that exist today
//! (WebSocket allowed, Origin allowlist) are authorization filters. A route
//! with no filter gets an empty list and the phase costs a length check.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::body::RequestBody;
use http::{HeaderMap, HeaderName, Request};

use super::error::ProxyError;
use crate::ctx::{ConnCtx, User};
use crate::metrics::Metrics;
use crate::router::Route;

/// What a filter is shown.
#[derive(Clone, Copy)]
pub struct Head<'a> {
    pub req: &'a Request<RequestBody>,
    pub route: &'a Route,
    pub conn: &'a ConnCtx,
    /// Whether the request is a (validated) WebSocket handshake.
    pub upgrade: bool,
    /// For filters that count what they decide.
    pub metrics: &'a Metrics,
    /// Every route's `auth_claims_to_headers` names: no client may send
    /// them anywhere (an auth callout removes them from its subrequest).
    pub identity_headers: &'a [HeaderName],
    /// The user an earlier filter (authentication) identified, if any: what
    /// a limit keyed by `user` counts.
    pub user: Option<&'a User>,
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
    /// Authenticated: go on as this user, with these changes upstream.
    Identify(Identity),
}

/// Who an authentication filter found, and what it changes upstream.
#[derive(Debug, Default)]
pub struct Identity {
    /// The token's subject, if it has one.
    pub user: Option<User>,
    /// When the credential stops being valid (token `exp` plus leeway): an
    /// inspected WebSocket session is closed then.
    pub expires: Option<SystemTime>,
    /// Headers to set upstream (verified claims).
    pub headers: HeaderMap,
    /// Headers to remove from the upstream request (a `Sec-WebSocket-Protocol`
    /// that only carried the token).
    pub remove: Vec<HeaderName>,
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
    /// The connection's client is a trusted proxy: its `X-Forwarded-For`
    /// chain is extended, not replaced (`forwarded::Forwarding`).
    pub trusted_peer: bool,
    /// Headers to remove from the upstream request.
    pub remove: Vec<HeaderName>,
    /// Identity headers no client may send on any route (every route's
    /// `auth_claims_to_headers` names): removed before the annotations are set.
    pub strip: Option<Arc<[HeaderName]>>,
    /// Headers the route's filters own ([`Filter::owned_headers`]): the
    /// client's copies are removed first.
    pub owned: Option<Arc<[HeaderName]>>,
    /// The authenticated user.
    pub user: Option<User>,
    /// Did a filter authenticate the request (with or without naming a user)?
    pub authenticated: bool,
    /// When the request's credential expires.
    pub expires: Option<SystemTime>,
}

impl Notes {
    /// Removes the client's copies of identity headers, of the filters' owned
    /// headers and what filters asked to remove, then sets the annotated
    /// headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let global = self.strip.iter().flat_map(|s| s.iter());
        let owned = self.owned.iter().flat_map(|s| s.iter());
        let annotated = self.upstream_headers.keys();
        for name in global.chain(owned).chain(&self.remove).chain(annotated) {
            headers.remove(name);
        }
        // Every value: an auth answer may repeat a field (`X-Groups: a`,
        // `X-Groups: b`).
        for (name, value) in &self.upstream_headers {
            headers.append(name, value.clone());
        }
    }

    /// Tells the request's handler who the client is: the user, or that
    /// the client authenticated with a credential naming none (a token
    /// without a string `sub`), so that an app never takes a user from the
    /// client's own say (the chat's `?user=`) on an authenticated route.
    pub fn identify(&self, ext: &mut http::Extensions) {
        match &self.user {
            Some(user) => {
                ext.insert(user.clone());
            }
            None if self.authenticated => {
                ext.insert(crate::ctx::NoUser);
            }
            None => {}
        }
    }

    /// Every name [`Notes::drops`] is true of: what a client's request
    /// trailers may not carry either.
    pub fn dropped(&self) -> Vec<HeaderName> {
        let listed = [&self.strip, &self.owned];
        listed
            .into_iter()
            .flatten()
            .flat_map(|l| l.iter().cloned())
            .chain(self.remove.iter().cloned())
            .chain(self.upstream_headers.keys().cloned())
            .collect()
    }

    /// Whether [`Notes::apply`] leaves the client's `name` fields out: the
    /// written form of a request head drops them and writes
    /// [`Notes::upstream_headers`] (one value per name) after its own.
    pub fn drops(&self, name: &HeaderName) -> bool {
        let listed = |l: &Option<Arc<[HeaderName]>>| l.as_deref().is_some_and(|l| l.contains(name));
        listed(&self.strip)
            || listed(&self.owned)
            || self.remove.contains(name)
            || self.upstream_headers.contains_key(name)
    }
}

/// Adds a filter's headers to those set upstream: each replaces what an
/// earlier filter set under its name, with all of its values (a
/// `HeaderMap` names only the first value of a field as it is taken apart).
fn annotate(into: &mut HeaderMap, from: HeaderMap) {
    let mut last = None;
    for (name, value) in from {
        match name {
            Some(name) => {
                into.insert(&name, value);
                last = Some(name);
            }
            None => {
                if let Some(name) = &last {
                    into.append(name, value);
                }
            }
        }
    }
}

/// The filters of one route, in order.
#[derive(Debug, Default)]
pub struct Phase {
    filters: Vec<Box<dyn Filter>>,
    /// Every filter's [`Filter::owned_headers`]; `None` when there are none.
    owned: Option<Arc<[HeaderName]>>,
}

impl Phase {
    /// A phase of these filters, in order (built by `proxy::phases`).
    pub fn new(filters: Vec<Box<dyn Filter>>) -> Self {
        let owned: Vec<HeaderName> = filters
            .iter()
            .flat_map(|f| f.owned_headers().iter().cloned())
            .collect();
        Self {
            filters,
            owned: (!owned.is_empty()).then(|| owned.into()),
        }
    }

    /// Runs every filter in order; the first answer wins.
    pub async fn run(&self, head: &Head<'_>) -> Result<Notes, ProxyError> {
        let mut notes = Notes {
            owned: self.owned.clone(),
            ..Notes::default()
        };
        for f in &self.filters {
            // The user identified so far; the borrow ends with `check` (a
            // verdict holds none), so `notes` is free to change below.
            let head = Head {
                user: notes.user.as_ref().or(head.user),
                ..*head
            };
            let mut verdict = f.check(&head);
            loop {
                match verdict {
                    Verdict::Pass => break,
                    Verdict::Annotate(h) => {
                        annotate(&mut notes.upstream_headers, h);
                        break;
                    }
                    Verdict::Answer(e) => {
                        tracing::debug!(filter = f.name(), error = %e, "access phase answered");
                        return Err(e);
                    }
                    Verdict::Later(fut) => verdict = fut.await,
                    Verdict::Identify(id) => {
                        annotate(&mut notes.upstream_headers, id.headers);
                        notes.remove.extend(id.remove);
                        notes.user = id.user.or(notes.user.take());
                        notes.authenticated = true;
                        notes.expires = match (notes.expires, id.expires) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        break;
                    }
                }
            }
        }
        Ok(notes)
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_written_form_drops_what_apply_replaces() {
        let name = HeaderName::from_static;
        let mut notes = Notes {
            strip: Some(vec![name("x-user-id")].into()),
            owned: Some(vec![name("x-owned")].into()),
            remove: vec![http::header::SEC_WEBSOCKET_PROTOCOL],
            ..Notes::default()
        };
        notes
            .upstream_headers
            .insert(name("x-user-id"), HeaderValue::from_static("alice"));
        notes
            .upstream_headers
            .insert(name("x-claim"), HeaderValue::from_static("c"));
        let mut client = HeaderMap::new();
        for n in [
            "x-user-id",
            "x-owned",
            "sec-websocket-protocol",
            "x-claim",
            "x-keep",
        ] {
            client.append(n, HeaderValue::from_static("client"));
        }
        let mut written: Vec<(HeaderName, HeaderValue)> = client
            .iter()
            .filter(|(n, _)| !notes.drops(n))
            .chain(&notes.upstream_headers)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let mut applied = client.clone();
        notes.apply(&mut applied);
        let mut applied: Vec<(HeaderName, HeaderValue)> =
            applied.into_iter().map(|(n, v)| (n.unwrap(), v)).collect();
        let key = |f: &(HeaderName, HeaderValue)| (f.0.to_string(), f.1.as_bytes().to_vec());
        written.sort_by_key(key);
        applied.sort_by_key(key);
        assert_eq!(written, applied);
        assert_eq!(written.len(), 3, "{written:?}");
    }
}
