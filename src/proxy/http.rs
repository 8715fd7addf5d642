//! The HTTP reverse proxy: forwards a request to a server of the route's pool over
//! pooled keep-alive connections, streaming bodies both ways, with header hygiene,
//! `X-Forwarded-*`, `strip_prefix`, timeouts, sticky sessions (the pool picks the
//! server; this sets the sealed cookie on the response), passive health reports
//! and safe retries.
//!
//! A request whose connection could not be made goes to another server,
//! whatever its method or body (nothing of it was sent; its body is unread).
//! Once sent, a failed attempt is retried only when all of these hold: the
//! method is idempotent, the request has no body (a streamed body cannot be
//! replayed), no byte of a response had arrived
//! ([`SendError::nothing_received`]), the response timeout did not fire (the
//! server may still be working on it). Either way a server not yet tried
//! must be usable, and fewer than `retries` retries made.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::body::RequestBody;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Either;

use super::access_phase::Notes;
use super::client_body::{counted, ClientFault};
use super::error::ProxyError;
use super::forwarded::set_forwarding;
use super::headers::{has_token, rewrite_path, set_client_cert, strip_hop_by_hop};
use super::upload;
use crate::access::BytesIn;
use crate::body::{Body, BoxError};
use crate::config::{RouteConfig, UpstreamProtocol};
use crate::ctx::ConnCtx;
use crate::metrics::{Metrics, UpstreamServerStatus};
use crate::upstream::conns::{ConnPool, Release, SendError};
use crate::upstream::{Backend, InflightGuard, Pool, Tried};

/// What forwarding a request needs besides the pool and the request.
pub struct Forward<'a> {
    pub metrics: &'a Metrics,
    pub route: &'a RouteConfig,
    pub conn: &'a ConnCtx,
    /// The host the client asked for (`X-Forwarded-Host`).
    pub host: Option<&'a str>,
    /// What the access phase adds to the upstream request.
    pub notes: &'a Notes,
    /// Set to the server that answered, for the access line.
    pub served_by: &'a mut Option<std::sync::Arc<str>>,
}

