//! Hardening, round 6 (the fifth black-box probe: reloads, drains, the admin
//! listener, upstream exchanges, config checks). Real `wsgate` processes
//! where signals are the subject; every wait is bounded.

use crate::common;

use std::net::SocketAddr;

use common::process::WsgateProc;
use common::redis::free_ports;
use common::*;
use http::StatusCode;

/// A config naming a file that is no regular file (a FIFO nobody writes,
/// `/dev/zero`) is refused at once with the key and line. Before, the
/// reload waited on the FIFO for good, after which neither SIGHUP nor
/// SIGTERM did anything, and `/dev/zero` was read until memory ran out.
#[tokio::test]
async fn a_reload_naming_a_fifo_or_a_device_is_refused_and_sigterm_still_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").expect("write");
    let [port] = free_ports();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = |secret: &std::path::Path| {
        Cfg::new()
            .set("log.access_log", false)
            .listener(Listener::at(addr))
            .set(
                "auth.users.hmac_secret",
                format!("file:{}", secret.display()),
            )
            .route_app("/echo", "echo")
            .build()
    };
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, cfg(&secret)).expect("write config");
    let mut gw = WsgateProc::start(&path);
    gw.wait_for("listening", WAIT);

    for bad in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
        gw.seen.clear();
        std::fs::write(&path, cfg(bad)).expect("write config");
        gw.signal("HUP");
        let line = gw.wait_for("reload refused", WAIT);
        assert!(
            line.contains("auth.users.hmac_secret") && line.contains("not a regular file"),
            "{line}"
        );
    }
    // Still serving, and a good config still reloads.
    let r = get(addr, "/echo").await;
    assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED, "{}", r.text());
    std::fs::write(&path, cfg(&secret)).expect("write config");
    gw.signal("HUP");
    gw.wait_for("configuration reloaded", WAIT);

    gw.signal("TERM");
    let exit = gw.exited(WAIT).await.expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

/// Reads until EOF or an error; `true` when that came within `limit`.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.is_ok()
}

