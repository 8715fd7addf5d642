//! One client connection: plain HTTP/1.1 requests on the fast path (`h1`)
//! until one needs more, then hyper-util's auto builder for the rest (HTTP/1.1
//! and HTTP/2 on the same port, upgrades on, RFC 8441 extended CONNECT
//! enabled). When the gateway drains, the connection gets `graceful_shutdown`
//! so requests in flight finish. Upgraded connections leave the fast path or
//! hyper here ([`crate::upgraded`]) and are tracked as sessions by
//! `proxy::ws`. Handlers get each request body as a [`RequestBody`], which
//! drains an HTTP/2 body they leave unread.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acks::AckNow;
use super::h1;
use super::smuggle::Guarded;
use super::stall::{Stalls, Watched};
use super::{Handler, ServerCtx};
use crate::body::{Body, RequestBody};
use crate::config::ServerConfig;
use crate::ctx::ConnCtx;
use crate::limits::{ConnSlot, Refusal};
use crate::rewind::Rewind;
use crate::send_timeout::SendTimed;
use crate::upgraded::SendLimit;

/// Streams one HTTP/2 connection may have open at once (nginx's default):
/// each may hold an upstream connection and a response's buffers, so this
/// is how far one connection multiplies what `max_connections` bounds.
const H2_MAX_STREAMS: u32 = 128;

/// Bytes of response data one HTTP/2 stream may have queued beyond what the
/// client has read (h2's default is 400 KiB): a client that opens its streams'
/// flow-control windows and never reads held ~600 KB a stream, 80 MB a
/// connection. With this, what a stalled stream holds is about this plus the
/// one body chunk being sent (Envoy bounds a connection's buffers at 1 MiB).
const H2_SEND_BUFFER: usize = 32 * 1024;

/// Runs hyper's background tasks (HTTP/2 streams, each a request handler) like
/// `TokioExecutor`, but with panics caught and logged as connection tasks' are.
#[derive(Clone, Copy, Debug, Default)]
pub struct PanicLoggingExecutor;

impl<F> hyper::rt::Executor<F> for PanicLoggingExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        // hyper's HTTP/2 stream tasks: each can be reset alone (`stall`).
        super::stall::spawn_stream(fut);
    }
}

/// Which protocols a connection may speak: what TLS ALPN negotiated decides
/// (RFC 7301), so an `h2` connection never falls back to HTTP/1.1 and an
/// `http/1.1` one never answers an HTTP/2 preface. Plain connections (and TLS
/// without ALPN) take either, told apart by the HTTP/2 preface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    Any,
    Http1,
    Http2,
}

impl Protocols {
    /// From the ALPN protocol a TLS handshake agreed on, if any.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Protocols::Http2,
            Some(b"http/1.1") => Protocols::Http1,
            _ => Protocols::Any,
        }
    }
}

/// The HTTP settings of one connection, from `[server]`.
struct Limits {
    header_timeout: Duration,
    keepalive: Duration,
    max_head: usize,
}

impl Limits {
    fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(self.max_head.max(8192))
            .keep_alive(true);
        b
    }

    fn http2(&self) -> hyper::server::conn::http2::Builder<PanicLoggingExecutor> {
        let mut b = hyper::server::conn::http2::Builder::new(PanicLoggingExecutor);
        b.timer(TokioTimer::new())
            .enable_connect_protocol()
            .max_header_list_size(u32::try_from(self.max_head.max(1024)).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(self.keepalive))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_send_buf_size(H2_SEND_BUFFER);
        b
    }

    fn auto(&self) -> auto::Builder<PanicLoggingExecutor> {
        let mut b = auto::Builder::new(PanicLoggingExecutor);
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(self.max_head.max(8192))
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .enable_connect_protocol()
            .max_header_list_size(u32::try_from(self.max_head.max(1024)).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(self.keepalive))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_send_buf_size(H2_SEND_BUFFER);
        b
    }
}

