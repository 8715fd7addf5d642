//! Auth callouts (`auth_request`, docs/auth.md), with nginx `auth_request`
//! semantics, as an access-phase filter: before a request or WebSocket
//! handshake goes anywhere, a GET subrequest carrying the client's headers
//! plus `X-Original-Method`/`-URI`/`-Host`/`-For` goes to a server of the
//! route's auth pool at `auth_request_path`.
//!
//! - 2xx: allowed; the listed `auth_request_headers` of the answer go upstream
//!   (the client's own copies of those names never do).
//! - 401/403: that answer (status, `WWW-Authenticate`, small body) goes to the
//!   client.
//! - anything else, no server, a connect failure or the pool's
//!   `response_timeout`: 503.
//!
//! Subrequests ride the pool's keep-alive connections (`backend.conns`, as
//! the HTTP proxy does): a callout costs a request, not a connection.
//! Decisions (2xx and 401/403, never errors) are cached per cache key
//! ([`cache`]) for `auth_request_cache`; the cache belongs to the route's
//! table, so a reload starts it afresh.

pub mod cache;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use prometheus_client::metrics::counter::Counter;

use self::cache::Cache;
use super::access_phase::{Filter, Head, Verdict};
use super::error::{AuthDenial, ProxyError};
use super::forwarded::set_forwarding;
use super::headers::{set_client_cert, strip_hop_by_hop};
use crate::config::{AuthRequestConfig, CacheKeyPart};
use crate::ctx::{client_ip, ClientAddr};
use crate::metrics::{Metrics, RouteResult};
use crate::upstream::conns::SendError;
use crate::upstream::{Affinity, Pool, Tried, Unavailable};

/// The most of an auth service's answer body that is read (and relayed with
/// a 401/403). A longer body is not relayed, and its connection is closed
/// rather than drained.
const MAX_BODY: usize = 16 * 1024;

const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-original-host");
const X_ORIGINAL_FOR: HeaderName = HeaderName::from_static("x-original-for");

/// What a callout decided.
#[derive(Debug)]
enum Decision {
    /// 2xx: the headers to copy upstream.
    Allow(HeaderMap),
    /// 401/403: the answer for the client.
    Deny(AuthDenial),
}

impl Decision {
    fn verdict(&self) -> Verdict {
        match self {
            Decision::Allow(h) if h.is_empty() => Verdict::Pass,
            Decision::Allow(h) => Verdict::Annotate(h.clone()),
            Decision::Deny(d) => Verdict::Answer(ProxyError::AuthDenied(Box::new(d.clone()))),
        }
    }
}

/// Why a callout gave no decision (→ 503). Addresses stay in the debug log.
#[derive(Debug, thiserror::Error)]
enum CalloutError {
    #[error("no server of pool {0} is usable")]
    NoServer(String),
    #[error("every usable server of pool {0} is at its max_conns")]
    Full(String),
    #[error("{0}: connect failed or timed out")]
    Connect(Arc<str>),
    #[error("{0}: no answer within the response timeout")]
    Timeout(Arc<str>),
    #[error("{0}: {1}")]
    Failed(Arc<str>, String),
    #[error("{0} answered {1}")]
    Status(Arc<str>, u16),
}

/// `wsgate_auth_total{route,result}` series of one route, looked up once.
#[derive(Debug, Clone)]
struct Counters {
    ok: Counter,
    denied: Counter,
    error: Counter,
}

impl Counters {
    fn new(m: &Metrics, route: &str) -> Self {
        let c = |result: &str| {
            m.auth
                .get_or_create(&RouteResult {
                    route: route.to_string(),
                    result: result.to_string(),
                })
                .clone()
        };
        Self {
            ok: c("ok"),
            denied: c("callout_denied"),
            error: c("callout_error"),
        }
    }

    fn count(&self, d: &Decision) {
        match d {
            Decision::Allow(_) => self.ok.inc(),
            Decision::Deny(_) => self.denied.inc(),
        };
    }
}

