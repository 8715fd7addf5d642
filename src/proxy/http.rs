//! The HTTP reverse proxy: forwards a request to a server of the route's pool over
//! pooled keep-alive connections, streaming bodies both ways, with header hygiene,
//! `X-Forwarded-*`, `strip_prefix`, timeouts, passive health reports and safe
//! retries (idempotent method, empty request body, no response byte yet, a
//! different server each time, at most `retries`).

use std::error::Error as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::error::ProxyError;
use super::headers::{add_forwarded, rewrite_path, strip_hop_by_hop};
use crate::config::RouteConfig;
use crate::server::ConnCtx;
use crate::upstream::pool::InflightGuard;
use crate::upstream::{BackendId, Pool};
use crate::{Body, BoxError};

pub async fn forward(
    pool: &Pool,
    route: &RouteConfig,
    ctx: &ConnCtx,
    host: Option<String>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let path = rewrite_path(&pq, &route.path, route.strip_prefix);
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded(
        &mut parts.headers,
        ctx.client.ip(),
        ctx.tls,
        host.as_deref(),
    );
    if let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
        parts.headers.insert(header::HOST, h);
    }
    // Only a request that carries no body can be sent again.
    let replayable = is_idempotent(&parts.method) && body.is_end_stream();
    let mut body = Some(body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync());
    let mut tried: Vec<BackendId> = Vec::new();
    loop {
        let backend = pool.select(None, &tried).ok_or(ProxyError::NoUpstream)?;
        tried.push(backend.id);
        let uri: Uri = format!("http://{}{}", backend.addr, path)
            .parse()
            .map_err(|e: http::uri::InvalidUri| ProxyError::BadRequest(e.to_string()))?;
        let this_body = match body.take() {
            Some(b) => b,
            None => super::error::empty(),
        };
        let mut up = Request::from_parts(parts.clone(), this_body);
        *up.uri_mut() = uri;
        *up.version_mut() = Version::HTTP_11;
        let guard = backend.track();
        let attempt =
            tokio::time::timeout(pool.cfg.response_timeout, pool.client().request(up)).await;
        let err = match attempt {
            Ok(Ok(resp)) => {
                pool.report_success(&backend);
                return Ok(response(resp, guard));
            }
            Ok(Err(e)) if e.is_connect() && is_timeout(&e) => {
                ProxyError::UpstreamTimeout(backend.addr.clone())
            }
            Ok(Err(e)) if e.is_connect() => ProxyError::UpstreamConnect(backend.addr.clone()),
            // Failed before a response head arrived (hyper gives us no partial response).
            Ok(Err(e)) => ProxyError::UpstreamFailed(backend.addr.clone(), root_cause(&e)),
            // The server may be processing it: never resend after a response timeout.
            Err(_) => {
                pool.report_failure(&backend);
                return Err(ProxyError::UpstreamTimeout(backend.addr.clone()));
            }
        };
        pool.report_failure(&backend);
        tracing::debug!(upstream = %pool.name(), server = %backend.addr, error = %err, "upstream attempt failed");
        if !replayable || tried.len() > pool.cfg.retries as usize {
            return Err(err);
        }
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        src = s.source();
    }
    false
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

fn response(resp: Response<Incoming>, guard: InflightGuard) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = Guarded {
        inner: body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync(),
        _guard: guard,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// A body that keeps the backend's in-flight count until it is fully sent, so
/// `least_conn` sees long downloads as load.
struct Guarded {
    inner: Body,
    _guard: InflightGuard,
}

impl HttpBody for Guarded {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