/// Drives a hyper connection future until it ends, the first head handed to
/// it misses its deadline, or the gateway drains (then `graceful_shutdown`,
/// and wait). A macro rather than a function: hyper's three connection types
/// share the method but no trait that has it.
macro_rules! drive {
    ($conn:expr, $sc:expr, $handed:expr, $deadline:expr, $stalls:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        // HTTP/2 streams that wait on a client's shut window (`stall`).
        let stalls: &Stalls = $stalls;
        let look = tokio::time::sleep(stalls.period());
        let mut watching = false;
        // hyper's `header_read_timeout` only starts once hyper-util has told HTTP/1.1
        // from the HTTP/2 preface, which it waits for without a limit, and HTTP/2 has
        // no head timer at all: a client that connects and sends nothing (or half a
        // preface, or dribbles an HTTP/2 HEADERS frame) would hold its slot forever.
        // And a head the fast path (`h1`) started reading and handed over has used
        // part of its time already. So hyper's first request must have arrived by the
        // deadline the fast path set for that head (`header_timeout` after it began
        // waiting for it); later heads are timed by hyper (HTTP/1.1).
        let first_deadline = tokio::time::sleep_until($deadline);
        // Made once, as the accept loop's: a `cancelled()` per wake-up would join
        // and leave the token's waiter list under its lock on every request.
        let shutdown = $sc.shutdown.token.cancelled();
        tokio::pin!(first_deadline, shutdown, look);
        let mut waiting_first = true;
        let mut draining = false;
        // `graceful_shutdown` called: the loop goes on until hyper ends, so
        // stalled streams are still reset while the others finish.
        let mut shut = false;
        let res = loop {
            tokio::select! {
                biased;
                r = conn.as_mut() => break Some(r),
                _ = first_deadline.as_mut(), if waiting_first => {
                    waiting_first = false;
                    if !$handed.is_cancelled() {
                        tracing::debug!("no complete request head within header_timeout; closing");
                        break None;
                    }
                }
                _ = shutdown.as_mut(), if !draining => {
                    draining = true;
                    // The head handed over is on its way or already read (the
                    // connection's first, accepted just before the drain, as
                    // during a binary upgrade; or one the fast path read):
                    // hyper would close it unread. Serve that first.
                    if $handed.is_cancelled() {
                        conn.as_mut().graceful_shutdown();
                        shut = true;
                    }
                }
                _ = $handed.cancelled(), if draining && !shut => {
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                }
                _ = stalls.armed(), if !watching => {
                    watching = true;
                    look.as_mut().reset(tokio::time::Instant::now() + stalls.period());
                }
                _ = look.as_mut(), if watching => {
                    if stalls.look() {
                        tracing::debug!("an HTTP/2 stream took nothing for send_timeout; closing");
                        break None;
                    }
                    watching = stalls.is_armed();
                    look.as_mut().reset(tokio::time::Instant::now() + stalls.period());
                }
            }
        };
        if let Some(Err(e)) = res {
            tracing::debug!(error = %e, "connection ended with error");
        }
    }};
}

/// Serves HTTP on an admitted connection until it closes or the gateway
/// drains, speaking what `protocols` allows.
pub async fn serve<H, IO>(
    sc: ServerCtx,
    handler: Arc<H>,
    io: IO,
    ctx: ConnCtx,
    slot: ConnSlot,
    protocols: Protocols,
) where
    H: Handler,
    IO: AsyncRead + AsyncWrite + AckNow + Unpin + Send + 'static,
{
    let server = sc.config.load_full();
    let ctx = Arc::new(ctx);
    let slot = Arc::new(slot);
    let mut io = io;
    let (prefix, deadline) = if protocols == Protocols::Http2 {
        (Bytes::new(), Instant::now() + server.header_timeout)
    } else {
        let settings = h1::Settings {
            header_timeout: server.header_timeout,
            max_head: server.max_request_head.max(8192),
            send_timeout: server.send_timeout,
        };
        let handle = |req| handler.handle(req, ctx.clone(), slot.clone());
        // Boxed: inline, the fast path's state (a handler future among it)
        // would sit beside hyper's in this future, and the whole would be
        // copied when the connection task starts (11 k instructions per
        // connection in S5's profile); one allocation costs far less.
        let fast = Box::pin(h1::serve(&mut io, settings, handle, &sc.shutdown.token));
        match fast.await {
            h1::End::Closed => return,
            h1::End::Refused(status) => return sc.metrics.unrouted(status.as_u16()),
            h1::End::Upgraded { to, buffered } => return to.send(Box::new(io), buffered),
            h1::End::Handoff { buffered, deadline } => {
                // hyper reads on: a body, or the rest of a long head.
                io.ack_now();
                (buffered, deadline)
            }
        }
    };
    let served = Served {
        sc,
        handler,
        ctx,
        slot,
        protocols,
    };
    // Boxed too: inline, hyper's connection state (its `auto` connection
    // alone is 1.7 KB) would size this future at 5.5 KB for every connection,
    // and it is copied whole as the connection task starts (the box, the
    // task's wrappers, the task cell), though only connections the fast
    // path hands over ever use it.
    Box::pin(serve_hyper(served, &server, io, prefix, deadline)).await;
}

/// What serving a connection needs besides its stream.
struct Served<H> {
    sc: ServerCtx,
    handler: Arc<H>,
    ctx: Arc<ConnCtx>,
    slot: Arc<ConnSlot>,
    protocols: Protocols,
}