/// The `auth_request` filter of one route.
#[derive(Debug)]
pub struct AuthRequest {
    pool: Arc<Pool>,
    path: PathAndQuery,
    copy: Arc<[HeaderName]>,
    cache: Option<Arc<Cache<Decision>>>,
    cache_key: Box<[CacheKeyPart]>,
    counters: OnceLock<Counters>,
}

impl AuthRequest {
    pub fn new(cfg: &AuthRequestConfig, pool: Arc<Pool>) -> Self {
        Self {
            pool,
            // Validation checked the path; "/" only if that ever changes.
            path: PathAndQuery::try_from(cfg.path.as_str())
                .unwrap_or_else(|_| PathAndQuery::from_static("/")),
            copy: cfg.headers.clone().into(),
            cache: (!cfg.cache_ttl.is_zero())
                .then(|| Arc::new(Cache::new(cfg.cache_ttl, cache::MAX_ENTRIES))),
            cache_key: cfg.cache_key.clone().into(),
            counters: OnceLock::new(),
        }
    }
}

impl Filter for AuthRequest {
    fn name(&self) -> &'static str {
        "auth_request"
    }

    fn owned_headers(&self) -> &[HeaderName] {
        &self.copy
    }

    fn check(&self, head: &Head<'_>) -> Verdict {
        let counters = self
            .counters
            .get_or_init(|| Counters::new(head.metrics, &head.route.label))
            .clone();
        // The key is made of what the service is sent, so it holds exactly
        // what the service can decide by.
        let headers = subrequest_headers(head);
        let key = self.cache.as_ref().and_then(|_| {
            cache::key_of(&self.cache_key, &headers, head.conn.client_cert.as_deref())
        });
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(d) = cache.get(key) {
                counters.count(&d);
                return d.verdict();
            }
        }
        let pool = self.pool.clone();
        let path = self.path.clone();
        let copy = self.copy.clone();
        let cache = self.cache.clone();
        Verdict::Later(Box::pin(async move {
            match callout(&pool, &path, &headers, &copy).await {
                Ok(d) => {
                    counters.count(&d);
                    let verdict = d.verdict();
                    if let (Some(cache), Some(key)) = (cache, key) {
                        cache.put(key, Arc::new(d));
                    }
                    verdict
                }
                Err(e) => {
                    counters.error.inc();
                    tracing::debug!(upstream = %pool.name(), error = %e, "auth callout failed");
                    Verdict::Answer(ProxyError::AuthUnavailable(e.to_string()))
                }
            }
        }))
    }
}

/// The subrequest's headers: the client's end-to-end headers (credentials
/// and all) without a body's framing, the verified client certificate, and
/// what the auth service needs to know about the original request. What a
/// client may not say about itself is not passed on, as to an upstream: the
/// identity headers are removed, and the client-address fields are the
/// gateway's (`proxy::forwarded`).
fn subrequest_headers(head: &Head<'_>) -> HeaderMap {
    let req = head.req;
    let mut h = req.headers().clone();
    strip_hop_by_hop(&mut h);
    super::headers::remove_present(&mut h, head.identity_headers);
    let host = super::request_host(req);
    // `handle` puts the resolved client there exactly when the connection's
    // client is a trusted proxy.
    let trusted = req.extensions().get::<ClientAddr>().is_some();
    set_forwarding(
        &mut h,
        head.conn.forwarded_for(),
        trusted,
        head.conn.tls,
        host.as_ref().map(|h| h.as_str()),
    );
    for name in [
        header::HOST,
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::EXPECT,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        h.remove(name);
    }
    set_client_cert(&mut h, head.conn.client_cert.as_deref());
    // Set by the gateway only: a client's own X-Original-* would lie to the
    // auth service about the request it is judging.
    for name in [
        &X_ORIGINAL_METHOD,
        &X_ORIGINAL_URI,
        &X_ORIGINAL_HOST,
        &X_ORIGINAL_FOR,
    ] {
        h.remove(name);
    }
    // A WebSocket handshake is a `GET` whichever protocol carried it: over
    // HTTP/2 it comes as `CONNECT` (RFC 8441), and the service must decide
    // one session the same way over both (the upstream is sent `GET` too).
    let method = if head.upgrade {
        "GET"
    } else {
        req.method().as_str()
    };
    if let Ok(m) = HeaderValue::from_str(method) {
        h.insert(X_ORIGINAL_METHOD, m);
    }
    let uri = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(u) = HeaderValue::from_str(uri) {
        h.insert(X_ORIGINAL_URI, u);
    }
    if let Some(host) = host.and_then(|host| HeaderValue::from_str(host.as_str()).ok()) {
        h.insert(X_ORIGINAL_HOST, host);
    }
    // The request's client (resolved through trusted proxies), as the
    // access phase's other steps and the access line see it.
    h.insert(
        X_ORIGINAL_FOR,
        crate::ctx::forwarded_for(client_ip(req, head.conn)),
    );
    h
}

