//! HTTP/2 cases of issue 22, over real sockets with the raw `h2` client
//! (`common::h2`): a request answered before its body was read leaves the
//! stream and the connection in a state the client can rely on (the body is
//! drained, bounded, not reset); `Host` fields that disagree with each other or
//! with `:authority` are refused before anything reaches the upstream; a
//! client's `RST_STREAM` mid-body is the client's fault, not the upstream's;
//! the ALPN protocol decides what a TLS connection speaks.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::cfg::Cfg;
use common::h2::{handshake, reset_reason, response, wait_reset, H2};
use common::tls::tls_client;
use common::upstreams::{canned_upstream, http_upstream};
use common::{eventually, write_cert, TestGateway, WAIT};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A plain gateway whose only route is the echo app: any other path is
/// wsgate's own 404, answered without reading the request body.
async fn echo_gateway() -> TestGateway {
    TestGateway::start(
        &Cfg::new()
            .listener_plain()
            .route_app("/echo", "echo")
            .build(),
    )
    .await
}

/// A plain gateway proxying every path to the HTTP/1.1 upstream `up`.
async fn proxy_gateway(up: std::net::SocketAddr) -> TestGateway {
    TestGateway::start(
        &Cfg::new()
            .listener_plain()
            .upstream("api", &[up])
            .route_upstream("/", "api")
            .build(),
    )
    .await
}

async fn h2c(addr: std::net::SocketAddr) -> H2 {
    handshake(TcpStream::connect(addr).await.expect("connect")).await
}

fn post(path: &str) -> Request<()> {
    Request::post(format!("http://localhost{path}"))
        .body(())
        .expect("request")
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).expect("request")
}

#[tokio::test]
async fn an_unread_body_answered_early_is_drained_and_the_connection_goes_on() {
    let gw = echo_gateway().await;
    let mut c = h2c(gw.http()).await;
    let (resp, mut body) = c.start(post("/nothing-here"), true).await;
    body.send_data(Bytes::from_static(b"first part"), false)
        .expect("data");
    let (status, _) = response(resp).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The client finishes its body after the answer, as a client may.
    body.send_data(Bytes::from_static(b"the rest"), true)
        .expect("the stream still takes the body");
    c.round_trip().await;
    // Dropped unread, h2 would have reset the stream (RST_STREAM before the
    // PONG); drained, it ended as the client ended it.
    assert_eq!(
        reset_reason(&mut body),
        None,
        "the gateway reset the stream"
    );
    // The same connection serves the next stream: no GOAWAY, no error.
    let (status, _) = c.get(get("http://localhost/echo")).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    assert!(!c.conn.is_finished(), "the connection ended");
}

#[tokio::test]
async fn draining_stops_after_64_kib() {
    let gw = echo_gateway().await;
    let mut c = h2c(gw.http()).await;
    let (resp, mut body) = c.start(post("/nothing-here"), true).await;
    let (status, _) = response(resp).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let started = Instant::now();
    body.send_data(Bytes::from(vec![b'x'; 100 * 1024]), false)
        .expect("data");
    wait_reset(&mut body).await;
    // Well before the time bound: it was the byte bound that ended it.
    assert!(
        started.elapsed() < wsgate::body::DRAIN_MAX_TIME,
        "reset after {:?}",
        started.elapsed()
    );
    let (status, _) = c.get(get("http://localhost/echo")).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
}

#[tokio::test]
async fn draining_stops_after_a_second() {
    let gw = echo_gateway().await;
    let mut c = h2c(gw.http()).await;
    let (resp, mut body) = c.start(post("/nothing-here"), true).await;
    let answered = Instant::now();
    let (status, _) = response(resp).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The client sends nothing more: the stream is reset once the drain gives up.
    wait_reset(&mut body).await;
    assert!(
        answered.elapsed() >= wsgate::body::DRAIN_MAX_TIME,
        "reset after {:?}",
        answered.elapsed()
    );
    let (status, _) = c.get(get("http://localhost/echo")).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
}

