//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process
//! answers), `/readyz` (503 with a reason while starting, draining or degraded)
//! and `/status` (JSON), over HTTP/1.1. Not counted against client connection caps, but
//! held to caps of its own: at most [`CONNECTIONS`] at once, a request head
//! (or an idle keep-alive wait) within `server.header_timeout`, and a
//! connection's life within [`LIFETIME`]. Without them idle admin
//! connections used up the process's descriptors, and the public listeners'
//! accepts failed. What the endpoints say comes from an [`AdminView`], which
//! the process (`gateway`) implements: this module only serves it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
    /// How long a request head may take, and a keep-alive connection idle
    /// (`server.header_timeout`, read at each connection: reloads change it).
    fn header_timeout(&self) -> Duration;
}

/// Admin connections open at once; the next is closed on accept. Scrapers
/// and health checkers need a few.
pub const CONNECTIONS: usize = 64;
/// An admin connection is asked to close (HTTP/2 GOAWAY, HTTP/1.1 after its
/// request) this long after it opened: an idle HTTP/2 connection has no
/// head to time out.
pub const LIFETIME: Duration = Duration::from_secs(60);
/// How long a connection asked to close may finish its request.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub async fn run<V: AdminView>(view: Arc<V>, listener: TcpListener, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin connection refused: {CONNECTIONS} open");
            continue;
        };
        tokio::spawn(serve(view.clone(), stream, stop.clone(), slot));
    }
}

async fn serve<V: AdminView>(
    view: Arc<V>,
    stream: TcpStream,
    stop: CancellationToken,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    // HTTP/1.1 only, as scrapers and health checkers speak: hyper's
    // protocol sniffing waits for a preface's bytes with no timer of its own,
    // and an HTTP/2 connection has no request head to time out, so either
    // could hold a place of the cap for its whole life.
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(view.header_timeout());
    let svc = service_fn(move |req| {
        let view = view.clone();
        async move { Ok::<_, Infallible>(handle(&*view, req)) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(LIFETIME) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
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
