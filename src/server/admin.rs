//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process
//! answers), `/readyz` (503 with a reason while starting, draining or degraded)
//! and `/status` (JSON). Not counted against client connection caps. What the
//! endpoints say comes from an [`AdminView`], which the process (`gateway`)
//! implements: this module only serves it.

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{full, text_response, Body};

/// What the admin endpoints report.
pub trait AdminView: Send + Sync + 'static {
    /// Prometheus text, with point-in-time values refreshed.
    fn metrics_text(&self) -> String;
    /// Why the process is not ready (starting, draining, degraded), if it is not.
    fn not_ready_reason(&self) -> Option<String>;
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
}

pub async fn run<V: AdminView>(view: Arc<V>, listener: TcpListener, stop: CancellationToken) {
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
        let view = view.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let view = view.clone();
                async move { Ok::<_, Infallible>(handle(&*view, req)) }
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

fn handle(view: &impl AdminView, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(full(view.metrics_text()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/healthz" => text_response(StatusCode::OK, "ok\n"),
        "/readyz" => match view.not_ready_reason() {
            None => text_response(StatusCode::OK, "ready\n"),
            Some(why) => text_response(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/status" => {
            let mut r = Response::new(full(view.status().to_string()));
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
