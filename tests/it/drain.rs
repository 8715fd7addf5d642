//! Paced drains over real sockets: WebSocket sessions (200 echo, 200 chat)
//! are closed with 1012 `reconnect <ms>` spread over `server.drain_window`
//! (the spread is asserted, not exact times), HTTP requests in flight finish,
//! a byte splice stays open until it ends, and
//! `wsgate_drain_closed_total{kind}` counts the closes.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::Message;

const SESSIONS: usize = 200;
const WINDOW: Duration = Duration::from_secs(2);

/// Waits for the session's close frame (skipping other frames): when it
/// came, its code and reason.
async fn close_of<S>(mut ws: S) -> (Instant, u16, String)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time");
        let at = Instant::now();
        match m {
            Some(Ok(Message::Close(Some(f)))) => {
                return (at, u16::from(f.code), f.reason.to_string())
            }
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Every close is 1012 `reconnect <ms>` with a hint within the window, and
/// the closes are spread over the window: first and last at least 40% of
/// it apart, at most 30% of them in its first tenth, none long after it.
fn assert_paced(closes: &[(Instant, u16, String)], started: Instant, what: &str) {
    for (_, code, reason) in closes {
        assert_eq!(*code, 1012, "{reason}");
        let ms = reason
            .strip_prefix("reconnect ")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("reason {reason:?} is not `reconnect <ms>`"));
        assert!(ms <= 2000, "hint {ms} ms outside the window");
    }
    let n = closes.len();
    let mut at: Vec<Duration> = closes.iter().map(|(t, _, _)| *t - started).collect();
    at.sort();
    let (first, last) = (at[0], at[n - 1]);
    let early = at.iter().filter(|t| **t < WINDOW / 10).count();
    eprintln!(
        "drain spread ({what}): {n} sessions, first close {first:?}, last {last:?}, {early} in the first 10% of the {WINDOW:?} window"
    );
    assert!(
        last - first >= WINDOW * 4 / 10,
        "closes within {:?}",
        last - first
    );
    assert!(early <= n * 3 / 10, "{early} closes in the first 10%");
    assert!(
        last < WINDOW + Duration::from_secs(1),
        "last close at {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_paces_200_sessions_over_the_window_and_keeps_splices() {
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let slow = http_upstream(move |_req| {
        let _ = arrived_tx.send(());
        async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Response::new(Full::new(Bytes::from("slow but complete")))
        }
    })
    .await;
    let ws_up = ws_echo_upstream(None).await;
    let toml = Cfg::new()
        .set("server.shutdown_grace", "8s")
        .set("server.drain_window", "2s")
        .set("log.access_log", false)
        .listener_plain()
        .admin()
        .upstream("slow", &[slow])
        .upstream("ws", &[ws_up])
        .route_upstream("/slow", "slow")
        .route_upstream("/ws", "ws")
        .route_app("/echo", "echo")
        .build();
    let gw = TestGateway::start(&toml).await;
    let (http, admin) = (gw.http(), gw.admin());
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/echo"))
            .await
            .expect("connect echo");
        sessions.push(ws);
    }
    let (mut spliced, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws"))
        .await
        .expect("connect splice");
    let inflight = tokio::spawn(async move { get(http, "/slow").await });
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .expect("request reached the upstream");

    let gw = Arc::new(gw);
    let started = Instant::now();
    let drain = tokio::spawn({
        let gw = gw.clone();
        async move { gw.handle.shutdown().await }
    });
    let closes = futures_util::future::join_all(sessions.into_iter().map(close_of)).await;
    assert_paced(&closes, started, "echo");

    // The HTTP request in flight finished.
    let r = inflight.await.expect("request task");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "slow but complete");

    // The byte splice is still open (the drain waits for it) and counted.
    spliced
        .send(Message::text("still here"))
        .await
        .expect("send");
    let echo = tokio::time::timeout(WAIT, spliced.next())
        .await
        .expect("echo in time");
    assert_eq!(
        echo.expect("frame").expect("frame"),
        Message::text("still here")
    );
    assert!(!drain.is_finished(), "drain ended with a splice open");
    let metrics = get(admin, "/metrics").await.text();
    assert!(
        metrics.contains(&format!(
            "wsgate_drain_closed_total{{kind=\"app\"}} {SESSIONS}"
        )),
        "{metrics}"
    );
    spliced.close(None).await.expect("close splice");
    tokio::time::timeout(WAIT, async { while spliced.next().await.is_some() {} })
        .await
        .expect("splice closed");
    drop(spliced);
    let done = tokio::time::timeout(WAIT, drain).await.expect("drain ends");
    assert!(done.expect("drain task"), "drained within the grace");
}

