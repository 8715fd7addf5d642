//! Hardening, round 3 (a black-box review): a request path is routed as an
//! upstream will read it (dot-segments refused, empty segments merged), and
//! what other proxies and CDNs say about a client is not believed from the
//! client itself. Real sockets; every wait is bounded.

use crate::common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

/// An upstream answering `NAME PATH`, and the request's fields as
/// `seen-NAME` headers.
async fn reporting_upstream(name: &'static str) -> SocketAddr {
    http_upstream(move |req: Request<Incoming>| async move {
        let mut b = Response::builder();
        for (k, v) in req.headers() {
            b = b.header(format!("seen-{k}"), v.clone());
        }
        let body = format!("{name} {}", req.uri().path());
        b.body(Full::new(Bytes::from(body))).expect("response")
    })
    .await
}

async fn gateway() -> TestGateway {
    let open = reporting_upstream("open").await;
    let admin = reporting_upstream("admin").await;
    let cars = reporting_upstream("cars").await;
    let cfg = Cfg::new()
        .listener_plain()
        .upstream("open", &[open])
        .upstream("admin", &[admin])
        .upstream("cars", &[cars])
        .route_upstream("/", "open")
        .route_upstream("/admin/", "admin")
        .route_upstream("/cars", "cars");
    TestGateway::start(&cfg.build()).await
}

/// `GET path` on a connection of its own, closed after the answer.
async fn get_raw(addr: SocketAddr, path: &str) -> Raw {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    raw(addr, req.as_bytes(), WAIT).await
}

/// Asserts that `r` is a 400 whose body gives `reason`; `what` names the case.
fn refused(r: &Raw, what: &str, reason: &str) {
    assert_eq!(
        r.status_line(),
        "HTTP/1.1 400 Bad Request",
        "{what}: {}",
        r.text()
    );
    assert!(r.text().contains(reason), "{what}: {}", r.text());
}