/// Serves the rest of a connection with hyper, starting with the `prefix`
/// the fast path read, whose head must be complete by `deadline`.
async fn serve_hyper<H, IO>(
    served: Served<H>,
    server: &ServerConfig,
    io: IO,
    prefix: Bytes,
    deadline: Instant,
) where
    H: Handler,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Served {
        sc,
        handler,
        ctx,
        slot,
        protocols,
    } = served;
    // Cancelled when hyper has read the head it was handed (its first).
    let handed = CancellationToken::new();
    let seen = handed.clone();
    let io = SendTimed::new(Rewind::new(prefix, io), server.send_timeout);
    let (io, framing) = Guarded::new(io);
    let metrics = sc.metrics.clone();
    let stalls = Stalls::new(server.send_timeout);
    let watch = stalls.clone();
    let send_limit = server.send_timeout;
    let service = service_fn(move |req: Request<Incoming>| {
        if !seen.is_cancelled() {
            seen.cancel();
        }
        let handler = handler.clone();
        let ctx = ctx.clone();
        // Upgraded sessions keep the connection's slot while they live.
        let slot = slot.clone();
        let framing = framing.clone();
        let watch = watch.clone();
        // Read when hyper hands the request over, as the scan of its head
        // is done by then; the count's handle is only taken for a refusal.
        let smuggled = framing.ambiguous().then(|| metrics.clone());
        async move {
            if let Some(metrics) = smuggled {
                // Request smuggling shape (see `smuggle`): refuse, forward nothing.
                tracing::debug!("ambiguous request framing; answering 400 and closing");
                metrics.unrouted(400);
                return Ok::<_, Infallible>(ambiguous_framing_response().map(Watched::plain));
            }
            let connect = req.method() == http::Method::CONNECT;
            let version = req.version();
            let mut req = req.map(|b| RequestBody::new(b, version));
            if version == http::Version::HTTP_2 {
                crate::fields::join_cookies(req.headers_mut());
                if connect {
                    req.extensions_mut().insert(SendLimit(send_limit));
                }
            }
            let resp = handler.handle(req, ctx, slot).await;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                || (connect && resp.status().is_success())
            {
                // The connection becomes a tunnel: no more HTTP to scan.
                framing.stop();
            }
            Ok::<_, Infallible>(match version {
                // A tunnel's stream is not a response body (RFC 8441).
                http::Version::HTTP_2 if !connect => resp.map(|b| watch.watch(b)),
                _ => resp.map(Watched::plain),
            })
        }
    });
    let limits = Limits {
        header_timeout: server.header_timeout,
        keepalive: server.keepalive_timeout,
        max_head: server.max_request_head,
    };
    let io = TokioIo::new(io);
    match protocols {
        Protocols::Any => {
            let builder = limits.auto();
            drive!(
                builder.serve_connection_with_upgrades(io, service),
                sc,
                handed,
                deadline,
                &stalls
            )
        }
        Protocols::Http1 => drive!(
            limits.http1().serve_connection(io, service).with_upgrades(),
            sc,
            handed,
            deadline,
            &stalls
        ),
        Protocols::Http2 => drive!(
            limits.http2().serve_connection(io, service),
            sc,
            handed,
            deadline,
            &stalls
        ),
    }
}

/// Answers every request on a connection that was over capacity with 503 (or
/// 429 for the per-IP cap) and `Retry-After`, then closes it.
pub async fn serve_refusal<IO>(
    io: IO,
    refusal: Refusal,
    header_timeout: Duration,
    metrics: Arc<crate::metrics::Metrics>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let metrics = metrics.clone();
        async move {
            let (status, msg) = match refusal {
                Refusal::Full => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server is at its connection limit, retry later\n",
                ),
                Refusal::PerIp => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from your address, retry later\n",
                ),
            };
            metrics.unrouted(status.as_u16());
            let resp = refusal_response(status, msg);
            Ok::<_, Infallible>(match crate::grpc_reply::is_grpc(&req) {
                true => crate::grpc_reply::convert(resp, msg),
                false => resp,
            })
        }
    });
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(false);
    b.http2().timer(TokioTimer::new()).max_concurrent_streams(1);
    let conn = b.serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(header_timeout + Duration::from_secs(1), conn).await;
}

fn ambiguous_framing_response() -> Response<Body> {
    let mut r = refusal_response(
        StatusCode::BAD_REQUEST,
        "malformed request head: Content-Length with Transfer-Encoding, conflicting Content-Length, or a repeated Host, Origin or Sec-WebSocket-Key/-Version field\n",
    );
    r.headers_mut().remove(header::RETRY_AFTER);
    r
}

fn refusal_response(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(msg.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}
