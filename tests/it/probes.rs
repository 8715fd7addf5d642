//! Defects an outside probe found (issue 22), each pinned over real sockets:
//! a client's broken body is the client's fault, not the upstream's; error
//! bodies name no internal address; TLS connections speak only the protocol
//! ALPN chose; a 101 to a non-WebSocket request never reaches the client.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::cfg::Cfg;
use common::raw::raw;
use common::tls::tls_client;
use common::upstreams::{dead_addr, http_upstream};
use common::{get, write_cert, TestGateway};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// An upstream that reads the whole request body, then answers 200 "ok".
async fn reading_upstream() -> std::net::SocketAddr {
    http_upstream(|req| async move {
        let _ = req.into_body().collect().await;
        Response::new(Full::new(Bytes::from_static(b"ok")))
    })
    .await
}

fn one_server(up: std::net::SocketAddr) -> String {
    Cfg::new()
        .listener_plain()
        .upstream("api", &[up])
        .set("upstream.api.max_fails", 1)
        .set("upstream.api.fail_timeout", "60s")
        .route_upstream("/", "api")
        .build()
}

#[tokio::test]
async fn a_clients_broken_body_never_takes_the_upstream_down() {
    let gw = TestGateway::start(&one_server(reading_upstream().await)).await;
    // A malformed chunk size: 400, the client's fault.
    for _ in 0..3 {
        let r = raw(
            gw.http(),
            b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
            WAIT,
        )
        .await;
        assert!(r.answer().starts_with("HTTP/1.1 400"), "{}", r.text());
    }
    // A client that promises 100 bytes, sends 3 and goes away.
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.http()).await.expect("connect");
        s.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
            .await
            .expect("write");
        s.shutdown().await.expect("half-close");
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut sink))
            .await
            .expect("the gateway closes the aborted request");
    }
    // With max_fails = 1, one upstream failure would have marked the only
    // server down (502 "no upstream server is available").
    let r = get(gw.http(), "/after").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "ok");
}

#[tokio::test]
async fn upstream_errors_name_no_internal_address() {
    let dead = dead_addr().await;
    let gw = TestGateway::start(&one_server(dead)).await;
    let r = get(gw.http(), "/x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let body = r.text();
    assert_eq!(body, "upstream server unavailable\n");
    assert!(!body.contains(&dead.port().to_string()), "{body}");
    assert!(!body.contains("127.0.0.1"), "{body}");
}

#[tokio::test]
async fn a_101_to_a_plain_request_becomes_502() {
    // An upstream that switches protocols whatever it is asked.
    let up = http_upstream(|_req| async move {
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "h2c")
            .header("connection", "upgrade")
            .body(Full::new(Bytes::new()))
            .expect("response")
    })
    .await;
    let gw = TestGateway::start(&one_server(up)).await;
    let r = raw(
        gw.http(),
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
        WAIT,
    )
    .await;
    let answer = r.answer();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(!answer.contains(" 101 "), "{answer}");
}

/// A TLS gateway with one route answered by the gateway itself.
async fn tls_gateway() -> (TestGateway, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = write_cert(dir.path(), "localhost", &["localhost"]);
    let toml = Cfg::new()
        .listener_tls(&cert, &key)
        .route_app("/echo", "echo")
        .build();
    (TestGateway::start_in(&toml, dir).await, cert)
}

async fn tls_with_alpn(
    gw: &TestGateway,
    ca: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = tls_client(ca, &[alpn]);
    let tcp = TcpStream::connect(gw.https()).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(alpn));
    s
}

async fn read_some(s: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        Ok(Err(_)) => Vec::new(),
        Err(_) => panic!("no answer and no close within {WAIT:?}: the gateway hung"),
    }
}

#[tokio::test]
async fn alpn_h2_connections_speak_only_http2() {
    let (gw, ca) = tls_gateway().await;
    let mut s = tls_with_alpn(&gw, &ca, b"h2").await;
    s.write_all(b"GET /echo HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let got = read_some(&mut s).await;
    assert!(
        !got.starts_with(b"HTTP/1.1"),
        "an h2 connection answered HTTP/1.1: {:?}",
        String::from_utf8_lossy(&got)
    );
    // Whatever h2 sent (its SETTINGS, a GOAWAY), the connection ends.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the connection was not closed");
}

#[tokio::test]
async fn alpn_http11_connections_never_answer_an_http2_preface() {
    let (gw, ca) = tls_gateway().await;
    let mut s = tls_with_alpn(&gw, &ca, b"http/1.1").await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("write");
    let got = read_some(&mut s).await;
    // An HTTP/2 SETTINGS frame starts with a 3-byte length and type 4.
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 "),
        "an http/1.1 connection answered the HTTP/2 preface: {got:?}"
    );
}

#[tokio::test]
async fn an_http2_request_with_two_hosts_is_refused() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = hits.clone();
    let up = http_upstream(move |_req| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { Response::new(Full::new(Bytes::from_static(b"ok"))) }
    })
    .await;
    let gw = TestGateway::start(&one_server(up)).await;
    let tcp = TcpStream::connect(gw.http()).await.expect("connect");
    let req = http::Request::get("http://a.test/x")
        .header("host", "a.test")
        .header("host", "evil.example")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = common::tls::send_h2(tcp, req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
