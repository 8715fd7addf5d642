//! Operations over real sockets and real signals: admin endpoints and metrics,
//! JSON access logs, SIGHUP reload without dropping connections (and refusing a
//! broken config), SIGTERM drain.

use crate::common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn admin_endpoints_and_metrics_count() {
    let up = named_upstream("a").await;
    let toml = Cfg::new()
        .admin()
        .listener_plain()
        .upstream("api", &[up])
        .route_upstream("/api/", "api")
        .route_app("/echo", "echo")
        .build();
    let gw = TestGateway::start(&toml).await;
    let admin = gw.admin();
    assert_eq!(get(gw.http(), "/api/x").await.text(), "a");
    assert_eq!(
        get(gw.http(), "/nothing").await.status,
        StatusCode::NOT_FOUND
    );
    // A request body's bytes are counted in; a bodiless request's count none.
    assert_eq!(post(gw.http(), "/api/up", "12345", None).await.text(), "a");
    let scrape = || async { get(admin, "/metrics").await.text() };
    // Metrics are counted as a body or a session ends, just after the client
    // sees the end: polled until they show `want`.
    let shows = |want: &'static str| async move {
        let seen = eventually(Duration::from_secs(5), || async {
            scrape().await.contains(want)
        })
        .await;
        assert!(seen, "no {want:?} in\n{}", scrape().await);
    };
    shows("wsgate_bytes_total{direction=\"in\"} 5\n").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", gw.http()))
        .await
        .unwrap();
    for i in 0..3 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        ws.next().await.unwrap().unwrap();
    }
    let live = get(admin, "/metrics").await.text();
    assert!(
        live.contains("wsgate_ws_sessions_active{route=\"/echo\"} 1"),
        "{live}"
    );
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    while ws.next().await.is_some() {}
    shows("wsgate_ws_messages_total{route=\"/echo\",direction=\"in\"} 3").await;
    let m = scrape().await;
    for want in [
        "wsgate_connections_active{listener=",
        "wsgate_http_requests_total{route=\"/api/\",status=\"200\"} 2",
        "wsgate_http_requests_total{route=\"-\",status=\"404\"} 1",
        "wsgate_http_request_duration_seconds_bucket",
        "wsgate_ws_sessions_active{route=\"/echo\"} 0",
        "wsgate_ws_handshakes_total{route=\"/echo\",result=\"ok\"} 1",
        "wsgate_ws_messages_total{route=\"/echo\",direction=\"out\"} 3",
        "wsgate_ws_close_codes_total{route=\"/echo\",code=\"1000\"} 1",
        &format!("wsgate_upstream_up{{upstream=\"api\",server=\"{up}\"}} 1"),
        &format!(
            "wsgate_upstream_requests_total{{upstream=\"api\",server=\"{up}\",status=\"200\"}} 2"
        ),
        "wsgate_bytes_total{direction=\"out\"}",
        "wsgate_cluster_redis_up 0",
        "wsgate_process_resident_memory_bytes",
        "wsgate_process_open_fds",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }
    assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);
    let status = json_of(&get(admin, "/status").await);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["upstreams"]["api"]["servers"][0]["up"], true);
    assert!(status["listeners"].as_array().is_some_and(|l| l.len() == 1));
    // Draining turns readiness off at once (before anything is closed).
    gw.handle.begin_drain();
    let r = get(admin, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "draining\n");
    assert!(gw.handle.shutdown().await);
}

