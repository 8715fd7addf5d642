//! Hardening, round 4 (a second black-box probe): what one client can make
//! the gateway itself run short of (a real `wsgate` process with a small
//! descriptor limit), and reload errors that name their key. Every wait is
//! bounded.

use crate::common;

use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use common::process::WsgateProc;
use common::redis::free_ports;
use common::*;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;

/// Out of descriptors, a connect to a server fails here, not there: the
/// request gets 503 (a full node), and the server is not marked down by
/// passive health (which would turn every later request into a 502 "no
/// upstream server is available" until `fail_timeout` passed).
#[tokio::test]
async fn a_gateway_out_of_sockets_answers_503_and_keeps_its_servers_up() {
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let api = http_upstream(move |_req| {
        let mut open = open_rx.clone();
        async move {
            let _ = open.wait_for(|o| *o).await;
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    let [port] = free_ports();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wsgate.toml");
    let cfg = Cfg::new()
        .set("log.access_log", false)
        .listener(Listener::at(addr))
        .upstream("api", &[api])
        .set("upstream.api.max_fails", 1)
        .set("upstream.api.fail_timeout", "60s")
        .route_upstream("/", "api");
    std::fs::write(&path, cfg.build()).expect("write config");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 48 && exec \"$0\" -c \"$1\"")
        .arg(env!("CARGO_BIN_EXE_wsgate"))
        .arg(&path)
        .stdout(std::process::Stdio::null());
    let mut gw = WsgateProc::spawn(cmd);
    gw.wait_for("listening", WAIT);

    // One HTTP/2 connection, many streams: each needs a connection to the
    // server, and the held ones keep theirs.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut h2 = common::h2::handshake(tcp).await;
    let mut answers = FuturesUnordered::new();
    for i in 0..100 {
        let req = Request::get(format!("http://localhost/x{i}"))
            .body(())
            .expect("request");
        let (resp, _) = h2.start(req, false).await;
        answers.push(async move {
            let resp = resp.await.expect("a response");
            let status = resp.status();
            let mut body = resp.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("body");
                let _ = body.flow_control().release_capacity(chunk.len());
                text.extend_from_slice(&chunk);
            }
            (status, String::from_utf8_lossy(&text).into_owned())
        });
    }
    let (mut ok, mut full) = (0, 0);
    let all = async {
        while let Some((status, text)) = answers.next().await {
            match status {
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(text.contains("out of connections"), "{text}");
                    full += 1;
                    // The held streams may go once the shortage has shown.
                    let _ = open_tx.send(true);
                }
                StatusCode::OK => ok += 1,
                other => panic!("{other}: {text}"),
            }
        }
    };
    tokio::time::timeout(WAIT, all)
        .await
        .expect("every stream answered in time");
    assert!(full > 0 && ok > 0, "{ok} answered, {full} refused");
    // The server was never down: a request now reaches it.
    let (status, text) = h2
        .get(
            Request::get("http://localhost/after")
                .body(())
                .expect("request"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    drop(gw);
}

/// A reload whose new address is taken is refused, naming the key and its
/// line (as `wsgate check` does), and the running gateway goes on under its
/// old config: the admin address was bound after the swap, so a taken one
/// was refused with the rest of the new config already in service.
#[tokio::test]
async fn a_reload_that_cannot_bind_names_the_key() {
    let base = || {
        Cfg::new()
            .set("log.access_log", false)
            .listener_plain()
            .route_app("/echo", "echo")
    };
    let gw = TestGateway::start(&base().build()).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let taken_at = format!("127.0.0.1:{port}");
    let with_admin = base()
        .route_app("/new", "echo")
        .set("admin.addr", taken_at.as_str())
        .build();
    let with_listener = format!(
        "{}[[listener]]\naddr = \"{taken_at}\"\n",
        base().route_app("/new", "echo").build()
    );
    for text in [with_admin, with_listener] {
        let cfg =
            wsgate::config::parse(std::path::Path::new("reload.toml"), &text).expect("config");
        let e = gw
            .handle
            .reload(cfg)
            .await
            .expect_err("the reload is refused")
            .to_string();
        let line = text
            .lines()
            .position(|l| l.contains(&taken_at))
            .expect("the address's line")
            + 1;
        assert!(
            e.starts_with(&format!("reload.toml:{line}:"))
                && e.contains("addr: cannot bind 127.0.0.1:"),
            "{e}"
        );
        let r = get(gw.http(), "/echo").await;
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED, "{}", r.text());
        let r = get(gw.http(), "/new").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "not swapped in");
    }
}

