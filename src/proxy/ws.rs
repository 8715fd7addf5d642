//! WebSocket upgrades: detection, strict validation of the opening handshake
//! (RFC 6455 over HTTP/1.1, RFC 8441 extended CONNECT over HTTP/2), the
//! session's hold (slot and access line) for apps, and the [`Tunnel`] to an
//! upstream server after a verified upstream handshake. Route checks (Origin,
//! `websocket = false`) are access-phase filters.

use std::net::IpAddr;
use std::sync::Arc;

use crate::body::RequestBody;
use base64::Engine;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version,
};
use sha1::{Digest, Sha1};

use super::access_phase::Notes;
use super::error::{HandshakeError, ProxyError};
use super::forwarded::Forwarding;
use super::headers::{
    client_cert_fields, end_to_end, forwarded_view, has_token, is_client_cert, rewrite_path,
};
use super::inspect::{splice_inspected, InspectConfig, InspectMetrics};
use super::splice::{splice, SpliceEnd};
use super::ws_upstream::{self, unoffered, Answer, Relayed, RequestHead, Rewind};
use crate::access::{Access, SessionHold, SessionLog};
use crate::body::Body;
use crate::config::{RouteConfig, UpstreamConfig};
use crate::ctx::ConnCtx;
use crate::limit::gcra::Gcra;
use crate::limits::ConnSlot;
use crate::metrics::Metrics;
use crate::router::Route;
use crate::shutdown::Shutdown;
use crate::upstream::dial::{is_local_shortage, DialError, Purpose, UpStream};
use crate::upstream::{Backend, Pool, Tried};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A validated opening handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The client's key (HTTP/1.1 only; RFC 8441 has none).
    pub key: Option<HeaderValue>,
    /// True for RFC 8441 extended CONNECT over HTTP/2.
    pub h2: bool,
    /// Offered subprotocols, in the client's order.
    pub protocols: Vec<String>,
    /// `Connection` names fields besides `Upgrade` (never over HTTP/2).
    pub names_more: bool,
}

/// Is this request trying to open a WebSocket (so it must be validated as one)?
pub fn is_upgrade_attempt<B>(req: &Request<B>) -> bool {
    is_extended_connect(req) || has_token(req.headers(), header::UPGRADE, "websocket")
}

fn is_extended_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_some()
}

/// Validates the handshake as docs/security.md and RFC 6455 §4.2.1 list it. Pure: also the fuzz target.
pub fn validate<B>(req: &Request<B>) -> Result<Handshake, HandshakeError> {
    let h = req.headers();
    let h2 = if let Some(p) = req.extensions().get::<hyper::ext::Protocol>() {
        if !p.as_str().eq_ignore_ascii_case("websocket") {
            return Err(HandshakeError::UnsupportedProtocol(p.as_str().to_string()));
        }
        if req.method() != Method::CONNECT {
            return Err(HandshakeError::Method(req.method().to_string()));
        }
        true
    } else {
        if req.version() < Version::HTTP_11 {
            return Err(HandshakeError::HttpVersion);
        }
        if req.method() != Method::GET {
            return Err(HandshakeError::Method(req.method().to_string()));
        }
        false
    };
    if super::request_host(req).is_none() {
        return Err(HandshakeError::MissingHost);
    }
    let mut names_more = false;
    let key = if h2 {
        None
    } else {
        names_more =
            super::headers::connection_upgrade(h).ok_or(HandshakeError::ConnectionNotUpgrade)?;
        // Over HTTP/2 the stream's data is the session; over HTTP/1.1 a body
        // would reach the upstream or the app as frames the client smuggled
        // in ahead of the 101.
        if h.contains_key(header::TRANSFER_ENCODING)
            || h.get_all(header::CONTENT_LENGTH)
                .iter()
                .any(|v| v.as_bytes().trim_ascii() != b"0")
        {
            return Err(HandshakeError::Body);
        }
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(HandshakeError::MissingKey)?;
        if !valid_key(key.as_bytes()) {
            return Err(HandshakeError::BadKey);
        }
        Some(key.clone())
    };
    let versions: Vec<&HeaderValue> = h.get_all(header::SEC_WEBSOCKET_VERSION).iter().collect();
    if versions.len() != 1 || versions[0].as_bytes().trim_ascii() != b"13" {
        return Err(HandshakeError::BadVersion);
    }
    Ok(Handshake {
        key,
        h2,
        protocols: offered_protocols(h),
        names_more,
    })
}

fn valid_key(k: &[u8]) -> bool {
    // 24 characters decode to at most 18 bytes: on the stack, not a Vec.
    let mut out = [0u8; 18];
    k.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode_slice(k, &mut out)
            .is_ok_and(|n| n == 16)
}