/// Asks a server of `pool`; a server that could not be reached (nothing
/// sent) is passed over for another within the pool's `retries`, as the
/// HTTP proxy does.
async fn callout(
    pool: &Pool,
    path: &PathAndQuery,
    headers: &HeaderMap,
    copy: &[HeaderName],
) -> Result<Decision, CalloutError> {
    let mut tried = Tried::new();
    let mut last = None;
    loop {
        let choice = match (pool.select(&Affinity::None, &tried), last.take()) {
            (Ok(c), _) => c,
            // With no other server to try, the last one's failure is the
            // cause (its TLS refusal, its connect error), not the pool.
            (Err(_), Some(err)) => return Err(err),
            (Err(Unavailable::Down), None) => {
                return Err(CalloutError::NoServer(pool.name().to_string()))
            }
            (Err(Unavailable::Full), None) => {
                return Err(CalloutError::Full(pool.name().to_string()))
            }
        };
        let backend = choice.backend;
        tried.push(backend.id);
        let mut req = Request::new(crate::body::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = path.clone().into();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers.clone();
        if let Ok(h) = HeaderValue::from_str(&backend.addr) {
            req.headers_mut().insert(header::HOST, h);
        }
        let _inflight = choice.inflight;
        let exchange = async {
            let resp = backend.conns.send(req).await?;
            let (parts, body) = resp.into_parts();
            // Read to its end, the body gives the connection back for reuse.
            let body = Limited::new(body, MAX_BODY).collect().await.ok();
            Ok::<_, SendError>((parts, body.map(|b| b.to_bytes())))
        };
        let addr = || backend.addr.clone();
        let err = match tokio::time::timeout(pool.cfg.response_timeout, exchange).await {
            Ok(Ok((parts, body))) => {
                pool.report_success(backend);
                return decide(parts.status, &parts.headers, body, copy)
                    .ok_or_else(|| CalloutError::Status(addr(), parts.status.as_u16()));
            }
            Ok(Err(e)) if e.nothing_received() => {
                if !e.is_local_shortage() {
                    pool.report_failure(backend);
                }
                match e {
                    SendError::Connect(_) | SendError::ConnectTimeout => {
                        CalloutError::Connect(addr())
                    }
                    e => CalloutError::Failed(addr(), e.to_string()),
                }
            }
            Ok(Err(e)) => {
                pool.report_failure(backend);
                return Err(CalloutError::Failed(addr(), e.to_string()));
            }
            Err(_) => {
                pool.report_failure(backend);
                return Err(CalloutError::Timeout(addr()));
            }
        };
        if tried.len() > pool.cfg.retries as usize {
            return Err(err);
        }
        tracing::debug!(upstream = %pool.name(), error = %err, "auth callout: trying another server");
        last = Some(err);
    }
}

/// The decision an answer carries; `None` when it carries none (→ 503).
/// A copy of `v` in a buffer of its own. A callout's answer is read into its
/// connection's buffer, and its values and body are slices of it; a decision
/// kept in the cache (up to `cache::MAX_ENTRIES`, for `auth_request_cache`)
/// must not keep that whole buffer.
fn owned(v: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
    copy.set_sensitive(v.is_sensitive());
    copy
}

fn decide(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<Bytes>,
    copy: &[HeaderName],
) -> Option<Decision> {
    if status.is_success() {
        let mut out = HeaderMap::new();
        for name in copy {
            for v in headers.get_all(name) {
                out.append(name.clone(), owned(v));
            }
        }
        return Some(Decision::Allow(out));
    }
    if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
        return None;
    }
    let mut relayed = HeaderMap::new();
    for v in headers.get_all(header::WWW_AUTHENTICATE) {
        relayed.append(header::WWW_AUTHENTICATE, owned(v));
    }
    // A body too long to relay is left out whole rather than cut. Copied,
    // as the values are: a decision outlives the exchange in the cache.
    let body = body.map_or_else(Bytes::new, |b| Bytes::copy_from_slice(&b));
    if !body.is_empty() {
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            relayed.insert(header::CONTENT_TYPE, owned(ct));
        }
    }
    relayed.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(Decision::Deny(AuthDenial {
        status,
        headers: relayed,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached decision holds copies: the answer's values and body were
    /// slices of its connection's read buffer, which they must not keep.
    #[test]
    fn decisions_keep_copies_not_the_answers_buffer() {
        let conn_buf = Bytes::from(b"alice Bearer realm=x go away".repeat(100));
        let inside = |p: *const u8| {
            let start = conn_buf.as_ptr() as usize;
            (start..start + conn_buf.len()).contains(&(p as usize))
        };
        let slice = |r: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(conn_buf.slice(r)).expect("valid")
        };
        let copy = [HeaderName::from_static("x-user-id")];
        let mut h = HeaderMap::new();
        h.insert("x-user-id", slice(0..5));
        h.insert(header::WWW_AUTHENTICATE, slice(6..20));
        h.insert(header::CONTENT_TYPE, slice(21..23));
        assert!(
            inside(h["x-user-id"].as_bytes().as_ptr()),
            "the setup shares"
        );
        match decide(StatusCode::OK, &h, None, &copy) {
            Some(Decision::Allow(out)) => {
                assert_eq!(out["x-user-id"], "alice");
                assert!(!inside(out["x-user-id"].as_bytes().as_ptr()));
            }
            other => panic!("{other:?}"),
        }
        let body = Some(conn_buf.slice(21..28));
        match decide(StatusCode::UNAUTHORIZED, &h, body, &copy) {
            Some(Decision::Deny(d)) => {
                assert_eq!(d.body, "go away");
                assert!(!inside(d.body.as_ptr()));
                for (_, v) in &d.headers {
                    assert!(!inside(v.as_bytes().as_ptr()));
                }
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_map_to_decisions() {
        let copy = [HeaderName::from_static("x-user-id")];
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("alice"));
        h.insert("x-secret", HeaderValue::from_static("no"));
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        match decide(StatusCode::NO_CONTENT, &h, None, &copy) {
            Some(Decision::Allow(a)) => {
                assert_eq!(a.len(), 1);
                assert_eq!(a["x-user-id"], "alice");
            }
            other => panic!("{other:?}"),
        }
        match decide(
            StatusCode::UNAUTHORIZED,
            &h,
            Some(Bytes::from("go away")),
            &copy,
        ) {
            Some(Decision::Deny(d)) => {
                assert_eq!(d.status, 401);
                assert_eq!(d.headers[header::WWW_AUTHENTICATE], "Bearer");
                assert_eq!(d.headers[header::CONTENT_TYPE], "text/plain");
                assert!(!d.headers.contains_key("x-user-id"));
                assert_eq!(d.body, "go away");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(StatusCode::FORBIDDEN, &h, None, &copy),
            Some(Decision::Deny(d)) if d.status == 403 && d.body.is_empty()
        ));
        for s in [302, 404, 429, 500, 502] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(decide(s, &h, None, &copy).is_none(), "{s}");
        }
    }
}