/// Over HTTP/2 each WebSocket session counts as a connection against the
/// caps (nginx counts each concurrent HTTP/2 request as one): one connection
/// could otherwise hold 128 sessions where `max_connections_per_ip` allows 3.
#[tokio::test]
async fn http2_websocket_sessions_count_against_the_connection_caps() {
    let cfg = Cfg::new()
        .set("log.access_log", false)
        .set("server.max_connections_per_ip", 3)
        .listener_plain()
        .route_app("/echo", "echo");
    let gw = TestGateway::start(&cfg.build()).await;
    let tcp = tokio::net::TcpStream::connect(gw.http())
        .await
        .expect("connect");
    let (tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let open = |mut tx: hyper::client::conn::http2::SendRequest<Full<Bytes>>| async move {
        let mut req = Request::builder()
            .method("CONNECT")
            .uri("http://localhost/echo")
            .header("sec-websocket-version", "13")
            .body(Full::new(Bytes::new()))
            .expect("request");
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let resp = tokio::time::timeout(WAIT, tx.send_request(req))
            .await
            .expect("answered in time")
            .expect("a response");
        (resp.status(), resp)
    };
    // The connection holds one slot, each session one more.
    let mut held = Vec::new();
    for _ in 0..2 {
        let (status, mut resp) = open(tx.clone()).await;
        assert_eq!(status, StatusCode::OK);
        held.push(hyper::upgrade::on(&mut resp).await.expect("upgraded"));
    }
    let (status, resp) = open(tx.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");
    // A session that ends gives its slot back.
    drop(held.pop());
    let again = eventually(WAIT, || {
        let tx = tx.clone();
        async move { open(tx).await.0 == StatusCode::OK }
    })
    .await;
    assert!(again, "the ended session's slot was not given back");
}

/// A server that stops sending mid-body: after `response_timeout` with
/// nothing read (nginx's `proxy_read_timeout`), the client's response ends
/// unfinished (no last chunk) and the server's place is given back. Before,
/// both waited for as long as the client did.
#[tokio::test]
async fn an_upstream_body_that_stalls_ends_after_the_response_timeout() {
    // The head and one chunk, then nothing more on that connection.
    let stalls = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let up = upstreams::canned_upstream(stalls).await;
    let gw = TestGateway::start(
        &Cfg::new()
            .listener_plain()
            .upstream("api", &[up])
            .set("upstream.api.response_timeout", "1s")
            .set("upstream.api.max_conns", 1)
            .route_upstream("/", "api")
            .admin()
            .build(),
    )
    .await;
    let req = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let answer = raw::raw(gw.http(), req, WAIT).await;
    assert!(
        answer.closed(),
        "the response never ended: {}",
        answer.text()
    );
    let text = answer.text();
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("hello"),
        "{text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a stalled body must not look complete: {text}"
    );
    // Its place (max_conns = 1) is free again.
    let inflight = || async {
        let status = json_of(&get(gw.admin(), "/status").await);
        status["upstreams"]["api"]["servers"][0]["inflight"] == 0
    };
    assert!(eventually(WAIT, inflight).await);
}

/// RFC 9112 §9.5: an upstream that refuses an upload before its body is in
/// has answered; the client gets that answer at once, not after sending a
/// body nobody reads (or never, if it waits for the answer first).
#[tokio::test]
async fn an_upstream_refusing_an_upload_early_is_answered_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let refuses = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo much";
    let up = upstreams::canned_upstream(refuses).await;
    let gw = TestGateway::start(
        &Cfg::new()
            .listener_plain()
            .upstream("api", &[up])
            .route_upstream("/", "api")
            .build(),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.http())
        .await
        .expect("connect");
    let head = b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 104857600\r\n\r\n";
    s.write_all(head).await.expect("head");
    // A first part of the body, then the client waits for an answer.
    s.write_all(&[0u8; 64 * 1024]).await.expect("body");
    let answer = raw::read_head(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let mut body = [0u8; 8];
    tokio::time::timeout(WAIT, s.read_exact(&mut body))
        .await
        .expect("the answer's body hung")
        .expect("the answer's body");
    assert_eq!(&body, b"too much");
}

/// What is refused before any route is chosen still shows (probe 11): a
/// connection over a cap, a malformed or oversized head, a smuggling shape
/// (answered requests, `wsgate_http_requests_total{route="-"}`), and a
/// failed TLS handshake (`wsgate_tls_handshake_failures_total`); every
/// connection is in `wsgate_connections_accepted_total`.
#[tokio::test]
async fn refusals_before_routing_are_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = write_cert(dir.path(), "default", &["localhost"]);
    let toml = Cfg::new()
        .set("server.max_connections_per_ip", 2)
        .set("log.access_log", false)
        .admin()
        .listener_plain()
        .listener_tls(cert, key)
        .route_app("/echo", "echo")
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;
    let answer = |bytes: &'static [u8], addr: SocketAddr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let http = gw.http();
    let bad = answer(b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", http).await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let smuggled = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let r = answer(smuggled, http).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let huge: &'static [u8] = Box::leak(
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70_000)
        )
        .into_boxed_str(),
    )
    .as_bytes();
    let r = answer(huge, http).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // Two connections held, the third from the address is over its cap.
    let _held = [
        tokio::net::TcpStream::connect(http).await.expect("connect"),
        tokio::net::TcpStream::connect(http).await.expect("connect"),
    ];
    let over = answer(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", http).await;
    assert!(over.starts_with("HTTP/1.1 429"), "{over}");
    drop(_held);
    // Plain text to the TLS port: a failed handshake; a bare connect (a TCP
    // health check) counted apart.
    let _ = answer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", gw.https()).await;
    drop(
        tokio::net::TcpStream::connect(gw.https())
            .await
            .expect("connect"),
    );
    let admin = gw.admin();
    let accepted = |addr: SocketAddr, n: usize| {
        format!("wsgate_connections_accepted_total{{listener=\"{addr}\"}} {n}")
    };
    let wants = [
        "wsgate_http_requests_total{route=\"-\",status=\"400\"} 2".to_string(),
        "wsgate_http_requests_total{route=\"-\",status=\"431\"} 1".to_string(),
        "wsgate_http_requests_total{route=\"-\",status=\"429\"} 1".to_string(),
        "wsgate_tls_handshake_failures_total{reason=\"error\"} 1".to_string(),
        "wsgate_tls_handshake_failures_total{reason=\"eof\"} 1".to_string(),
        // Every connection made above, refused or not.
        accepted(http, 6),
        accepted(gw.https(), 2),
    ];
    let wants = &wants;
    let shown = eventually(WAIT, || async move {
        let m = get(admin, "/metrics").await.text();
        wants.iter().all(|w| m.contains(w.as_str()))
    })
    .await;
    assert!(shown, "{}", get(admin, "/metrics").await.text());
}