/// Forwards `req` to a server of `pool`.
pub async fn forward(
    pool: &Pool,
    fwd: Forward<'_>,
    req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Forward {
        metrics,
        route,
        conn: ctx,
        host,
        notes,
        served_by,
    } = fwd;
    let (mut parts, body) = req.into_parts();
    if !body.is_end_stream() {
        // A body is framed again on its way: its transfer codings are
        // checked first, off the bodiless requests' path (S4's).
        super::head_checks::only_chunked(&parts.headers)?;
    }
    // Read before the headers are rewritten: the sticky key is the client's.
    let client = crate::ctx::client_ip_in(&parts.extensions, ctx);
    let affinity = pool.affinity(client, &parts.headers, parts.uri.query());
    // Reused as it came (no copy) unless the route strips its prefix.
    let path = match parts.uri.path_and_query() {
        Some(pq) if !route.strip_prefix => pq.clone(),
        pq => {
            let pq = pq.map(|p| p.as_str()).unwrap_or("/");
            PathAndQuery::try_from(rewrite_path(pq, &route.path, route.strip_prefix))
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?
        }
    };
    // gRPC clients say `TE: trailers`; an HTTP/2 upstream may need to see it
    // (the one TE value HTTP/2 allows), though TE is hop-by-hop.
    let te_trailers = pool.cfg.protocol != UpstreamProtocol::H1
        && has_token(&parts.headers, header::TE, "trailers");
    strip_hop_by_hop(&mut parts.headers);
    if te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    set_forwarding(
        &mut parts.headers,
        ctx.forwarded_for(),
        notes.trusted_peer,
        ctx.tls,
        host,
    );
    set_client_cert(&mut parts.headers, ctx.client_cert.as_deref());
    notes.apply(&mut parts.headers);
    // Only a request without a body can be sent again once a server had it:
    // a streamed body is gone once an attempt consumed it. Any request moves
    // on when no connection could be made (its body unread).
    let bodiless = body.is_end_stream();
    let replayable = crate::upstream::h1::is_idempotent(&parts.method) && bodiless;
    // After `tried` attempts, may another one be made?
    let retry_allowed = |tried: usize| tried <= pool.cfg.retries as usize;
    // A failure reading the client's body is the client's, not the upstream's:
    // remembered here so the attempt's error can be told apart.
    let client_fault = ClientFault::new(!bodiless);
    // A bodiless request (most) sends the empty body, a box of nothing,
    // rather than boxing the counting and fault-recording layers for it.
    let mut body = Some(if bodiless {
        crate::body::empty()
    } else {
        // hyper answers `Expect: 100-continue` itself (its 100 goes out as
        // the body is first read): the upstream is not asked again (nginx
        // drops it too; probe 13). Only a request with a body asks.
        parts.headers.remove(header::EXPECT);
        let counter = parts.extensions.get::<BytesIn>().cloned();
        // Trailers reach only HTTP/2 upstreams (HTTP/1.1 ones are sent none).
        let dropped = (pool.cfg.protocol != UpstreamProtocol::H1).then(|| notes.dropped());
        counted(body, counter, client_fault.clone(), dropped)
    });
    let mut tried = Tried::new();
    let mut last_err: Option<ProxyError> = None;
    loop {
        let choice = match pool.select(&affinity, &tried) {
            Ok(choice) => choice,
            // Every server is down (502 at once, no waiting) or every usable one
            // was tried: the last attempt's error says more than "no upstream".
            Err(why) => return Err(last_err.unwrap_or_else(|| ProxyError::unavailable(why, pool))),
        };
        // Borrowed: a clone would write the server's reference count, a line
        // that every worker's requests to it share.
        let backend = &choice.backend;
        tried.push(backend.id);
        // Origin-form: the connection is to the server already.
        let uri = Uri::from(path.clone());
        let this_body = body.take().unwrap_or_else(crate::body::empty);
        // Cloning the head (every header value) only pays when another attempt
        // can follow: within the retry budget and with a server left to try.
        let may_retry =
            replayable && retry_allowed(tried.len()) && tried.len() < pool.backends().len();
        let head = if may_retry {
            parts.clone()
        } else {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        };
        let mut up = Request::from_parts(head, this_body);
        *up.uri_mut() = uri;
        *up.version_mut() = Version::HTTP_11;
        let host_added = !up.headers().contains_key(header::HOST);
        if host_added {
            // HTTP/1.1 requires one; a client without a host gets the server's.
            if let Ok(h) = HeaderValue::from_str(&backend.addr) {
                up.headers_mut().insert(header::HOST, h);
            }
        }
        // The access line names the server tried last, failed or not
        // (nginx's $upstream_addr).
        *served_by = Some(backend.addr.clone());
        let limit = pool.cfg.response_timeout;
        let attempt = if replayable {
            tokio::time::timeout(limit, backend.conns.send(up))
                .await
                .ok()
        } else {
            // Boxed: in place, its state (the exchange's, and a timer) would
            // size every request's future, and each move of it (+8 k
            // instructions of copying per new WebSocket, callgrind S5).
            let conns = &backend.conns;
            match Box::pin(send_once(limit, client_fault.progress(), conns, up)).await {
                Some(Err((e, Some(back)))) => {
                    // No connection: the request is whole, for another server.
                    let (mut head, unread) = back.into_parts();
                    if host_added {
                        head.headers.remove(header::HOST);
                    }
                    parts = head;
                    body = Some(unread);
                    // The next attempt's response_timeout counts from now,
                    // not from this one's start.
                    client_fault.mark_progress();
                    Some(Err(e))
                }
                other => other.map(|r| r.map_err(|(e, _)| e)),
            }
        };
        let (err, resendable) = match attempt {
            Some(Ok(resp)) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                // Only validated WebSocket handshakes switch protocols (proxy::ws);
                // this request's Upgrade was stripped, so a 101 is the server's
                // mistake and must not reach the client as a broken tunnel.
                (
                    ProxyError::UnexpectedUpgrade(backend.addr.to_string()),
                    false,
                )
            }
            Some(Ok(resp)) => {
                pool.report_success(backend);
                count(metrics, pool, backend, resp.status().as_u16());
                let cookie = pool.sticky_cookie(&choice, ctx.tls);
                let mut resp = response(resp, choice.inflight);
                if let Some(cookie) = cookie {
                    // Appended: the upstream's own cookies stay.
                    resp.headers_mut().append(header::SET_COOKIE, cookie);
                }
                return Ok(resp);
            }
            Some(Err(_)) if client_fault.get().is_some() => {
                // Not the server's failure: no passive-health mark, no retry.
                return Err(client_fault.get().unwrap_or(ProxyError::ClientAborted));
            }
            Some(Err(e)) => {
                // `body` is set again only when the request was handed back.
                let resendable = e.nothing_received() && (replayable || body.is_some());
                let addr = backend.addr.to_string();
                let err = match e {
                    SendError::ConnectTimeout => ProxyError::UpstreamTimeout(addr),
                    e @ SendError::Connect(_) if e.is_local_shortage() => {
                        ProxyError::OutOfSockets(addr, e.to_string())
                    }
                    SendError::Connect(_) => ProxyError::UpstreamConnect(addr),
                    SendError::Tls(e) => ProxyError::UpstreamTls(addr, e.to_string()),
                    e => ProxyError::UpstreamFailed(addr, root_cause(&e)),
                };
                (err, resendable)
            }
            // The upstream took all the client sent and waits for more: the
            // client's stall (nginx's `client_body_timeout`, 408), not the server's.
            None if client_fault.stalled() => return Err(ProxyError::ClientBodyTimeout),
            // The server may be processing it: never resend after a response timeout.
            None => (ProxyError::UpstreamTimeout(backend.addr.to_string()), false),
        };
        if !matches!(err, ProxyError::OutOfSockets(..)) {
            pool.report_failure(backend);
        }
        count(metrics, pool, backend, err.status().as_u16());
        tracing::debug!(upstream = %pool.name(), server = %backend.addr, error = %err, resendable, "upstream attempt failed");
        if !resendable || !retry_allowed(tried.len()) {
            return Err(err);
        }
        last_err = Some(err);
    }
}