fn offered_protocols(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// `Sec-WebSocket-Accept` for a key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// What a WebSocket session started by the proxy holds while it lives: the
/// connection's slot, and its bookkeeping (active gauge, access line).
pub struct Session<'a> {
    pub access: &'a Arc<Access>,
    pub shutdown: &'a Shutdown,
    pub route: &'a Route,
    pub conn: &'a ConnCtx,
    /// The request's client ([`crate::ctx::client_ip`]), for the access line.
    pub client: IpAddr,
    pub slot: Arc<ConnSlot>,
}

impl Session<'_> {
    /// The session's hold; `kind` is `app` or `spliced` in the access line.
    pub fn hold(self, kind: &'static str) -> SessionHold {
        let log = SessionLog::new(self.access, self.route, kind, self.client);
        SessionHold::new(self.slot, log)
    }
}

/// A handshake to splice to an upstream WebSocket server.
pub struct Tunnel<'a> {
    pub session: Session<'a>,
    pub metrics: &'a Metrics,
    /// What the access phase adds to the upstream request.
    pub notes: &'a Notes,
    /// The server that accepted the upgrade, for the request's access line.
    pub served_by: &'a mut Option<Arc<str>>,
}

impl Tunnel<'_> {
    /// Splices the client to a server of `pool`. The server is chosen like
    /// an HTTP request's (sticky affinity first, then `balance`); a server
    /// that refuses the connection is retried on another (an upgrade is a
    /// bodiless GET), up to `retries`. A sticky cookie rides on the client's
    /// 101.
    pub async fn open(
        self,
        pool: Arc<Pool>,
        mut req: Request<RequestBody>,
        hs: Handshake,
    ) -> Result<Response<Body>, ProxyError> {
        let Tunnel {
            session,
            metrics,
            notes,
            served_by,
        } = self;
        let route = &*session.route.cfg;
        let ctx = session.conn;
        let affinity = pool.affinity(session.client, req.headers(), req.uri().query());
        let mut tried = Tried::new();
        let mut last_err: Option<ProxyError> = None;
        let (choice, relayed, upstream, accept) = loop {
            // Counted from the start (in the choice) so least_conn and
            // max_conns see handshakes in progress.
            let choice = match pool.select(&affinity, &tried) {
                Ok(choice) => choice,
                Err(why) => {
                    return Err(last_err.unwrap_or_else(|| ProxyError::unavailable(why, &pool)))
                }
            };
            tried.push(choice.backend.id);
            // The access line names the server tried last, failed or not
            // (nginx's $upstream_addr).
            *served_by = Some(choice.backend.addr.clone());
            let stream = match connect(choice.backend).await {
                Ok(s) => s,
                Err(e) => {
                    if !matches!(e, ProxyError::OutOfSockets(..)) {
                        pool.report_failure(choice.backend);
                    }
                    // Nothing reached the server: safe to try another.
                    if tried.len() > pool.cfg.retries as usize {
                        return Err(e);
                    }
                    last_err = Some(e);
                    continue;
                }
            };
            let up = Upstream {
                cfg: &pool.cfg,
                backend: choice.backend,
                route,
                ctx,
                notes,
            };
            // Boxed: the handshake's state is only needed while it runs.
            match Box::pin(up.handshake(stream, &req, &hs)).await {
                Ok(Attempt::Upgraded(relayed, stream, accept)) => {
                    if let Some(why) = unoffered(&relayed, &hs.protocols, req.headers()) {
                        return Err(chose_unoffered(&pool, choice.backend, why));
                    }
                    pool.report_success(choice.backend);
                    break (choice, relayed, stream, accept);
                }
                // An answer, not a failure, even when it cannot be relayed:
                // the client hears it, as from any server it reached.
                Ok(Attempt::Refused(answer)) => {
                    if answer.is_ok() {
                        pool.report_success(choice.backend);
                    }
                    return answer;
                }
                Err(e) => {
                    // The server saw the handshake: it answered, or failed, itself.
                    pool.report_failure(choice.backend);
                    return Err(e);
                }
            }
        };
        let client_upgrade = crate::upgraded::on(&mut req);
        let mut resp = client_response(&hs, accept, relayed)?;
        if let Some(cookie) = pool.sticky_cookie(&choice, ctx.tls) {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        let idle = pool.cfg.ws_idle_timeout;
        // Boxed: 160 bytes the byte-copy sessions (the default) would
        // otherwise carry, and copy, in every spawned task.
        let inspect = pool.cfg.ws_inspect.then(|| {
            let rate = pool.cfg.ws_message_rate;
            let cfg = InspectConfig {
                max_message_size: pool.cfg.ws_max_message_size,
                ping_interval: pool.cfg.ws_ping_interval,
                idle_timeout: idle,
                message_rate: rate.map(|r| Gcra::new(r.rate.emission(), r.burst)),
                expires: notes.expires,
                pace: session.shutdown.pace.clone(),
            };
            let mut m = InspectMetrics::for_route(metrics, &session.route.label);
            if rate.is_some() {
                m.limited = Some(metrics.limited(&format!("upstream.{}", pool.name()), "message"));
            }
            Box::new((cfg, m))
        });
        let shutdown = session.shutdown.clone();
        // A drain closes inspected sessions paced, with 1012; a byte splice
        // cannot insert a close frame, so it is only cut at the hard stop.
        let stop = match inspect {
            Some(_) => shutdown.session_stop(),
            None => shutdown.hard.clone(),
        };
        let addr = choice.backend.addr.clone();
        let inflight = choice.inflight;
        // Its slot and access line live as long as the task (captured, not moved).
        let mut hold = session.hold("spliced");
        hold.log.upstream = Some(addr.clone());
        // The task's future is copied as it is spawned: what it holds is kept
        // small (the hold used in place, not moved into locals; the splice's
        // state boxed).
        shutdown.spawn_session(async move {
            // Names the whole hold, so the task captures all of it (the slot
            // too, which nothing else here mentions), in place.
            let hold = &mut hold;
            // The session counts as load on its server for as long as it lives.
            let _inflight = inflight;
            let c = match client_upgrade.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "client upgrade did not complete");
                    return;
                }
            };
            let stats = match inspect {
                Some(i) => {
                    let (cfg, metrics) = *i;
                    Box::pin(splice_inspected(c, upstream, cfg, metrics, stop)).await
                }
                // Boxed too: the task is copied several times on its way into
                // the runtime (and once more when it ends), the box once.
                None => Box::pin(splice(c, upstream, idle, stop)).await,
            };
            // Inspected sessions count their messages and close codes themselves.
            hold.log
                .record_splice(stats.bytes_in, stats.bytes_out, stats.messages);
            hold.log.close_seen(stats.close_code);
            hold.log
                .metrics()
                .splice_zero_copy_bytes
                .inc_by(stats.zero_copy);
            if stats.end == SpliceEnd::Drain {
                hold.log.drained(if stats.messages.is_some() {
                    "inspect"
                } else {
                    "splice"
                });
            }
            let (msgs_in, msgs_out) = stats.messages.unwrap_or_default();
            tracing::debug!(
                upstream = %addr,
                end = stats.end.as_str(),
                bytes_in = stats.bytes_in,
                bytes_out = stats.bytes_out,
                msgs_in,
                msgs_out,
                zero_copy = stats.zero_copy,
                "spliced session ended"
            );
        });
        Ok(resp)
    }
}

