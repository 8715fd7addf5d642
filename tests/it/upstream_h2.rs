//! HTTP/2 to upstreams (issue 21, item 5, without a real gRPC server yet):
//! `protocol = "h2"` over TLS (ALPN) and `"h2c"`, against an HTTP/2-only
//! hyper server answering like gRPC (body, then `grpc-status` trailers).
//! Requests share one multiplexed connection; `TE: trailers` and trailers
//! pass through; HTTP/1.1 clients are served too.

use crate::common;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::h2_upstream::H2Upstream;
use common::tls_upstream::TestCa;
use common::{get, Cfg, Route, TestGateway, WAIT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

async fn gateway(dir: tempfile::TempDir, f: impl FnOnce(Cfg) -> Cfg) -> TestGateway {
    let cfg = f(Cfg::new()
        .listener_plain()
        .route(Route::upstream("/", "api")))
    .build();
    tokio::time::timeout(WAIT, TestGateway::start_in(&cfg, dir))
        .await
        .expect("gateway starts in time")
}

/// An HTTP/2 (prior knowledge) client connection to the gateway.
async fn h2_client<B>(gw: &TestGateway) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(gw.http()).await.expect("connect");
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    tx
}

/// A gateway proxying everything to `up` over cleartext HTTP/2.
async fn h2c_gateway(up: &H2Upstream) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    gateway(dir, |c| {
        c.upstream("api", &[up.addr])
            .set("upstream.api.protocol", "h2c")
    })
    .await
}

/// Three concurrent gRPC-shaped calls over one HTTP/2 (prior knowledge)
/// connection to the gateway: each answer echoes its body and ends with
/// `grpc-status: 0` trailers.
async fn grpc_like_calls(gw: &TestGateway) {
    let tx = h2_client(gw).await;
    let calls = (0..3).map(|i| {
        let mut tx = tx.clone();
        async move {
            let body = format!("call {i}");
            let req = Request::post(format!("http://localhost/pkg.Svc/Call{i}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::from(body.clone())))
                .expect("request");
            let resp = tx.send_request(req).await.expect("response");
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["x-version"], "HTTP/2.0");
            assert_eq!(resp.headers()["x-te"], "trailers");
            assert_eq!(resp.headers()["x-authority"], "localhost");
            let collected = resp.into_body().collect().await.expect("body");
            let trailers = collected.trailers().cloned().expect("trailers");
            assert_eq!(trailers["grpc-status"], "0");
            assert_eq!(trailers["x-len"], body.len().to_string().as_str());
            assert_eq!(collected.to_bytes(), body.as_bytes());
        }
    });
    tokio::time::timeout(WAIT, futures_util::future::join_all(calls))
        .await
        .expect("calls finish in time");
}

#[tokio::test]
async fn h2_over_tls_multiplexes_and_passes_trailers() {
    let ca = TestCa::new("h2");
    let up = H2Upstream::start(Some(&ca)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca.write(dir.path(), "ca");
    let port = up.addr.port();
    let gw = gateway(dir, |c| {
        c.upstream("api", &[format!("https://localhost:{port}")])
            .set("upstream.api.tls_ca", ca_path)
            .set("upstream.api.protocol", "h2")
    })
    .await;
    grpc_like_calls(&gw).await;
    // An HTTP/1.1 client is carried over the same HTTP/2 connection.
    let r = tokio::time::timeout(WAIT, get(gw.http(), "/plain"))
        .await
        .expect("in time");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-version"], "HTTP/2.0");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn h2c_upstreams_speak_cleartext_http2() {
    let up = H2Upstream::start(None).await;
    let gw = h2c_gateway(&up).await;
    grpc_like_calls(&gw).await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

/// A client's request trailers reach an HTTP/2 upstream without what its
/// head is stripped of: client-address claims, client-certificate fields,
/// names with `_`. A trailer is not a header, but a framework may read one
/// as a header, and the gateway vouches for those.
#[tokio::test]
async fn request_trailers_lose_what_the_head_is_stripped_of() {
    let up = H2Upstream::start(None).await;
    let gw = h2c_gateway(&up).await;
    let mut tx = h2_client(&gw).await;
    let mut claims = http::HeaderMap::new();
    for (k, v) in [
        ("x-checksum", "abc"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-real-ip", "203.0.113.9"),
        ("x-client-cert-sha256", "forged"),
        ("x_forwarded_for", "203.0.113.9"),
        ("authorization", "Bearer unchecked"),
    ] {
        claims.insert(k, http::HeaderValue::from_static(v));
    }
    let frames: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(hyper::body::Frame::data(Bytes::from_static(b"payload"))),
        Ok(hyper::body::Frame::trailers(claims)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post("http://localhost/pkg.Svc/Upload")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request");
    let resp = tokio::time::timeout(WAIT, tx.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("in time")
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-request-trailers"], "x-checksum=abc");
}

#[tokio::test]
async fn an_h2_pool_refuses_a_server_without_http2() {
    // A TLS upstream that only offers HTTP/1.1 (no ALPN h2): 502, generic.
    let ca = TestCa::new("h1");
    let up = common::tls_upstream::TlsUpstream::start(&ca, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca.write(dir.path(), "ca");
    let port = up.addr.port();
    let gw = gateway(dir, |c| {
        c.upstream("api", &[format!("https://localhost:{port}")])
            .set("upstream.api.tls_ca", ca_path)
            .set("upstream.api.protocol", "h2")
    })
    .await;
    let r = tokio::time::timeout(WAIT, get(gw.http(), "/"))
        .await
        .expect("in time");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.text(), "upstream server failed\n");
}

/// A server that stops reading its HTTP/2 connection (or a flow a NAT
/// dropped) leaves a connection every request times out on: PINGs find it,
/// it is closed, and the next request opens a new one. Before, that server
/// answered 504 until its process went away.
#[tokio::test]
async fn a_stalled_h2_connection_is_found_by_ping_and_replaced() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first connection: kept open, never read.
                held.push(tcp);
                continue;
            }
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"fresh"),
                    )))
                });
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = gateway(dir, |c| {
        c.upstream("api", &[up])
            .set("upstream.api.protocol", "h2c")
            .set("upstream.api.connect_timeout", "1s")
            .set("upstream.api.response_timeout", "1s")
            .set("upstream.api.max_fails", 0)
    })
    .await;
    let r = tokio::time::timeout(WAIT, get(gw.http(), "/"))
        .await
        .expect("in time");
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    // PING every 10 s, unanswered after connect_timeout: within ~11 s.
    let fresh = common::eventually(std::time::Duration::from_secs(20), || async {
        get(gw.http(), "/").await.text() == "fresh"
    })
    .await;
    assert!(fresh, "the stalled connection was never replaced");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
