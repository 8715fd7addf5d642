//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process
//! answers), `/readyz` (503 with a reason while starting, draining or degraded)
//! and `/status` (JSON). Not counted against client connection caps.

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::Body;
use crate::body::{full, text_response};
use crate::gateway::Gateway;

pub async fn run(gw: Arc<Gateway>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let gw = gw.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(handle(&gw, req)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn handle(gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(full(gw.metrics.render(&gw.snapshot())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/healthz" => text_response(StatusCode::OK, "ok\n"),
        "/readyz" => match not_ready_reason(gw) {
            None => text_response(StatusCode::OK, "ready\n"),
            Some(why) => text_response(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/status" => {
            let mut r = Response::new(full(status_json(gw).to_string()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text_response(
            StatusCode::NOT_FOUND,
            "admin endpoints: /metrics /healthz /readyz /status\n",
        ),
    }
}

pub fn not_ready_reason(gw: &Gateway) -> Option<String> {
    if !gw.readiness.is_started() {
        Some("starting".into())
    } else if gw.shutdown.is_draining() {
        Some("draining".into())
    } else {
        gw.readiness.degraded().map(|d| format!("degraded: {d}"))
    }
}

fn status_json(gw: &Gateway) -> serde_json::Value {
    let snap = gw.snapshot();
    let listeners: Vec<_> = gw
        .listener_addrs()
        .into_iter()
        .map(|(addr, tls)| {
            serde_json::json!({ "addr": addr.to_string(), "tls": tls, "connections": gw.metrics.listener_count(&addr.to_string()) })
        })
        .collect();
    let upstreams: serde_json::Map<String, serde_json::Value> = snap
        .pools
        .iter()
        .map(|(name, pool)| {
            let servers: Vec<_> = pool
                .backends()
                .iter()
                .map(|b| serde_json::json!({ "addr": &*b.addr, "weight": b.weight, "up": b.health().is_up(), "inflight": b.inflight() }))
                .collect();
            (name.clone(), serde_json::json!({ "servers": servers }))
        })
        .collect();
    let cluster = match &snap.config.cluster {
        None => serde_json::json!({ "enabled": false }),
        Some(c) => {
            serde_json::json!({ "enabled": true, "redis": c.redis, "degraded": gw.readiness.degraded() })
        }
    };
    serde_json::json!({
        "node": gw.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": gw.started.elapsed().as_secs(),
        "ready": not_ready_reason(gw).is_none(),
        "connections": gw.limits.active(),
        "listeners": listeners,
        "sessions": gw.metrics.session_counts(),
        "upstreams": upstreams,
        "cluster": cluster,
    })
}