#[test]
fn drain_window_is_checked_against_the_grace_with_its_line() {
    let path = std::path::Path::new("wsgate.toml");
    let text = |w: &str| {
        format!("[server]\nshutdown_grace = \"5s\"\ndrain_window = \"{w}\"\n\n[[listener]]\naddr = \"127.0.0.1:0\"\n")
    };
    let cfg = wsgate::config::parse(path, &text("3s")).expect("valid");
    assert_eq!(cfg.server.drain_window, Duration::from_secs(3));
    let e = wsgate::config::parse(path, &text("6s")).expect_err("longer than the grace");
    assert!(
        e.to_string().starts_with(
            "wsgate.toml:3:16: server.drain_window: 6s is longer than server.shutdown_grace"
        ),
        "{e}"
    );
    let e = wsgate::config::parse(path, &text("soon")).expect_err("not a duration");
    assert!(
        e.to_string()
            .starts_with("wsgate.toml:3:16: server.drain_window: "),
        "{e}"
    );
    // Unset: 10 s, or the grace when that is shorter.
    let short = "[server]\nshutdown_grace = \"1s\"\n\n[[listener]]\naddr = \"127.0.0.1:0\"\n";
    let cfg = wsgate::config::parse(path, short).expect("valid");
    assert_eq!(cfg.server.drain_window, Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_paces_200_chat_sessions_over_the_window() {
    let toml = Cfg::new()
        .set("server.shutdown_grace", "8s")
        .set("server.drain_window", "2s")
        .set("log.access_log", false)
        .listener_plain()
        .admin()
        .route_app("/chat", "chat")
        .build();
    let gw = TestGateway::start(&toml).await;
    let (http, admin) = (gw.http(), gw.admin());
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/chat/ws?user=u{i}"))
            .await
            .expect("connect chat");
        sessions.push(ws);
    }
    // Every session is live before the drain.
    let live = || async move {
        let s = json_of(&get(admin, "/status").await);
        s["sessions"]["/chat"].as_u64() == Some(SESSIONS as u64)
    };
    assert!(
        eventually(WAIT, live).await,
        "{SESSIONS} chat sessions never all live"
    );
    let gw = Arc::new(gw);
    let started = Instant::now();
    let drain = tokio::spawn({
        let gw = gw.clone();
        async move { gw.handle.shutdown().await }
    });
    let closes = futures_util::future::join_all(sessions.into_iter().map(close_of)).await;
    assert_paced(&closes, started, "chat");
    let done = tokio::time::timeout(WAIT, drain).await.expect("drain ends");
    assert!(done.expect("drain task"), "drained within the grace");
}

/// A chat node drained over a 2 s window, with room to spare in its grace.
fn chat_drained() -> String {
    Cfg::new()
        .set("server.shutdown_grace", "8s")
        .set("server.drain_window", "2s")
        .set("log.access_log", false)
        .listener_plain()
        .route_app("/chat", "chat")
        .build()
}

/// A drain ends chat SSE streams spread over the window too, each with a
/// last `retry: <ms>` within it, so that browsers reconnect spread out
/// instead of all together after the same `retry: 2000`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_paces_sse_streams_over_the_window() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const STREAMS: usize = 40;
    let toml = chat_drained();
    let gw = TestGateway::start(&toml).await;
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let mut s = tokio::net::TcpStream::connect(gw.http())
            .await
            .expect("connect");
        let req =
            format!("GET /chat/sse?user=s{i}&rooms=lobby HTTP/1.1\r\nHost: localhost\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("request");
        // The welcome is there: the stream is live.
        let mut seen = Vec::new();
        let mut b = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("\"welcome\"") {
            let n = tokio::time::timeout(WAIT, s.read(&mut b))
                .await
                .expect("welcome in time")
                .expect("read");
            assert!(n > 0, "closed before the welcome");
            seen.extend_from_slice(&b[..n]);
        }
        streams.push(s);
    }
    let gw = Arc::new(gw);
    let started = Instant::now();
    let drain = tokio::spawn({
        let gw = gw.clone();
        async move { gw.handle.shutdown().await }
    });
    let ends = futures_util::future::join_all(streams.into_iter().map(|mut s| async move {
        let rest = common::raw::read_to_close(&mut s, WAIT).await;
        assert!(rest.closed(), "the stream did not end");
        (Instant::now(), rest.text())
    }))
    .await;
    // As the WebSocket closes are checked, with the hint in a `retry:`.
    let closes: Vec<(Instant, u16, String)> = ends
        .into_iter()
        .map(|(at, text)| {
            let ms = text
                .rsplit("retry: ")
                .next()
                .and_then(|t| t.split('\n').next())
                .filter(|_| text.contains("retry: "))
                .unwrap_or_else(|| panic!("no last retry in {text:?}"));
            (at, 1012, format!("reconnect {ms}"))
        })
        .collect();
    assert_paced(&closes, started, "sse");
    let done = tokio::time::timeout(WAIT, drain).await.expect("drain ends");
    assert!(done.expect("drain task"), "drained within the grace");
}

