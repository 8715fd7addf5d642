//! WebSocket over real sockets: the handshake matrix, the echo app with a real
//! client and with raw frames, splicing through ws, wss and HTTP/2 (RFC 8441),
//! and connection caps (the splice's own cases: `splice`).

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::raw::{expect_close, frame, handshake, open_ws, read_server_frame, MASK, WS_HEADERS};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, Role};
use tokio_tungstenite::tungstenite::Message;

/// A plain listener with the echo app at `/echo` (64 KiB messages).
fn echo() -> Cfg {
    Cfg::new()
        .listener_plain()
        .route_app("/echo", "echo")
        .set("app.echo.max_message_size", "64KiB")
}

/// The answer to a raw request (waiting 700 ms for more, or the close).
pub(crate) async fn status_of(addr: std::net::SocketAddr, req: &str) -> String {
    raw(addr, req.as_bytes(), Duration::from_millis(700))
        .await
        .answer()
}

#[tokio::test]
async fn handshake_matrix() {
    let toml = echo()
        .route(Route::app("/nows", "echo").set("websocket", false))
        .route(Route::app("/strict", "echo").set("origins", vec!["https://good.example"]))
        .build();
    let gw = TestGateway::start(&toml).await;
    let a = gw.http();
    let cases: Vec<(String, &str, &str)> = vec![
        (handshake("/echo", WS_HEADERS), "HTTP/1.1 101", "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        // Header case and Connection token lists do not matter.
        (
            handshake("/echo", "connection: keep-alive, UPGRADE\r\nupgrade: WebSocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            "HTTP/1.1 101",
            "upgrade",
        ),
        (handshake("/echo", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"), "HTTP/1.1 400", "missing Sec-WebSocket-Key"),
        (handshake("/echo", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"), "HTTP/1.1 400", "exactly 16 bytes"),
        (handshake("/echo", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n"), "HTTP/1.1 400", "exactly 16 bytes"),
        (handshake("/echo", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), "HTTP/1.1 426", "sec-websocket-version: 13"),
        (handshake("/echo", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), "HTTP/1.1 426", "only 13"),
        (handshake("/echo", "Connection: keep-alive\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), "HTTP/1.1 400", "Connection header"),
        (format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n{WS_HEADERS}\r\n"), "HTTP/1.1 405", "must use GET"),
        (format!("GET /echo HTTP/1.0\r\nHost: localhost\r\n{WS_HEADERS}\r\n"), "HTTP/1.0 400", "HTTP/1.1 or later"),
        (format!("GET /echo HTTP/1.1\r\n{WS_HEADERS}\r\n"), "HTTP/1.1 400", "missing Host"),
        (handshake("/nows", WS_HEADERS), "HTTP/1.1 403", "disabled"),
        (handshake("/strict", &format!("{WS_HEADERS}Origin: https://evil.example\r\n")), "HTTP/1.1 403", "not allowed"),
        (handshake("/strict", WS_HEADERS), "HTTP/1.1 403", "not allowed"),
        (handshake("/strict", &format!("{WS_HEADERS}Origin: https://good.example\r\n")), "HTTP/1.1 101", "upgrade"),
        (handshake("/echo", ""), "HTTP/1.1 426", "only accepts WebSocket"),
    ];
    for (req, status, needle) in cases {
        let out = status_of(a, &req).await;
        assert!(out.starts_with(status), "{req:?}\n→ {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase()),
            "{req:?}\n→ {out}\n(wanted {needle:?})"
        );
        if !status.ends_with("101") {
            assert!(!out.contains("101 Switching"), "{out}");
        }
    }
}

#[tokio::test]
async fn echo_with_a_real_client() {
    let gw = TestGateway::start(&echo().build()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", gw.http()))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(Bytes::from_static(b"p"))
    );
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Library(4000),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 4000, "the close code is echoed")
        }
        other => panic!("expected close echo, got {other:?}"),
    }
}

/// A raw upgraded connection to /echo.
async fn raw_ws(addr: std::net::SocketAddr) -> TcpStream {
    open_ws(addr, "/echo").await
}

#[tokio::test]
async fn raw_frames_fragmentation_and_protocol_errors() {
    let gw = TestGateway::start(&echo().build()).await;
    // Fragmented text with a ping in between: pong first, then the whole message.
    let mut s = raw_ws(gw.http()).await;
    s.write_all(&frame(false, 1, b"Hel", MASK)).await.unwrap();
    s.write_all(&frame(true, 9, b"mid", MASK)).await.unwrap();
    s.write_all(&frame(true, 0, b"lo", MASK)).await.unwrap();
    assert_eq!(read_server_frame(&mut s).await, (true, 10, b"mid".to_vec()));
    assert_eq!(
        read_server_frame(&mut s).await,
        (true, 1, b"Hello".to_vec())
    );

    // Invalid UTF-8, also split across fragments (a 2-byte sequence cut in half is fine).
    let mut s = raw_ws(gw.http()).await;
    s.write_all(&frame(false, 1, &[0xce], MASK)).await.unwrap();
    s.write_all(&frame(true, 0, &[0xba], MASK)).await.unwrap();
    assert_eq!(
        read_server_frame(&mut s).await,
        (true, 1, "κ".as_bytes().to_vec())
    );
    s.write_all(&frame(false, 1, &[0xce, 0xba], MASK))
        .await
        .unwrap();
    s.write_all(&frame(true, 0, &[0xff, 0xfe], MASK))
        .await
        .unwrap();
    expect_close(&mut s, 1007).await;

    // Unmasked client frame → 1002.
    let mut s = raw_ws(gw.http()).await;
    s.write_all(&frame(true, 1, b"naked", None)).await.unwrap();
    expect_close(&mut s, 1002).await;

    // Reserved bits without an extension → 1002.
    let mut s = raw_ws(gw.http()).await;
    let mut f = frame(true, 1, b"x", MASK);
    f[0] |= 0x40;
    s.write_all(&f).await.unwrap();
    expect_close(&mut s, 1002).await;

    // Fragmented control frame and a >125-byte ping → 1002.
    let mut s = raw_ws(gw.http()).await;
    s.write_all(&frame(false, 9, b"p", MASK)).await.unwrap();
    expect_close(&mut s, 1002).await;
    let mut s = raw_ws(gw.http()).await;
    s.write_all(&frame(true, 9, &[7u8; 126], MASK))
        .await
        .unwrap();
    expect_close(&mut s, 1002).await;

    // Over max_message_size (64 KiB): in one frame, and as a fragmented message.
    let mut s = raw_ws(gw.http()).await;
    s.write_all(&frame(true, 2, &vec![0u8; 64 * 1024 + 1], MASK))
        .await
        .unwrap();
    expect_close(&mut s, 1009).await;
    let mut s = raw_ws(gw.http()).await;
    s.write_all(&frame(false, 2, &vec![0u8; 40 * 1024], MASK))
        .await
        .unwrap();
    s.write_all(&frame(true, 0, &vec![0u8; 40 * 1024], MASK))
        .await
        .unwrap();
    expect_close(&mut s, 1009).await;

    // A header claiming 2^62 bytes is refused from the header alone.
    let mut s = raw_ws(gw.http()).await;
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&huge).await.unwrap();
    expect_close(&mut s, 1009).await;

    // Exactly at the limit is fine.
    let mut s = raw_ws(gw.http()).await;
    s.write_all(&frame(true, 2, &vec![9u8; 64 * 1024], MASK))
        .await
        .unwrap();
    let (fin, op, p) = read_server_frame(&mut s).await;
    assert!(fin && op == 2 && p.len() == 64 * 1024);
}

#[tokio::test]
async fn echo_negotiates_permessage_deflate() {
    // The 101 to a handshake offering permessage-deflate.
    let offer = |addr| async move {
        let ext = "permessage-deflate; client_max_window_bits";
        let req = handshake(
            "/echo",
            &format!("{WS_HEADERS}Sec-WebSocket-Extensions: {ext}\r\n"),
        );
        raw(addr, req.as_bytes(), Duration::from_millis(500))
            .await
            .answer()
    };
    let gw = TestGateway::start(&echo().build()).await;
    let out = offer(gw.http()).await;
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{out}"
    );
    let gw2 = TestGateway::start(&echo().set("app.echo.compression", false).build()).await;
    let out = offer(gw2.http()).await;
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
    assert!(
        !out.to_ascii_lowercase().contains("permessage-deflate"),
        "{out}"
    );
}

/// Two listeners (the second with TLS when `tls`) and `/ws` spliced to
/// `upstream` with 1 s timeouts.
pub(crate) fn splice(upstream: std::net::SocketAddr, tls: bool) -> Cfg {
    let second = if tls {
        Listener::plain().tls("{dir}/default.crt", "{dir}/default.key")
    } else {
        Listener::plain()
    };
    Cfg::new()
        .listener_plain()
        .listener(second)
        .upstream("ws", &[upstream])
        .set("upstream.ws.connect_timeout", "1s")
        .set("upstream.ws.response_timeout", "1s")
        .route_upstream("/ws", "ws")
}

pub(crate) fn splice_cfg(upstream: std::net::SocketAddr, tls: bool) -> String {
    splice(upstream, tls).build()
}

#[tokio::test]
async fn splices_ws_with_subprotocol_and_forwarded_headers() {
    let up = ws_echo_upstream(Some("chat.v2")).await;
    let gw = TestGateway::start(&splice_cfg(up, false)).await;
    let mut req = format!("ws://{}/ws/room?x=1", gw.http())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "chat.v1, chat.v2".parse().unwrap(),
    );
    req.headers_mut()
        .insert("cookie", "sid=42".parse().unwrap());
    req.headers_mut()
        .insert("origin", "http://app.test".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v2");
    for i in 0..20 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("m{i}"))
        );
    }
    ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![7u8; 100_000])
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn forwarded_headers_reach_the_ws_upstream() {
    // The upstream reflects what it saw as x-seen-* response headers, but the
    // gateway relays only the WebSocket headers of the 101, so look at them via a
    // raw upstream instead.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&head).to_string()
    });
    let gw = TestGateway::start(&splice_cfg(up, false)).await;
    let _ = raw(gw.http(), handshake("/ws/x", &format!("{WS_HEADERS}Cookie: a=b\r\nOrigin: http://o.test\r\nSec-WebSocket-Protocol: p1\r\nX-Forwarded-For: 198.51.100.1\r\n")).as_bytes(), Duration::from_millis(200)).await;
    let head = tokio::time::timeout(WAIT, seen)
        .await
        .expect("the upgrade reached the upstream")
        .unwrap()
        .to_ascii_lowercase();
    for want in [
        "get /ws/x http/1.1",
        "sec-websocket-key: dghlihnhbxbszsbub25jzq==",
        "sec-websocket-version: 13",
        "cookie: a=b",
        "origin: http://o.test",
        "sec-websocket-protocol: p1",
        // Not a trusted proxy: its own X-Forwarded-For is replaced.
        "x-forwarded-for: 127.0.0.1\r\n",
        "x-forwarded-proto: http",
        "x-forwarded-host: localhost",
        "upgrade: websocket",
    ] {
        assert!(
            head.contains(want),
            "missing {want:?} in upstream request:\n{head}"
        );
    }
}

#[tokio::test]
async fn splices_wss() {
    let up = ws_echo_upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = write_cert(dir.path(), "default", &["localhost"]);
    let gw = TestGateway::start_in(&splice_cfg(up, true), dir).await;
    let tls = tls_connect(gw.https(), tls_client(&ca, &[b"http/1.1"]), "localhost").await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
}

/// Opens an RFC 8441 WebSocket over HTTP/2 and returns it as a tungstenite stream.
async fn h2_websocket(
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    uri: &str,
    protocols: Option<&str>,
) -> (
    http::Response<hyper::body::Incoming>,
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
) {
    h2_websocket_as(io, uri, protocols, "websocket").await
}

/// [`h2_websocket`] with `:protocol` spelled `token`.
async fn h2_websocket_as(
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    uri: &str,
    protocols: Option<&str>,
    token: &'static str,
) -> (
    http::Response<hyper::body::Incoming>,
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
) {
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method("CONNECT")
        .uri(uri)
        .header("sec-websocket-version", "13");
    if let Some(p) = protocols {
        b = b.header("sec-websocket-protocol", p);
    }
    let mut req = b.body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static(token));
    let mut resp = tx.send_request(req).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "extended CONNECT answered {}",
        resp.status()
    );
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    (resp, ws)
}