/// Transfer codings other than one `chunked` are refused before any route
/// (probe 13: `gzip, chunked` reached the upstream as a plain body, its
/// coding dropped): 501 for another coding, 400 for `chunked` twice.
#[tokio::test]
async fn transfer_codings_other_than_one_chunked_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstreams::canned_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let toml = Cfg::new()
        .set("log.access_log", false)
        .listener_plain()
        .upstream("api", &[up])
        .route_upstream("/", "api")
        .build();
    let gw = TestGateway::start(&toml).await;
    for (te, want) in [
        ("chunked", "HTTP/1.1 200"),
        ("gzip, chunked", "HTTP/1.1 501"),
        ("chunked, chunked", "HTTP/1.1 400"),
        ("identity\r\nTransfer-Encoding: chunked", "HTTP/1.1 501"),
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.http())
            .await
            .expect("connect");
        let req = format!(
            "POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: {te}\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with(want), "{te}: {out}");
    }
}

/// The gateway answers `Expect: 100-continue` itself; the upstream is not
/// asked again (probe 13; nginx drops it too).
#[tokio::test]
async fn expect_100_continue_is_answered_here_and_not_forwarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstreams::http_upstream(|req| async move {
        let expect = req.headers().contains_key("expect");
        Response::new(Full::new(Bytes::from(format!("expect={expect}"))))
    })
    .await;
    let toml = Cfg::new()
        .set("log.access_log", false)
        .listener_plain()
        .upstream("api", &[up])
        .route_upstream("/", "api")
        .build();
    let gw = TestGateway::start(&toml).await;
    let mut s = tokio::net::TcpStream::connect(gw.http())
        .await
        .expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .await
        .expect("write");
    let mut interim = [0u8; 25];
    tokio::time::timeout(WAIT, s.read_exact(&mut interim))
        .await
        .expect("100 in time")
        .expect("read");
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue"), "{interim:?}");
    s.write_all(b"abc").await.expect("body");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("200 OK") && out.ends_with("expect=false"),
        "{out}"
    );
}