#[tokio::test]
async fn a_path_with_a_dot_segment_is_refused_however_it_is_written() {
    let gw = gateway().await;
    for path in [
        "/open/../admin/x",
        "/open/./x",
        "/open/%2e%2e/admin/x",
        "/open/%2E./admin/x",
        "/open%2f..%2fadmin/x",
        "/open/..;/admin/x",
        "/..",
    ] {
        refused(&get_raw(gw.http(), path).await, path, "\"..\" segment");
    }
    let r = get_raw(gw.http(), "/open\\..\\admin/x").await;
    assert_eq!(r.status_line(), "HTTP/1.1 400 Bad Request", "{}", r.text());
    // An escape made by decoding (`%%32e` is `%2e` once decoded): refused as
    // the invalid escape it starts with.
    let path = "/open/%%32e%%32e/admin/x";
    refused(&get_raw(gw.http(), path).await, path, "not an escape");
    // Dots inside a segment are ordinary.
    let r = get_raw(gw.http(), "/open/a..b/.well-known/x.y").await;
    assert!(r.status_line().contains(" 200 "), "{}", r.text());
    assert!(
        r.text().ends_with("open /open/a..b/.well-known/x.y"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn paths_are_normalized_before_routing_and_forwarding() {
    let gw = gateway().await;
    // Routed by `/` as sent, an upstream that merges slashes would serve
    // `/admin/x` for a request no `/admin/` route saw.
    let r = get_raw(gw.http(), "//admin//x?q=1").await;
    assert!(r.status_line().contains(" 200 "), "{}", r.text());
    assert!(r.text().ends_with("admin /admin/x"), "{}", r.text());
    // The same path, spelled with an escape (RFC 3986 §6.2.2.2).
    let r = get_raw(gw.http(), "/%61dmin/x").await;
    assert!(r.text().ends_with("admin /admin/x"), "{}", r.text());
}

#[tokio::test]
async fn an_escaped_slash_that_would_change_the_route_is_refused() {
    let gw = gateway().await;
    // Routed by `/` as sent; an upstream that decodes `%2F` serves
    // `/admin/x`, which only the `/admin/` route may.
    // So does one that drops `;parameters` (Tomcat reads `/admin;x/y` as
    // `/admin/y`).
    for path in [
        "/admin%2fx",
        "/admin%2F%2Fx",
        "/admin%5Cx",
        "/%2Fadmin/x",
        "/admin;x/y",
    ] {
        refused(&get_raw(gw.http(), path).await, path, "changes its route");
    }
    // Where both readings take the same route, the escape is data and
    // reaches the upstream as sent.
    for (path, served) in [
        ("/projects/a%2Fb", "open /projects/a%2Fb"),
        ("/admin/a%2Fb", "admin /admin/a%2Fb"),
        ("/admin/page;jsessionid=1", "admin /admin/page;jsessionid=1"),
        // Tomcat's `encodeURL("/cars")`: the parameter ends the segment.
        ("/cars;jsessionid=1", "cars /cars;jsessionid=1"),
    ] {
        let r = get_raw(gw.http(), path).await;
        assert!(r.status_line().contains(" 200 "), "{path}: {}", r.text());
        assert!(r.text().ends_with(served), "{path}: {}", r.text());
    }
}

#[tokio::test]
async fn other_proxies_client_fields_are_not_believed_from_a_client() {
    let gw = gateway().await;
    let r = get_with(
        gw.http(),
        "/x",
        &[
            ("true-client-ip", "10.9.9.9"),
            ("cf-connecting-ip", "10.9.9.9"),
            ("x-client-ip", "10.9.9.9"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-port", "443"),
            ("x-kept", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for claim in [
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "x-forwarded-ssl",
        "x-forwarded-port",
    ] {
        let seen = format!("seen-{claim}");
        assert!(
            !r.headers.contains_key(&seen),
            "{claim} reached the upstream"
        );
    }
    assert_eq!(r.headers["seen-x-kept"], "1");
    assert_eq!(r.headers["seen-x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn a_host_that_is_not_a_host_and_port_is_refused() {
    let gw = gateway().await;
    for host in ["a b c", "[::1", "localhost:99999999999", "user@host"] {
        let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = raw(gw.http(), req.as_bytes(), WAIT).await;
        refused(&r, host, "not a valid host[:port]");
    }
    let r = raw(
        gw.http(),
        b"GET /x HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(r.status_line().contains(" 200 "), "{}", r.text());
}

#[tokio::test]
async fn a_websocket_handshake_with_a_body_is_refused() {
    let cfg = Cfg::new().listener_plain().route_app("/echo", "echo");
    let gw = TestGateway::start(&cfg.build()).await;
    // `close` beside `Upgrade`: the answer's connection ends, so the read
    // ends with it.
    for (framing, body) in [
        ("Content-Length: 4\r\n", "abcd"),
        ("Transfer-Encoding: chunked\r\n", "0\r\n\r\n"),
    ] {
        let req = format!(
            "GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{framing}\r\n{body}"
        );
        let r = raw(gw.http(), req.as_bytes(), WAIT).await;
        refused(&r, framing, "carries no body");
    }
}

/// Opens a WebSocket to the echo app offering `extensions`; returns the
/// stream after the 101 and the 101's head.
async fn echo_offering(addr: SocketAddr, extensions: &str) -> (tokio::net::TcpStream, String) {
    use common::raw::{handshake, read_head, WS_HEADERS};
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = handshake(
        "/echo",
        &format!("{WS_HEADERS}Sec-WebSocket-Extensions: {extensions}\r\n"),
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, head.to_ascii_lowercase())
}

#[tokio::test]
async fn deflate_offers_are_taken_only_when_valid_and_answerable() {
    let cfg = Cfg::new().listener_plain().route_app("/echo", "echo");
    let gw = TestGateway::start(&cfg.build()).await;
    let (_, head) = echo_offering(gw.http(), "permessage-deflate; server_max_window_bits=10").await;
    assert!(
        head.contains("permessage-deflate; server_max_window_bits=10"),
        "{head}"
    );
    for declined in [
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=11",
        "permessage-deflate; client_max_window_bits=99",
    ] {
        let (_, head) = echo_offering(gw.http(), declined).await;
        assert!(
            !head.contains("sec-websocket-extensions"),
            "{declined}: {head}"
        );
    }
}

#[tokio::test]
async fn a_compressed_message_that_does_not_inflate_is_closed_with_a_reason() {
    use common::raw::{frame, MASK};
    use tokio::io::AsyncWriteExt;
    let cfg = Cfg::new().listener_plain().route_app("/echo", "echo");
    let gw = TestGateway::start(&cfg.build()).await;
    let (mut s, head) = echo_offering(gw.http(), "permessage-deflate").await;
    assert!(head.contains("permessage-deflate"), "{head}");
    let mut f = frame(true, 2, &[0xff; 5], MASK);
    f[0] |= 0x40; // RSV1: compressed
    s.write_all(&f).await.expect("write");
    // yawc's code (it queues its close before the session sees the error);
    // the reason says what happened.
    let (_, op, p) = common::raw::read_server_frame(&mut s).await;
    assert_eq!(op, 8, "a close frame");
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1011);
    assert!(
        String::from_utf8_lossy(&p[2..]).contains("corrupt deflate"),
        "{p:?}"
    );
}

#[tokio::test]
async fn a_malformed_or_oversized_head_is_answered_with_its_reason() {
    let cfg = Cfg::new()
        .listener_plain()
        .set("server.max_request_head", "8KiB")
        .route_app("/echo", "echo");
    let gw = TestGateway::start(&cfg.build()).await;
    let long = "x".repeat(9000);
    for (head, status, reason) in [
        (
            "GET /echo HTTP/1.1\r\nHost: localhost\r\nX-A: a\u{1}b\r\n\r\n".to_string(),
            "HTTP/1.1 400 Bad Request",
            "invalid header value",
        ),
        (
            "GET /echo HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n".to_string(),
            "HTTP/1.1 400 Bad Request",
            "invalid header name",
        ),
        (
            format!("GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Long: {long}\r\n\r\n"),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "larger than server.max_request_head",
        ),
    ] {
        let r = raw(gw.http(), head.as_bytes(), WAIT).await;
        assert_eq!(r.status_line(), status, "{}", r.text());
        assert!(r.text().contains(reason), "{}", r.text());
        assert!(r.closed(), "the connection closes after the refusal");
    }
}

#[tokio::test]
async fn a_chat_session_records_its_close_code() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    let cfg = Cfg::new()
        .listener_plain()
        .admin()
        .route_app("/chat", "chat");
    let gw = TestGateway::start(&cfg.build()).await;
    let mut c = common::chat::Client::new(gw.http(), "alice").await;
    c.ws.close(Some(CloseFrame {
        code: CloseCode::from(4321),
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    while c.ws.next().await.is_some() {}
    let want = "wsgate_ws_close_codes_total{route=\"/chat\",code=\"4xxx\"} 1";
    let admin = gw.admin();
    let seen = eventually(WAIT, || async move {
        get(admin, "/metrics").await.text().contains(want)
    })
    .await;
    assert!(seen, "{want} missing from /metrics");
}