#[tokio::test]
async fn splices_and_serves_echo_over_http2() {
    let up = ws_echo_upstream(Some("v2")).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = write_cert(dir.path(), "default", &["localhost"]);
    let toml = splice(up, true).route_app("/echo", "echo").build();
    let gw = TestGateway::start_in(&toml, dir).await;
    // Spliced to an HTTP/1.1 upstream, subprotocol negotiated end to end.
    let tls = tls_connect(gw.https(), tls_client(&ca, &[b"h2"]), "localhost").await;
    let (resp, mut ws) = h2_websocket(tls, "https://localhost/ws/h2", Some("v1, v2")).await;
    assert_eq!(resp.headers()["sec-websocket-protocol"], "v2");
    ws.send(Message::text("h2 splice")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("h2 splice")
    );
    // The echo app over HTTP/2.
    let tls = tls_connect(gw.https(), tls_client(&ca, &[b"h2"]), "localhost").await;
    let (_, mut ws) = h2_websocket(tls, "https://localhost/echo", None).await;
    ws.send(Message::text("h2 app")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("h2 app"));
    // Upgrade tokens are case-insensitive: the app takes `WebSocket` too.
    let tls = tls_connect(gw.https(), tls_client(&ca, &[b"h2"]), "localhost").await;
    let (_, mut ws) = h2_websocket_as(tls, "https://localhost/echo", None, "WebSocket").await;
    ws.send(Message::text("any case")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("any case"));
}