/// Whether `GET /healthz` on a new connection gets its 200 (a connection
/// closed on accept gets nothing).
async fn healthz_answers(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut text = Vec::new();
        s.read_to_end(&mut text).await.ok()?;
        Some(text.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The admin listener holds its connections to `server.header_timeout` and
/// to [`wsgate::server::admin::CONNECTIONS`] at once. Before, idle admin
/// connections stayed for good and 1 100 of them used up the process's
/// descriptors, so the public listeners' accepts failed.
#[tokio::test]
async fn admin_connections_are_timed_out_and_capped() {
    use tokio::io::AsyncWriteExt;
    use wsgate::server::admin::CONNECTIONS;
    // A gateway with an admin listener and this header timeout.
    let start = |timeout: &'static str| async move {
        let cfg = Cfg::new()
            .set("log.access_log", false)
            .listener_plain()
            .admin()
            .set("server.header_timeout", timeout)
            .build();
        TestGateway::start(&cfg).await
    };
    let gw = start("1s").await;
    let admin = gw.admin();
    // Silent, and a head that never ends: both closed at the header timeout.
    let mut silent = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    let mut slow = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    assert!(
        closed_within(&mut silent, WAIT).await,
        "a silent connection stays"
    );
    assert!(
        closed_within(&mut slow, WAIT).await,
        "an unfinished head stays"
    );

    // Past the cap, a connection is closed at once (the others are waiting
    // out their header timeout). Requests that finish keep working.
    let gw = start("60s").await;
    let admin = gw.admin();
    let r = get(admin, "/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        held.push(
            tokio::net::TcpStream::connect(admin)
                .await
                .expect("connect"),
        );
    }
    let mut extra = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    assert!(
        closed_within(&mut extra, WAIT).await,
        "the cap let one more in"
    );
    // One held connection closes; its place serves a request again.
    drop(held.pop());
    assert!(
        eventually(WAIT, || healthz_answers(admin)).await,
        "no request served after a place was freed"
    );
    // The public listener never noticed.
    let r = get(gw.http(), "/").await;
    assert_ne!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// `response_timeout` counts from the last body frame the upstream took,
/// as nginx's `proxy_read_timeout` starts once the request is sent: an
/// upload that keeps flowing for longer than it is answered (504 at the
/// timeout before, mid-upload, to a server reading it all along), and a
/// server that takes nothing still times out.
#[tokio::test]
async fn response_timeout_waits_for_an_upload_that_keeps_flowing() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = http_upstream(|req| async move {
        let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(format!(
            "{}",
            n.unwrap_or(0)
        ))))
    })
    .await;
    let cfg = Cfg::new()
        .set("log.access_log", false)
        .listener_plain()
        .upstream("api", &[api])
        .set("upstream.api.response_timeout", "1s")
        .route_upstream("/", "api")
        .build();
    let gw = TestGateway::start(&cfg).await;
    let mut c = tokio::net::TcpStream::connect(gw.http())
        .await
        .expect("connect");
    let chunk = vec![b'x'; 1000];
    c.write_all(
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 8000\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("head");
    // 8 chunks 300 ms apart: 2.1 s of upload against a 1 s timeout. The
    // pause is the scenario (a slow uploader), not a wait for an event.
    for _ in 0..8 {
        c.write_all(&chunk).await.expect("chunk");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let mut answer = String::new();
    tokio::time::timeout(WAIT, c.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("8000"), "{answer}");
}

/// A handshake whose SNI is an IP literal (which RFC 6066 forbids) writes no
/// log line: rustls's own logging, off now, warned once per such handshake
/// with client-chosen text, so any client could write the log at will.
#[tokio::test]
async fn a_bad_sni_writes_no_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = write_cert(dir.path(), "localhost", &["localhost"]);
    let [port] = free_ports();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let path = dir.path().join("wsgate.toml");
    let cfg = Cfg::new()
        .listener(Listener::at(addr).tls(&crt, &key))
        .route_app("/echo", "echo")
        .build();
    std::fs::write(&path, cfg).expect("write config");
    let mut gw = WsgateProc::start(&path);
    gw.wait_for("listening", WAIT);
    for sni in ["1.2.3.4", "10.0.0.1"] {
        common::openssl::s_client(dir.path(), addr, sni, &crt, &[]).await;
    }
    // An access line marks that the handshakes before it were logged by now.
    common::openssl::s_client_with(
        dir.path(),
        addr,
        "localhost",
        &crt,
        &["-ign_eof"],
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    gw.wait_for("status=426", WAIT);
    assert!(
        !gw.seen
            .iter()
            .any(|l| l.contains("SNI") || l.contains("rustls")),
        "{}",
        gw.seen.join("\n")
    );
}

/// A reload may turn TLS on or off for an address: the running socket moves
/// to the new mode. Before, a second socket was bound beside the first and
/// the reload was refused ("address in use"): only a restart could do it.
#[tokio::test]
async fn a_reload_turns_tls_on_and_off_for_an_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = write_cert(dir.path(), "localhost", &["localhost"]);
    let [port] = free_ports();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let plain = || {
        Cfg::new()
            .set("log.access_log", false)
            .listener(Listener::at(addr))
            .route_app("/echo", "echo")
            .build()
    };
    let tls = Cfg::new()
        .set("log.access_log", false)
        .listener(Listener::at(addr).tls(&crt, &key))
        .route_app("/echo", "echo")
        .build();
    let gw = TestGateway::start(&plain()).await;
    assert_eq!(
        get(addr, "/echo").await.status,
        StatusCode::UPGRADE_REQUIRED
    );
    let reload = |text: String| {
        let cfg =
            wsgate::config::parse(std::path::Path::new("reload.toml"), &text).expect("config");
        gw.handle.reload(cfg)
    };
    reload(tls).await.expect("TLS turned on");
    let client = common::tls::tls_client(&crt, &[b"http/1.1"]);
    let stream = tokio::time::timeout(WAIT, common::tls::tls_connect(addr, client, "localhost"))
        .await
        .expect("handshake in time");
    let r = send_on(stream, request("GET", "/echo", &[], "")).await;
    assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
    reload(plain()).await.expect("TLS turned off");
    assert_eq!(
        get(addr, "/echo").await.status,
        StatusCode::UPGRADE_REQUIRED
    );
}

