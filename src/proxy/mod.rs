//! Request handling: find the route, then dispatch to the WebSocket path
//! ([`ws`]), the HTTP reverse proxy ([`http`]), an app, or static files
//! ([`files`]). Failures become responses in exactly one place
//! ([`error::ProxyError::into_response`]).

pub mod error;
pub mod files;
pub mod headers;
pub mod http;
pub mod splice;
pub mod ws;

use std::sync::Arc;

use ::http::{header, Request, Response, Version};
use hyper::body::Incoming;

use crate::config::{AppKind, RouteTarget};
use crate::gateway::Gateway;
use crate::limits::ConnSlot;
use crate::server::ConnCtx;
use crate::Body;
pub use error::{HandshakeError, ProxyError};

/// The hyper service entry point for every request on every listener.
pub async fn handle(
    gw: Arc<Gateway>,
    ctx: Arc<ConnCtx>,
    slot: Arc<ConnSlot>,
    req: Request<Incoming>,
) -> Response<Body> {
    match dispatch(gw, ctx, slot, req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, side = ?e.side(), "request failed");
            e.into_response()
        }
    }
}

async fn dispatch(
    gw: Arc<Gateway>,
    ctx: Arc<ConnCtx>,
    slot: Arc<ConnSlot>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let snap = gw.snapshot();
    let host = request_host(&req);
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
        .find(host.as_deref(), req.uri().path())
        .cloned()
        .ok_or(ProxyError::NoRoute)?;
    if upgrade {
        return ws::handle(&gw, &snap, route, ctx, slot, req).await;
    }
    match &route.target {
        RouteTarget::Upstream(name) => {
            let pool = snap
                .pools
                .get(name)
                .cloned()
                .ok_or_else(|| ProxyError::Internal(format!("pool {name} missing")))?;
            http::forward(&pool, &gw.sticky_key, &route, &ctx, host, req).await
        }
        RouteTarget::App(AppKind::Echo) => Err(ProxyError::UpgradeRequired),
        RouteTarget::App(AppKind::Chat) => Ok(gw.apps.chat.http(req, &route.path).await),
        RouteTarget::Static(root) => files::serve(root, &route, &req).await,
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