#[tokio::test]
async fn conflicting_or_repeated_host_fields_get_400_and_reach_nobody() {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let up = http_upstream(move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move { Response::new(Full::new(Bytes::from_static(b"ok"))) }
    })
    .await;
    let gw = proxy_gateway(up).await;
    let mut c = h2c(gw.http()).await;
    let refused = [
        // `:authority` names one host, `Host` another (RFC 9113 §8.3.1).
        Request::get("http://a.test/x").header("host", "evil.example"),
        // Two `Host` fields, equal or not.
        Request::get("http://a.test/x")
            .header("host", "a.test")
            .header("host", "evil.example"),
        Request::get("/x")
            .header("host", "a.test")
            .header("host", "a.test"),
    ];
    for req in refused {
        let req = req.body(()).expect("request");
        let what = format!("{:?}", req.headers());
        let (status, _) = c.get(req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused request was forwarded"
    );
    // A `Host` that agrees with `:authority` (ASCII case aside) is fine.
    let (status, text) = c
        .get(
            Request::get("http://a.test/x")
                .header("host", "A.test")
                .body(())
                .expect("request"),
        )
        .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok"));
    assert!(!c.conn.is_finished(), "the connection ended");
}

#[tokio::test]
async fn a_stream_reset_mid_body_never_takes_the_upstream_down() {
    // The upstream says when a request arrived and how its body ended.
    let (tx, mut events) = mpsc::unbounded_channel();
    let up = http_upstream(move |req| {
        let tx = tx.clone();
        async move {
            let _ = tx.send("request");
            let read = req.into_body().collect().await;
            let _ = tx.send(if read.is_ok() { "body" } else { "broken" });
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    let toml = Cfg::new()
        .listener_plain()
        .upstream("api", &[up])
        .set("upstream.api.max_fails", 1)
        .set("upstream.api.fail_timeout", "60s")
        .route_upstream("/", "api")
        .build();
    let gw = TestGateway::start(&toml).await;
    let mut c = h2c(gw.http()).await;
    // NO_ERROR too, which hyper reads as the body's end (probe 13: the
    // body's end short of its Content-Length was charged to the upstream).
    for reason in [h2::Reason::CANCEL, h2::Reason::NO_ERROR] {
        for _ in 0..2 {
            let mut req = post("/upload");
            req.headers_mut()
                .insert(http::header::CONTENT_LENGTH, 1000.into());
            let (_resp, mut body) = c.start(req, true).await;
            body.send_data(Bytes::from_static(b"some of it"), false)
                .expect("data");
            assert_eq!(next(&mut events).await, "request");
            body.send_reset(reason);
            assert_eq!(next(&mut events).await, "broken", "{reason:?}");
        }
    }
    // With max_fails = 1, one failure charged to the upstream would have
    // marked the only server down (502).
    let (status, text) = c.get(get("http://localhost/after")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok"));
}

/// A client that stops sending its body while the upstream waits for more
/// gets 408 once `response_timeout` passes, and the upstream is not charged
/// (probe 13: three such clients took a healthy server down, every other
/// client then got 502).
#[tokio::test]
async fn a_stalled_upload_is_the_clients_408_not_the_upstreams_failure() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let up = http_upstream(move |req| {
        let tx = tx.clone();
        async move {
            let _ = tx.send("request");
            let _ = req.into_body().collect().await;
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    let toml = Cfg::new()
        .listener_plain()
        .upstream("api", &[up])
        .set("upstream.api.max_fails", 1)
        .set("upstream.api.fail_timeout", "60s")
        .set("upstream.api.response_timeout", "300ms")
        .route_upstream("/", "api")
        .build();
    let gw = TestGateway::start(&toml).await;
    let mut c = h2c(gw.http()).await;
    let mut req = post("/upload");
    req.headers_mut()
        .insert(http::header::CONTENT_LENGTH, 1000.into());
    let (resp, mut body) = c.start(req, true).await;
    body.send_data(Bytes::from_static(b"some of it"), false)
        .expect("data");
    assert_eq!(next(&mut events).await, "request");
    let (status, _) = response(resp).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    let (status, text) = c.get(get("http://localhost/after")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok"));
}

async fn next(events: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("upstream event in time")
        .expect("upstream alive")
}

/// A TLS gateway with the echo app, and its certificate (the client's CA).
async fn tls_gateway() -> (TestGateway, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = write_cert(dir.path(), "localhost", &["localhost"]);
    let toml = Cfg::new()
        .listener_tls(&cert, &key)
        .route_app("/echo", "echo")
        .build();
    (TestGateway::start_in(&toml, dir).await, cert)
}

async fn tls_alpn(
    gw: &TestGateway,
    ca: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(gw.https()).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let s = tokio_rustls::TlsConnector::from(tls_client(ca, &[alpn]))
        .connect(name, tcp)
        .await
        .expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(alpn));
    s
}

#[tokio::test]
async fn alpn_decides_whether_http2_is_spoken() {
    let (gw, ca) = tls_gateway().await;
    // ALPN h2: HTTP/2 streams are served.
    let mut c = handshake(tls_alpn(&gw, &ca, b"h2").await).await;
    let (status, _) = c.get(get("https://localhost/echo")).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    let (status, _) = c.get(get("https://localhost/none")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // ALPN http/1.1: an HTTP/2 preface gets no HTTP/2 answer; the request fails.
    let mut c = handshake(tls_alpn(&gw, &ca, b"http/1.1").await).await;
    let (resp, _stream) = c.start(get("https://localhost/echo"), false).await;
    let got = tokio::time::timeout(WAIT, resp)
        .await
        .expect("the request fails in time, not hangs");
    assert!(
        got.is_err(),
        "an http/1.1 connection answered HTTP/2: {got:?}"
    );
}

/// An HTTP/2 client's cookie crumbs (one field per cookie, RFC 9113 §8.2.3)
/// reach an HTTP/1.1 upstream as one `Cookie` field, joined with "; ".
#[tokio::test]
async fn cookie_crumbs_reach_an_http1_upstream_as_one_field() {
    let up = http_upstream(|req| async move {
        let cookies: Vec<_> = req
            .headers()
            .get_all("cookie")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        Response::new(Full::new(Bytes::from(format!(
            "{:?} {}",
            req.version(),
            cookies.join("|")
        ))))
    })
    .await;
    let gw = proxy_gateway(up).await;
    let mut c = h2c(gw.http()).await;
    let req = Request::get("http://localhost/c")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(())
        .expect("request");
    let (status, text) = c.get(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "HTTP/1.1 a=1; b=2; c=3");
}

/// An upstream's 204 with a `Content-Length` (RFC 9110 §8.6: never on a
/// 204) reaches an HTTP/2 client without it: with it the response was
/// malformed (RFC 9113 §8.1.1) and the client reset the stream.
#[tokio::test]
async fn a_204_with_content_length_stays_well_formed_over_http2() {
    let up = canned_upstream(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n").await;
    let gw = proxy_gateway(up).await;
    let mut c = h2c(gw.http()).await;
    for _ in 0..2 {
        let req = Request::get("http://a.test/x").body(()).expect("request");
        let (resp, _stream) = c.start(req, false).await;
        let resp = tokio::time::timeout(WAIT, resp)
            .await
            .expect("response in time")
            .expect("a well-formed response");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(!resp.headers().contains_key("content-length"));
    }
}

/// An upstream's `Content-Length` as a list, repeated, or with leading
/// zeros (one value, RFC 9110 §8.6) reaches an HTTP/2 client as one plain
/// field: as it came, the client refused the response (probe 13).
#[tokio::test]
async fn an_upstream_content_length_list_reaches_http2_clients_as_one_field() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhello",
    ] {
        let up = canned_upstream(answer).await;
        let gw = proxy_gateway(up).await;
        let mut c = h2c(gw.http()).await;
        let req = Request::get("http://a.test/x").body(()).expect("request");
        let (resp, _stream) = c.start(req, false).await;
        let resp = tokio::time::timeout(WAIT, resp)
            .await
            .expect("response in time")
            .expect("a well-formed response");
        let lengths: Vec<_> = resp.headers().get_all("content-length").iter().collect();
        assert_eq!(lengths, ["5"]);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = tokio::time::timeout(WAIT, body.data())
            .await
            .expect("body in time")
        {
            got.extend_from_slice(&chunk.expect("data"));
        }
        assert_eq!(got, b"hello");
    }
}

/// An RFC 8441 WebSocket handshake on `/echo`, with `extra` fields.
fn ws_connect(extra: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder()
        .method("CONNECT")
        .uri("http://localhost/echo")
        .header("sec-websocket-version", "13");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).expect("request");
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    req
}

/// The single fields HTTP/1.1's scanner refuses twice (`server::smuggle`)
/// are refused twice over HTTP/2 too, on their stream: the origin allow-list
/// would read the first `Origin` while the upstream could read the other.
#[tokio::test]
async fn repeated_single_fields_of_an_http2_handshake_get_400() {
    let gw = TestGateway::start(
        &Cfg::new()
            .listener_plain()
            .route(
                common::cfg::Route::app("/echo", "echo")
                    .set("origins", vec!["https://good.example"]),
            )
            .build(),
    )
    .await;
    let mut c = h2c(gw.http()).await;
    let good = ("origin", "https://good.example");
    for extra in [
        vec![good, ("origin", "https://evil.example")],
        vec![good, ("sec-websocket-version", "13")],
        vec![
            good,
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-key", "AQIDBAUGBwgJCgsMDQ4PEA=="),
        ],
    ] {
        let (status, text) = c.get(ws_connect(&extra)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra:?}: {text}");
        assert!(text.contains("more than one"), "{text}");
    }
    let (resp, _stream) = c.start(ws_connect(&[good]), true).await;
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("answered in time")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!c.conn.is_finished(), "the connection ended");
}

/// An HTTP/2 WebSocket whose client keeps the stream's window shut while it
/// sends held its session (and connection slot) until the app's idle
/// timeout, minutes: the echo's writes waited for window, which the
/// socket's timer does not see. `send_timeout` now times those writes, and
/// the session ends.
#[tokio::test]
async fn an_http2_websocket_whose_window_stays_shut_ends_after_send_timeout() {
    let gw = TestGateway::start(
        &Cfg::new()
            .set("server.send_timeout", "300ms")
            .admin()
            .listener_plain()
            .route(common::cfg::Route::app("/echo", "echo"))
            .build(),
    )
    .await;
    let tcp = TcpStream::connect(gw.http()).await.expect("connect");
    let (mut send, conn) = ::h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let (resp, mut out) = send
        .send_request(ws_connect(&[]), false)
        .expect("request sent");
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("answered in time")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let sessions = |n: u32| {
        let admin = gw.admin();
        async move {
            eventually(WAIT, || async {
                common::get(admin, "/metrics")
                    .await
                    .text()
                    .contains(&format!(
                        "wsgate_ws_sessions_active{{route=\"/echo\"}} {n}\n"
                    ))
            })
            .await
        }
    };
    assert!(sessions(1).await, "the session never started");
    // Masked text frames of 1 000 bytes, 600 KB in all: their echoes cannot
    // be sent, and once hyper's queue for them is full the echo's writes wait.
    let mut frame = vec![0x81, 0x80 | 126, 0x03, 0xe8, 1, 2, 3, 4];
    frame.extend((0..1000u32).map(|i| b'a' ^ [1u8, 2, 3, 4][(i % 4) as usize]));
    for _ in 0..600 {
        out.send_data(Bytes::from(frame.clone()), false)
            .expect("sent");
    }
    assert!(
        sessions(0).await,
        "the session ends in time, not at the app's idle timeout"
    );
}

/// An upstream's refusal of an RFC 8441 WebSocket reaches the HTTP/2 client
/// with its body; a 2xx cannot (it would tell the client the tunnel is
/// open), so it is a 502. Neither counts against the server: after more
/// of them than `max_fails`, a 404 is still relayed, not a 502 for a pool
/// marked down.
#[tokio::test]
async fn an_upstreams_refusal_of_an_http2_websocket_is_relayed_unless_it_is_a_2xx() {
    let refuses = canned_upstream(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope").await;
    let gw = proxy_gateway(refuses).await;
    let mut c = h2c(gw.http()).await;
    for _ in 0..4 {
        let (resp, _stream) = c.start(ws_connect(&[]), true).await;
        let (status, body) = response(resp).await;
        assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, "nope"));
    }
    let page = canned_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npage").await;
    let gw = proxy_gateway(page).await;
    let mut c = h2c(gw.http()).await;
    for _ in 0..4 {
        let (resp, _stream) = c.start(ws_connect(&[]), true).await;
        let (status, body) = response(resp).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains("200 OK instead of 101"), "{body}");
    }
}