#[tokio::test]
async fn capacity_503_then_reuse_and_per_ip_429() {
    let gw = TestGateway::start(&echo().set("server.max_connections", 3).build()).await;
    let addr = gw.http();
    let mut held = Vec::new();
    for _ in 0..3 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/echo"))
            .await
            .unwrap();
        held.push(ws);
    }
    let out = status_of(addr, &handshake("/echo", WS_HEADERS)).await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.to_ascii_lowercase().contains("retry-after: 1"), "{out}");
    // Plain HTTP requests are refused the same way.
    assert!(status_of(addr, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 503"));
    // Free one slot: the next handshake succeeds at once.
    let mut one = held.pop().unwrap();
    one.close(None).await.unwrap();
    drop(one);
    assert!(
        eventually(Duration::from_secs(5), || async {
            status_of(addr, &handshake("/echo", WS_HEADERS))
                .await
                .starts_with("HTTP/1.1 101")
        })
        .await,
        "a freed slot should be reusable"
    );

    let gw = TestGateway::start(&echo().set("server.max_connections_per_ip", 2).build()).await;
    let addr = gw.http();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tokio_tungstenite::connect_async(format!("ws://{addr}/echo"))
                .await
                .unwrap()
                .0,
        );
    }
    let out = status_of(addr, &handshake("/echo", WS_HEADERS)).await;
    assert!(out.starts_with("HTTP/1.1 429"), "{out}");
    assert!(out.to_ascii_lowercase().contains("retry-after"), "{out}");
}