/// A route may be held to listeners (`listeners`, as nginx's server blocks
/// are to their `listen`): a host meant only for one listener (an mTLS one)
/// was reachable through every other by setting `Host`, or by a TLS
/// connection to another listener whose SNI named another host.
#[tokio::test]
async fn a_route_held_to_a_listener_is_not_reached_through_another() {
    let [inside, outside] = free_ports();
    let a = SocketAddr::from(([127, 0, 0, 1], inside));
    let b = SocketAddr::from(([127, 0, 0, 1], outside));
    let cfg = Cfg::new()
        .set("log.access_log", false)
        .listener(Listener::at(a))
        .listener(Listener::at(b))
        .route(
            Route::app("/", "echo")
                .host("secure.test")
                .set("listeners", vec![toml::Value::from(a.to_string())]),
        )
        .build();
    let _gw = TestGateway::start(&cfg).await;
    let secure = |addr| async move {
        let req = http::Request::get("/")
            .header("host", "secure.test")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        send(addr, req).await.status
    };
    assert_eq!(secure(a).await, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(secure(b).await, StatusCode::NOT_FOUND);

    // A listener the config does not have is an error naming the key.
    let bad = Cfg::new()
        .listener(Listener::at(a))
        .route(Route::app("/", "echo").set("listeners", vec![toml::Value::from("127.0.0.1:1")]))
        .build();
    let e = wsgate::config::parse(std::path::Path::new("t.toml"), &bad)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("route[0].listeners: \"127.0.0.1:1\" is no [[listener]]'s addr"),
        "{e}"
    );
}

/// A copy of the `wsgate` binary at `dir/wsgate`, and a config on fixed
/// ports (a plain listener, admin) for the process tests below.
fn own_binary(
    dir: &std::path::Path,
    more: impl FnOnce(Cfg) -> Cfg,
) -> (std::path::PathBuf, std::path::PathBuf, SocketAddr) {
    let exe = dir.join("wsgate");
    std::fs::copy(env!("CARGO_BIN_EXE_wsgate"), &exe).expect("copy the binary");
    let [port] = free_ports();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = more(
        Cfg::new()
            .set("log.access_log", false)
            .set("server.shutdown_grace", "60s")
            .listener(Listener::at(addr))
            .route_app("/echo", "echo"),
    )
    .build();
    let path = dir.join("wsgate.toml");
    std::fs::write(&path, cfg).expect("write config");
    (exe, path, addr)
}

/// SIGTERM while a binary upgrade waits for its new process kills that
/// process. Before, the old process exited and the new one (here a binary
/// that never gets ready) kept the listening sockets: connections were
/// accepted and never served, and a restart could not bind.
#[tokio::test]
async fn sigterm_during_an_upgrade_kills_the_process_not_yet_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (exe, path, addr) = own_binary(dir.path(), |c| c);
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("-c").arg(&path).stdout(std::process::Stdio::null());
    let mut gw = WsgateProc::spawn(cmd);
    gw.wait_for("listening", WAIT);
    // The path the upgrade runs now holds a program that never gets ready.
    let hang = dir.path().join("hang");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 60\n").expect("write script");
    std::fs::set_permissions(&hang, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::rename(&hang, &exe).expect("replace the binary");
    gw.signal("USR2");
    gw.wait_for("SIGUSR2: starting the new binary", WAIT);
    gw.signal("TERM");
    gw.wait_for("binary upgrade in progress is abandoned", WAIT);
    assert!(gw.exited(WAIT).await.is_some(), "the old process stays");
    // Nobody holds the listening socket: a connect is refused.
    assert!(
        eventually(WAIT, || async move {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "the listening socket outlived the process"
    );
}

/// A second SIGTERM during a drain exits at once (as a second Ctrl-C does),
/// where the drain would wait out `shutdown_grace` for a held request.
/// Before, every later signal was ignored until the grace ran out.
#[tokio::test]
async fn a_second_sigterm_ends_the_drain() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // A server that never answers: its request holds the drain (60 s grace).
    let api = http_upstream(|_req| std::future::pending()).await;
    let (exe, path, addr) = own_binary(dir.path(), |c| {
        c.upstream("api", &[api]).route_upstream("/api/", "api")
    });
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("-c").arg(&path).stdout(std::process::Stdio::null());
    let mut gw = WsgateProc::spawn(cmd);
    gw.wait_for("listening", WAIT);
    let mut held = tokio::net::TcpStream::connect(addr).await.expect("connect");
    held.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    gw.signal("TERM");
    gw.wait_for("draining", WAIT);
    assert!(gw.child.try_wait().expect("try_wait").is_none());
    gw.signal("TERM");
    gw.wait_for("second stop signal", WAIT);
    assert!(gw.exited(WAIT).await.is_some(), "still draining");
}