/// Waiting long-polls are answered spread over the drain window too, each
/// with a `retry` hint, where they were all answered in the same instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_paces_long_polls_over_the_window() {
    const POLLS: usize = 30;
    let toml = chat_drained();
    let gw = Arc::new(TestGateway::start(&toml).await);
    let addr = gw.http();
    let mut waiting = Vec::new();
    for i in 0..POLLS {
        // One keep-alive connection per client: the waiting poll goes out
        // on a connection the gateway has accepted and read from already.
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let poll = |path: String| {
            http::Request::get(path)
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .expect("request")
        };
        let first = tx
            .send_request(poll(format!("/chat/poll?user=p{i}&rooms=r{i}")))
            .await
            .expect("first poll");
        let body = first.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let cursor = v["cursor"].as_str().expect("cursor").to_string();
        // A room of its own: no other client's presence wakes it.
        let path = format!("/chat/poll?user=p{i}&rooms=r{i}&timeout=25&cursor={cursor}");
        tx.ready().await.expect("connection ready again");
        let pending = tx.send_request(poll(path));
        waiting.push(tokio::spawn(async move {
            let _tx = tx;
            let r = pending.await.expect("answer");
            let body = r.into_body().collect().await.expect("body").to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            (Instant::now(), v)
        }));
    }
    // A round trip after the polls were written: the gateway has them.
    for w in &waiting {
        assert!(!w.is_finished(), "a poll was answered before the drain");
    }
    assert_eq!(get(addr, "/chat/api/online").await.status, StatusCode::OK);
    let started = Instant::now();
    let drain = tokio::spawn({
        let gw = gw.clone();
        async move { gw.handle.shutdown().await }
    });
    let mut closes = Vec::new();
    for w in waiting {
        let (at, v) = tokio::time::timeout(WAIT, w)
            .await
            .expect("answered within the window")
            .expect("poll task");
        let ms = v["retry"]
            .as_u64()
            .unwrap_or_else(|| panic!("no retry hint in {v}"));
        closes.push((at, 1012, format!("reconnect {ms}")));
    }
    assert_paced(&closes, started, "long-poll");
    let done = tokio::time::timeout(WAIT, drain).await.expect("drain ends");
    assert!(done.expect("drain task"), "drained within the grace");
}

/// Connections accepted just before a drain (all the time during a binary
/// upgrade) still get their first request answered: hyper's graceful
/// shutdown alone would close them unread. A WebSocket handshake among them
/// is accepted (not refused with 503, and its 101 says only `Upgrade`, which
/// tungstenite insists on) and its session then drained like the others.
#[tokio::test]
async fn a_connection_accepted_before_the_drain_gets_its_request_answered() {
    let api = named_upstream("late").await;
    let toml = Cfg::new()
        .set("server.shutdown_grace", "5s")
        .set("server.drain_window", "300ms")
        .listener_plain()
        .upstream("api", &[api])
        .route_upstream("/api/", "api")
        .route_app("/echo", "echo")
        .build();
    let gw = TestGateway::start(&toml).await;
    let connect = || tokio::net::TcpStream::connect(gw.http());
    let (mut s, ws) = (
        connect().await.expect("connect"),
        connect().await.expect("connect"),
    );
    assert!(
        eventually(WAIT, || async { gw.handle.active_connections() == 2 }).await,
        "the connections were never accepted"
    );
    gw.handle.begin_drain();
    tokio::task::yield_now().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("late"), "{answer}");

    let url = format!("ws://{}/echo", gw.http());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, ws))
        .await
        .expect("handshake in time")
        .expect("a handshake on its way when the drain began is accepted");
    ws.send(Message::text("hi")).await.expect("send");
    let echoed = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("echo in time");
    assert!(
        matches!(&echoed, Some(Ok(m)) if *m == Message::text("hi")),
        "{echoed:?}"
    );
    let (done, (_, code, _)) = tokio::join!(gw.handle.shutdown(), close_of(ws));
    assert_eq!(code, 1012);
    assert!(done);
}

/// An idle HTTP/2 connection (served by hyper, not the HTTP/1.1 fast path) is
/// told to go away when the drain begins: it gets its GOAWAY and ends at once,
/// not when the grace runs out and the gateway closes what is left.
#[tokio::test]
async fn an_idle_http2_connection_is_sent_away_when_the_drain_begins() {
    // WAIT (10 s) is well inside the grace: a connection left to the grace
    // fails the wait below.
    let toml = Cfg::new()
        .set("server.shutdown_grace", "30s")
        .listener_plain()
        .route_app("/echo", "echo")
        .build();
    let gw = TestGateway::start(&toml).await;
    let io = tokio::net::TcpStream::connect(gw.http())
        .await
        .expect("connect");
    let mut c = common::h2::handshake(io).await;
    let req = http::Request::get("http://localhost/echo")
        .body(())
        .expect("request");
    let (status, _) = c.get(req).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED, "served over HTTP/2");

    let drain = tokio::spawn(async move { gw.handle.shutdown().await });
    let ended = tokio::time::timeout(WAIT, &mut c.conn)
        .await
        .expect("the connection ends once the drain begins")
        .expect("connection task");
    assert!(ended.is_ok(), "ended by GOAWAY, not an error: {ended:?}");
    let done = tokio::time::timeout(WAIT, drain).await.expect("drain ends");
    assert!(done.expect("drain task"), "drained within the grace");
}
