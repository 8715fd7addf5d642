//! One client connection served by hyper-util's auto builder (HTTP/1.1 and
//! HTTP/2 on the same port, upgrades on, RFC 8441 extended CONNECT enabled). When
//! the gateway drains, the connection gets `graceful_shutdown` so requests in
//! flight finish. Upgraded connections leave hyper here and are tracked as
//! sessions by `proxy::ws`.

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

use super::ConnCtx;
use crate::gateway::Gateway;
use crate::limits::{ConnSlot, Refusal};
use crate::Body;

fn builder(
    header_timeout: Duration,
    keepalive: Duration,
    max_head: usize,
) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_head.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(max_head.max(1024)).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(keepalive))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(256);
    b
}

/// Serves HTTP on an admitted connection until it closes or the gateway drains.
pub async fn serve<IO>(gw: Arc<Gateway>, io: IO, ctx: ConnCtx, slot: ConnSlot)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server = gw.server_config();
    let ctx = Arc::new(ctx);
    let slot = Arc::new(slot);
    let svc_gw = gw.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let gw = svc_gw.clone();
        let ctx = ctx.clone();
        // Upgraded sessions keep the connection's slot while they live.
        let slot = slot.clone();
        async move { Ok::<_, Infallible>(crate::proxy::handle(gw, ctx, slot, req).await) }
    });
    let builder = builder(
        server.header_timeout,
        server.keepalive_timeout,
        server.max_request_head,
    );
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = gw.shutdown.token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "connection ended with error");
    }
}

/// Answers every request on a connection that was over capacity with 503 (or
/// 429 for the per-IP cap) and `Retry-After`, then closes it.
pub async fn serve_refusal<IO>(io: IO, refusal: Refusal, header_timeout: Duration)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |_req: Request<Incoming>| async move {
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
        Ok::<_, Infallible>(refusal_response(status, msg))
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