/// Opens the connection to `backend` (TCP, then TLS for a `wss` upstream)
/// within the pool's `connect_timeout`.
async fn connect(backend: &Backend) -> Result<UpStream, ProxyError> {
    let addr = || backend.addr.to_string();
    backend
        .conns
        .dialer()
        .dial(Purpose::WebSocket)
        .await
        .map_err(|e| match e {
            DialError::Timeout => ProxyError::UpstreamTimeout(addr()),
            DialError::Connect(e) if is_local_shortage(&e) => {
                ProxyError::OutOfSockets(addr(), e.to_string())
            }
            DialError::Connect(_) => ProxyError::UpstreamConnect(addr()),
            e => ProxyError::UpstreamTls(addr(), e.to_string()),
        })
}

/// How one tunnel attempt's handshake ended, short of a failure.
enum Attempt {
    /// The fields the 101 relays, the upgraded stream, and the accept value
    /// of the key sent.
    Upgraded(Relayed, Rewind, String),
    /// The server answered with another status: the client's answer, or
    /// why it could not be relayed.
    Refused(Result<Response<Body>, ProxyError>),
}

/// The upstream side of one tunnel attempt.
struct Upstream<'a> {
    cfg: &'a UpstreamConfig,
    backend: &'a Backend,
    route: &'a RouteConfig,
    ctx: &'a ConnCtx,
    notes: &'a Notes,
}