/// One attempt at a request that cannot be sent twice, within
/// `response_timeout`: for a request with a body counted from the body's
/// last frame the upstream took (`progress`; nginx starts its read timeout
/// once the request is sent). `None` when it ran out; the request comes back
/// with the error when no connection could be made.
async fn send_once(
    limit: Duration,
    progress: Option<&upload::Progress>,
    conns: &std::sync::Arc<ConnPool>,
    up: Request<Body>,
) -> Option<Result<Response<Release>, (SendError, Option<Request<Body>>)>> {
    let send = conns.send_returning(up);
    match progress {
        None => tokio::time::timeout(limit, send).await.ok(),
        Some(progress) => upload::within(limit, progress, send).await,
    }
}

fn count(metrics: &Metrics, pool: &Pool, backend: &Backend, status: u16) {
    backend.requests.inc(status, || {
        let l = UpstreamServerStatus {
            upstream: pool.name().to_string(),
            server: backend.addr.to_string(),
            status,
        };
        metrics.upstream_requests.get_or_create(&l).clone()
    });
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

fn response(resp: Response<Release>, guard: InflightGuard) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if parts.status == http::StatusCode::NO_CONTENT {
        // RFC 9110 §8.6: never on a 204. HTTP/1.1 writers drop it; over
        // HTTP/2 it made the response malformed (RFC 9113 §8.1.1) and
        // clients reset the stream.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let body = Guarded {
        inner: body,
        guard,
        timer: None,
    };
    Response::from_parts(parts, Either::Left(body))
}

/// A response body as the proxy's handler gets it: an upstream server's body
/// as it is (`Left`, every proxied request's: wrapped by the access line
/// without a box of its own), or any other answer's boxed body (`Right`).
pub type ProxyBody = Either<Guarded, Body>;

/// A body that keeps the backend's in-flight count until it is fully sent, so
/// `least_conn` sees long downloads as load.
pub struct Guarded {
    inner: Release,
    /// Also says how long a read of the body may wait: the pool's
    /// `response_timeout` (nginx's `proxy_read_timeout`), so a server that
    /// stops mid-body does not hold the request, its place and its
    /// connection for as long as the client waits.
    guard: InflightGuard,
    /// The current wait's deadline: made when a read waits, dropped when one
    /// completes. A body that is always ready (most) never makes one, and
    /// the body stays one pointer larger (it is moved several times a request).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A body read that waited longer than the pool's `response_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing of its body for {0:?} (response_timeout)")]
struct BodyStalled(Duration);

impl HttpBody for Guarded {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let idle = this.guard.body_idle();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match std::future::Future::poll(timer.as_mut(), cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                this.timer = None;
                ready.map_err(|e| -> BoxError { Box::new(e) })
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