/// A `wsgate` child process with its stderr lines collected.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn start(config: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("-c")
            .arg(config)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn wsgate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`, returning it.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?} within {limit:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Bound addresses from the JSON `listening` lines, in order.
    fn listening(&mut self, n: usize) -> Vec<std::net::SocketAddr> {
        let mut out = Vec::new();
        while out.len() < n {
            let _ = self.wait_for("\"listening\"", Duration::from_secs(10));
            out = self
                .seen
                .iter()
                .filter(|l| l.contains("\"listening\""))
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["addr"].as_str().and_then(|a| a.parse().ok()))
                .collect();
            if out.len() < n {
                let l = self
                    .lines
                    .recv_timeout(Duration::from_secs(10))
                    .expect("more listening lines");
                self.seen.push(l);
            }
        }
        out
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// JSON logs, a plain and a TLS listener (with `{cert}.crt` from `dir`), the
/// echo app and `dir/site` as static files.
fn base_config(dir: &std::path::Path, cert: &str) -> Cfg {
    let d = dir.display();
    Cfg::new()
        .set("server.shutdown_grace", "5s")
        .set("log.format", "json")
        .listener_plain()
        .listener_tls(format!("{d}/{cert}.crt"), format!("{d}/{cert}.key"))
        .route_app("/echo", "echo")
        .route_root("/", format!("{d}/site"))
}

/// A config file in `d` (with its site directory and certificate) for a
/// process the test drains: [`base_config`], a 1 s drain window, `more`.
fn drained_config(d: &std::path::Path, more: impl FnOnce(Cfg) -> Cfg) -> std::path::PathBuf {
    std::fs::create_dir_all(d.join("site")).unwrap();
    write_cert(d, "one", &["localhost"]);
    let cfg = d.join("wsgate.toml");
    let config = more(base_config(d, "one").set("server.drain_window", "1s"));
    std::fs::write(&cfg, config.build()).unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_reload_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("site")).unwrap();
    std::fs::create_dir_all(d.join("new")).unwrap();
    std::fs::write(d.join("site/index.html"), "old site").unwrap();
    std::fs::write(d.join("new/index.html"), "new route").unwrap();
    write_cert(d, "one", &["localhost"]);
    write_cert(d, "two", &["localhost"]);
    let cfg = d.join("wsgate.toml");
    let up = named_upstream("a").await;
    let ws_up = ws_echo_upstream(None).await;
    let gone = dead_addr().await;
    let with_api = |c: Cfg| {
        c.upstream("api", &[up])
            .route_upstream("/api/", "api")
            .upstream("gone", &[gone])
            .route_upstream("/gone/", "gone")
            .upstream("wsup", &[ws_up])
            .route_upstream("/live", "wsup")
    };
    std::fs::write(&cfg, with_api(base_config(d, "one")).build()).unwrap();
    let mut p = Proc::start(&cfg);
    let addrs = p.listening(2);
    let (plain, tls) = (addrs[0], addrs[1]);

    // 50 WebSockets and one keep-alive HTTP connection, opened before the reload.
    let mut sockets = Vec::new();
    for _ in 0..50 {
        sockets.push(
            tokio_tungstenite::connect_async(format!("ws://{plain}/echo"))
                .await
                .unwrap()
                .0,
        );
    }
    let tcp = tokio::net::TcpStream::connect(plain).await.unwrap();
    let (mut keep, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get_keep = |keep: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
                    path: &'static str| {
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        keep.send_request(req)
    };
    assert_eq!(
        collect(get_keep(&mut keep, "/").await.unwrap())
            .await
            .text(),
        "old site"
    );

    // Reload: a new route and a new certificate.
    let next = with_api(base_config(d, "two")).route_root("/new", format!("{}/new", d.display()));
    std::fs::write(&cfg, next.build()).unwrap();
    p.signal("HUP");
    p.wait_for("configuration reloaded", Duration::from_secs(10));
    assert_eq!(get(plain, "/new/").await.text(), "new route");
    // New TLS connections get the new certificate (verified against it alone).
    let s = tls_connect(
        tls,
        tls_client(&d.join("two.crt").to_string_lossy(), &[b"http/1.1"]),
        "localhost",
    )
    .await;
    drop(s);
    // Nothing established noticed.
    assert_eq!(
        collect(get_keep(&mut keep, "/new/").await.unwrap())
            .await
            .text(),
        "new route"
    );
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("still here {i}")))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("still here {i}"))
        );
    }

    // A broken config is refused and the old one keeps serving.
    std::fs::write(&cfg, "[server]\nheader_timeout = \"soon\"\n").unwrap();
    p.signal("HUP");
    let refused = p.wait_for("reload refused", Duration::from_secs(10));
    assert!(refused.contains("server.header_timeout"), "{refused}");
    assert_eq!(get(plain, "/new/").await.text(), "new route");
    sockets[0]
        .send(Message::text("after refusal"))
        .await
        .unwrap();
    assert_eq!(
        sockets[0].next().await.unwrap().unwrap(),
        Message::text("after refusal")
    );

    // Every line so far is valid JSON, and access lines carry their fields.
    for _ in 0..3 {
        let _ = get(plain, "/").await;
    }
    let access = p.wait_for("\"access\"", Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&access).unwrap();
    for k in [
        "client",
        "method",
        "host",
        "path",
        "route",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
    ] {
        assert!(v.get(k).is_some(), "access line lacks {k}: {access}");
    }
    // A proxied request's line names the server that answered and counts
    // the body it sent.
    assert_eq!(post(plain, "/api/sent", "1234567", None).await.text(), "a");
    let line = p.wait_for("/api/sent", Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["upstream"], up.to_string(), "{line}");
    assert_eq!(v["bytes_in"], 7, "{line}");
    // A failed attempt's line names the server too, beside the cause.
    assert_eq!(get(plain, "/gone/x").await.status, 502);
    let line = p.wait_for("/gone/x", Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["upstream"], gone.to_string(), "{line}");
    assert_ne!(v["error"], "-", "{line}");
    // A spliced WebSocket's lines, the upgrade's and the session's, name the
    // server too (nginx's $upstream_addr, HAProxy's server name).
    let (mut live, _) = tokio_tungstenite::connect_async(format!("ws://{plain}/live"))
        .await
        .unwrap();
    live.send(Message::text("hi")).await.unwrap();
    assert_eq!(live.next().await.unwrap().unwrap(), Message::text("hi"));
    live.close(None).await.unwrap();
    while let Some(Ok(_)) = live.next().await {}
    for needle in ["\"path\":\"/live\"", "\"session\":\"spliced\""] {
        let line = p.wait_for(needle, Duration::from_secs(5));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["upstream"], ws_up.to_string(), "{line}");
    }
    for l in &p.seen {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1012_and_finishes_requests() {
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let slow = http_upstream(move |_req| {
        let _ = arrived_tx.send(());
        async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Response::new(Full::new(Bytes::from("slow but complete")))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = drained_config(dir.path(), |c| {
        c.upstream("slow", &[slow]).route_upstream("/slow", "slow")
    });
    let mut p = Proc::start(&cfg);
    let plain = p.listening(2)[0];
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{plain}/echo"))
        .await
        .unwrap();
    let inflight = tokio::spawn(async move { get(plain, "/slow").await });
    // The request is in flight once the upstream has it.
    tokio::time::timeout(Duration::from_secs(5), arrived.recv())
        .await
        .expect("request reached the upstream");
    let started = std::time::Instant::now();
    p.signal("TERM");
    match tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("close frame")
    {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 1012);
            assert!(f.reason.starts_with("reconnect "), "{}", f.reason);
        }
        other => panic!("expected close 1012, got {other:?}"),
    }
    let r = inflight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "slow but complete");
    // Draining stopped accepting: new connections are refused.
    assert!(
        tokio::net::TcpStream::connect(plain).await.is_err(),
        "still accepting while draining"
    );
    let mut status = None;
    let grace_left = Duration::from_secs(6).saturating_sub(started.elapsed());
    let exited = eventually(grace_left, || {
        status = p.child.try_wait().unwrap();
        let done = status.is_some();
        async move { done }
    })
    .await;
    assert!(exited, "did not exit within the grace period");
    let status = status.expect("exit status");
    assert!(status.success(), "{status:?}");
    // The drained session's access line says so.
    let line = p.wait_for("\"drained\":true", Duration::from_secs(1));
    assert!(line.contains("\"close_code\":1012"), "{line}");
}

#[tokio::test]
async fn reload_applies_chat_settings() {
    let toml = |token: &str| {
        Cfg::new()
            .listener_plain()
            .route_app("/chat", "chat")
            .set("app.chat.push_token", token)
            .build()
    };
    let gw = TestGateway::start(&toml("first")).await;
    let push = |token: &'static str| {
        let addr = gw.http();
        async move {
            let auth = format!("Bearer {token}");
            post(
                addr,
                "/chat/api/push",
                r#"{"room":"lobby","text":"hi"}"#,
                Some(&auth),
            )
            .await
            .status
        }
    };
    assert_eq!(push("first").await, StatusCode::OK);
    let path = gw.dir.path().join("wsgate.toml");
    std::fs::write(&path, toml("second")).unwrap();
    gw.handle
        .reload(wsgate::config::load(&path).unwrap())
        .await
        .unwrap();
    assert_eq!(push("first").await, StatusCode::FORBIDDEN);
    assert_eq!(push("second").await, StatusCode::OK);
}

/// nginx's SIGUSR1 (reopen logs; logrotate sends it) and SIGALRM leave
/// sessions alone, and its SIGQUIT (graceful stop) drains as SIGTERM does: their default
/// actions would kill the process and drop every session unclosed. A byte
/// splice still open when the grace ends is cut and logged before the exit.
#[tokio::test]
async fn sigusr1_changes_nothing_and_sigquit_drains() {
    let dir = tempfile::tempdir().unwrap();
    let ws_up = ws_echo_upstream(None).await;
    let cfg = drained_config(dir.path(), |c| {
        c.set("server.shutdown_grace", "2s")
            .upstream("wsup", &[ws_up])
            .route_upstream("/live", "wsup")
    });
    let mut p = Proc::start(&cfg);
    let plain = p.listening(2)[0];
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{plain}/echo"))
        .await
        .unwrap();
    // A byte splice: no close frame can be put in it, so the grace cuts it.
    let (mut live, _) = tokio_tungstenite::connect_async(format!("ws://{plain}/live"))
        .await
        .unwrap();
    live.send(Message::text("spliced")).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(5), live.next()).await;
    assert!(matches!(back, Ok(Some(Ok(Message::Text(_))))), "{back:?}");
    p.signal("USR1");
    p.wait_for("SIGUSR1", Duration::from_secs(5));
    p.signal("ALRM");
    p.wait_for("SIGALRM", Duration::from_secs(5));
    ws.send(Message::text("still here")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(echoed, Ok(Some(Ok(Message::Text(ref t)))) if t.as_str() == "still here"),
        "{echoed:?}"
    );
    p.signal("QUIT");
    match tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("close frame")
    {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1012),
        other => panic!("expected close 1012, got {other:?}"),
    }
    let mut status = None;
    let exited = eventually(Duration::from_secs(8), || {
        status = p.child.try_wait().unwrap();
        let done = status.is_some();
        async move { done }
    })
    .await;
    assert!(exited, "SIGQUIT: did not exit after the drain");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // The splice the grace cut is logged before the process exits, as
    // drained, with the bytes it moved.
    let line = p.wait_for("\"session\":\"spliced\"", Duration::from_secs(1));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["drained"], true, "{line}");
    assert!(v["bytes_in"].as_u64().is_some_and(|n| n > 0), "{line}");
    drop(live);
}
