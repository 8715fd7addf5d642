//! Request handling: find the route, then dispatch to the WebSocket path
//! ([`ws`]), the HTTP reverse proxy ([`http`]), an app, or static files
//! ([`files`]). Failures become responses in exactly one place
//! ([`error::ProxyError::into_response`]).

pub mod error;
pub mod files;
pub mod headers;
pub mod http;
pub mod inspect;
pub mod scan;
pub mod splice;
pub mod ws;
pub mod ws_upstream;

use std::sync::Arc;
use std::time::Instant;

use ::http::{header, Request, Response, Version};
use hyper::body::Incoming;

use crate::access::{BytesIn, LoggedBody, RequestInfo, UpstreamServer};
use crate::body::Body;
use crate::config::{AppKind, RouteTarget};
use crate::ctx::ConnCtx;
use crate::gateway::{Gateway, Snapshot};
use crate::limits::ConnSlot;
use crate::router::Route;
pub use error::{HandshakeError, ProxyError};

/// The hyper service entry point for every request on every listener. Every
/// response leaves through here, so this is where the access line is attached.
pub async fn handle(
    gw: Arc<Gateway>,
    ctx: Arc<ConnCtx>,
    slot: Arc<ConnSlot>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let snap = gw.snapshot();
    let log = snap.config.log.access_log;
    let bytes_in = BytesIn::default();
    req.extensions_mut().insert(bytes_in.clone());
    let method = req.method().clone();
    // Copied for the access line only: most deployments that need speed log less.
    let path = if log {
        req.uri().path().to_string()
    } else {
        String::new()
    };
    let host = request_host(&req);
    let mut route = None;
    let resp = match dispatch(
        &gw,
        &snap,
        ctx.clone(),
        slot,
        req,
        host.as_deref(),
        &mut route,
    )
    .await
    {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, side = ?e.side(), "request failed");
            e.into_response()
        }
    };
    let (parts, body) = resp.into_parts();
    let info = RequestInfo {
        client: ctx.client,
        method,
        host: if log {
            host.unwrap_or_default()
        } else {
            String::new()
        },
        path,
        route,
        log,
        upstream: parts
            .extensions
            .get::<UpstreamServer>()
            .map(|u| u.0.clone()),
        status: parts.status.as_u16(),
        bytes_in,
        started,
    };
    Response::from_parts(parts, LoggedBody::wrap(gw, body, info))
}

async fn dispatch(
    gw: &Arc<Gateway>,
    snap: &Arc<Snapshot>,
    ctx: Arc<ConnCtx>,
    slot: Arc<ConnSlot>,
    req: Request<Incoming>,
    host: Option<&str>,
    matched: &mut Option<Arc<Route>>,
) -> Result<Response<Body>, ProxyError> {
    let upgrade = ws::is_upgrade_attempt(&req);
    if host.is_none() && (upgrade || req.version() == Version::HTTP_11) {
        return Err(if upgrade {
            HandshakeError::MissingHost.into()
        } else {
            ProxyError::MissingHost
        });
    }
    let route = snap
        .router
        .find(host, req.uri().path())
        .cloned()
        .ok_or(ProxyError::NoRoute)?;
    *matched = Some(route.clone());
    if upgrade {
        let result = ws::handle(gw, snap, &route, ctx, slot, req).await;
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(e) => Err(e.status().as_u16()),
        };
        route.metrics.handshake(&gw.metrics, &route.label, outcome);
        return result;
    }
    let cfg = &route.cfg;
    match &cfg.target {
        RouteTarget::Upstream(name) => {
            let pool = snap
                .pools
                .get(name)
                .ok_or_else(|| ProxyError::Internal(format!("pool {name} missing")))?;
            http::forward(pool, &gw.metrics, cfg, &ctx, host, req).await
        }
        RouteTarget::App(AppKind::Echo) => Err(ProxyError::UpgradeRequired),
        RouteTarget::App(AppKind::Chat) => Ok(gw.apps.chat.http(req, &cfg.path).await),
        RouteTarget::Static(root) => files::serve(root, cfg, &req).await,
    }
}

/// The request's host: the `Host` header (HTTP/1.1) or the URI authority
/// (HTTP/2 `:authority`, absolute-form HTTP/1.1).
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}