/// The echo app's one timer: pings every `ping_interval`, messages keep the
/// session past `idle_timeout`, silence (pongs aside) then closes it with 1001. A raw
/// client, so nothing answers pings behind the test's back.
#[tokio::test]
async fn echo_pings_and_closes_idle_sessions() {
    let toml = Cfg::new()
        .listener_plain()
        .route_app("/echo", "echo")
        .set("app.echo.ping_interval", "100ms")
        .set("app.echo.idle_timeout", "1s")
        .build();
    let gw = TestGateway::start(&toml).await;
    let mut s = raw_ws(gw.http()).await;
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    // 1.5 s of traffic, one message per ping received: past the idle
    // timeout, yet the session stays open because the client keeps talking.
    while started.elapsed() < Duration::from_millis(1500) {
        match read_server_frame(&mut s).await {
            (true, 9, _) => {
                pings += 1;
                s.write_all(&frame(true, 1, b"still here", MASK))
                    .await
                    .unwrap();
            }
            (true, 1, p) => assert_eq!(p, b"still here"),
            other => panic!("session ended while active: {other:?}"),
        }
    }
    assert!(pings >= 5, "{pings} pings in 1.5 s at 100 ms");
    // Silence but for pongs (a browser answers every ping): more pings, then
    // the idle close, within the timeout and a bit. The answers to the
    // session's own pings kept it open for good (review 14).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no idle close");
        match read_server_frame(&mut s).await {
            (true, 9, p) => {
                s.write_all(&frame(true, 10, &p, MASK)).await.unwrap();
            }
            (true, 1, _) => continue,
            (true, 8, p) => {
                assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1001);
                assert_eq!(&p[2..], b"idle timeout");
                break;
            }
            other => panic!("expected an idle close, got {other:?}"),
        }
    }
}