impl Upstream<'_> {
    /// Performs the HTTP/1.1 upgrade handshake on a fresh connection to the
    /// backend within `response_timeout`. The accept value of the key sent
    /// is the client's too (its own key, when it sent one).
    async fn handshake(
        &self,
        stream: UpStream,
        req: &Request<RequestBody>,
        hs: &Handshake,
    ) -> Result<Attempt, ProxyError> {
        // RFC 8441 clients have no key: make one for the HTTP/1.1 upstream.
        let key = match &hs.key {
            Some(k) => k.clone(),
            None => HeaderValue::from_str(
                &base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>()),
            )
            .map_err(|e| ProxyError::Internal(e.to_string()))?,
        };
        let head = self.request(req, &key, hs.names_more);
        let expected = accept_key(key.as_bytes());
        let addr = || self.backend.addr.to_string();
        let deadline = tokio::time::Instant::now() + self.cfg.response_timeout;
        match tokio::time::timeout_at(deadline, ws_upstream::handshake(stream, &head, &expected))
            .await
        {
            Err(_) => Err(ProxyError::UpstreamTimeout(addr())),
            Ok(Err(e)) if e.is_transport() => {
                Err(ProxyError::UpstreamFailed(addr(), e.to_string()))
            }
            Ok(Err(e)) => Err(ProxyError::UpstreamHandshake(addr(), e.to_string())),
            Ok(Ok(Answer::Upgraded(relayed, stream))) => {
                Ok(Attempt::Upgraded(relayed, stream, expected))
            }
            Ok(Ok(Answer::Refused(stream, read))) => {
                let answer = super::ws_refused::relay(stream, &read, deadline, &addr()).await;
                Ok(Attempt::Refused(answer.and_then(|resp| {
                    // To an RFC 8441 client a 2xx says the tunnel is open
                    // (hyper would send the head without its body, then
                    // reset the stream): it cannot be relayed.
                    if hs.h2 && resp.status().is_success() {
                        let why = format!("answered {} instead of 101", resp.status());
                        return Err(ProxyError::UpstreamHandshake(addr(), why));
                    }
                    Ok(resp)
                })))
            }
        }
    }

    /// The upstream's copy of the client's request, written as bytes: its
    /// target, the end-to-end fields kept in order (Origin, Cookie,
    /// Authorization, subprotocols, extensions...), `Host` and
    /// `X-Forwarded-*` ([`Forwarding`]), the client certificate's two and the
    /// access phase's fields in place of the client's copies of those, then
    /// the upgrade set. What the HTTP proxy sets on its request's header map
    /// ([`super::http::forward`]), written without building one.
    fn request(&self, req: &Request<RequestBody>, key: &HeaderValue, names_more: bool) -> Vec<u8> {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut head =
            RequestHead::new(&rewrite_path(pq, &self.route.path, self.route.strip_prefix));
        let host = super::request_host(req);
        // Decided on the fields that go on, as the HTTP proxy decides them.
        let view = forwarded_view(req.headers(), names_more);
        let fwd = Forwarding::new(
            &view,
            self.ctx.forwarded_for(),
            self.notes.trusted_peer,
            self.ctx.tls,
            host.as_ref().map(super::Host::as_str),
        );
        let notes = self.notes;
        // As the map form: the access phase's removals apply to the client's
        // fields and to what the gateway adds alike, and the upgrade set
        // comes last, over everything.
        let mut added = |name: &HeaderName, value: &HeaderValue| {
            if !notes.drops(name) && !is_upgrade_field(name) {
                head.field(name, value);
            }
        };
        if let Some(v) = fwd.host() {
            added(&header::HOST, v);
        }
        let own = [header::SEC_WEBSOCKET_KEY, header::SEC_WEBSOCKET_VERSION];
        for (name, value) in end_to_end(req.headers(), &own) {
            if !(fwd.replaces(name) || is_client_cert(name)) {
                added(name, value);
            }
        }
        fwd.for_each(&mut added);
        client_cert_fields(self.ctx.client_cert.as_deref(), &mut added);
        for (name, value) in &notes.upstream_headers {
            if !is_upgrade_field(name) {
                head.field(name, value);
            }
        }
        head.field(&header::CONNECTION, &HeaderValue::from_static("Upgrade"));
        head.field(&header::UPGRADE, &HeaderValue::from_static("websocket"));
        head.field(
            &header::SEC_WEBSOCKET_VERSION,
            &HeaderValue::from_static("13"),
        );
        head.field(&header::SEC_WEBSOCKET_KEY, key);
        head.finish()
    }
}

/// An upstream 101 that chose what the client did not offer: a failed
/// handshake ([`unoffered`]).
#[cold]
#[inline(never)]
fn chose_unoffered(pool: &Pool, backend: &Backend, why: &str) -> ProxyError {
    pool.report_failure(backend);
    ProxyError::UpstreamHandshake(backend.addr.to_string(), why.into())
}

/// The fields the tunnel's upgrade set owns.
fn is_upgrade_field(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_KEY,
    ]
    .contains(name)
}

/// The client's 101 (or 200 for RFC 8441), carrying the upstream's choices.
/// `accept` is [`accept_key`] of the client's key.
fn client_response(
    hs: &Handshake,
    accept: String,
    upstream: Relayed,
) -> Result<Response<Body>, ProxyError> {
    let mut resp = Response::new(crate::body::empty());
    if hs.key.is_some() {
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        // The string's own buffer becomes the value's: no copy.
        let accept = HeaderValue::from_maybe_shared(bytes::Bytes::from(accept.into_bytes()))
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    let h = resp.headers_mut();
    for (name, value) in upstream {
        h.append(name, value);
    }
    Ok(resp)
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
