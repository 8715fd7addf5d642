//! `SIGUSR2` binary upgrades of the real `wsgate` binary: under a loop of new
//! connections, HTTP requests and WebSocket sessions no connection is refused
//! and no request fails, the new process (a new pid in `/status`) serves, and
//! the old one drains and exits; a new binary that cannot start leaves the
//! old one serving with the reason logged.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::WsgateProc;
use common::redis::free_port;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// A config on fixed ports (an inherited socket is matched by address).
fn config(api: SocketAddr) -> (Cfg, SocketAddr, SocketAddr) {
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let cfg = Cfg::new()
        .set("server.shutdown_grace", "5s")
        .set("server.drain_window", "1s")
        .set("log.access_log", false)
        .set("admin.addr", admin.to_string())
        .listener(Listener::at(plain))
        .upstream("api", &[api])
        .route_upstream("/api/", "api")
        .route_app("/echo", "echo");
    (cfg, plain, admin)
}

/// The pid `/status` reports, once the admin listener answers.
async fn serving_pid(admin: SocketAddr) -> Option<u64> {
    let r = tokio::time::timeout(Duration::from_secs(2), one_request(admin, "/status"))
        .await
        .ok()?
        .ok()?;
    let body = r.split("\r\n\r\n").nth(1)?;
    serde_json::from_str::<serde_json::Value>(body).ok()?["pid"].as_u64()
}

/// One request on a new connection (`Connection: close`): the whole answer.
async fn one_request(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .await
        .map_err(|e| format!("read: {e}"))?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// What the load loop saw.
#[derive(Default)]
struct Tally {
    attempted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    ws_sessions: AtomicU64,
    /// WebSocket sessions the old process's drain closed (1012).
    ws_drained: AtomicU64,
}

/// New connection, request, answer checked; every tenth turn a WebSocket
/// echo session instead. Until `stop`.
async fn load(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut turn = 0u64;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        tally.attempted.fetch_add(1, Ordering::Relaxed);
        let ok = if turn % 10 == 0 {
            match ws_turn(addr).await {
                WsTurn::Echoed => true,
                WsTurn::Drained => {
                    tally.ws_drained.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                WsTurn::Failed => false,
            }
        } else {
            match tokio::time::timeout(Duration::from_secs(5), one_request(addr, "/api/x")).await {
                Ok(Ok(r)) => r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nup"),
                Ok(Err(e)) if e.starts_with("connect") => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    eprintln!("refused: {e}");
                    continue;
                }
                Ok(Err(e)) => {
                    eprintln!("request failed: {e}");
                    false
                }
                Err(_) => false,
            }
        };
        if !ok {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        } else if turn % 10 == 0 {
            tally.ws_sessions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A short echo session: echoed, or closed by the old process's drain
/// (1012, the designed way a session leaves it), or failed.
async fn ws_turn(addr: SocketAddr) -> WsTurn {
    let session = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/echo"))
            .await
            .ok()?;
        ws.send(Message::text("ping")).await.ok()?;
        let turn = match ws.next().await?.ok()? {
            m if m == Message::text("ping") => WsTurn::Echoed,
            Message::Close(Some(f)) if u16::from(f.code) == 1012 => WsTurn::Drained,
            _ => WsTurn::Failed,
        };
        let _ = ws.close(None).await;
        Some(turn)
    };
    match tokio::time::timeout(Duration::from_secs(5), session).await {
        Ok(Some(t)) => t,
        _ => WsTurn::Failed,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum WsTurn {
    Echoed,
    Drained,
    Failed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_over_under_load_without_a_refused_connection() {
    let api = named_upstream("up").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, plain, admin) = config(api);
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, cfg.build()).expect("write config");
    let mut old = WsgateProc::start(&path);
    let old_pid = u64::from(old.pid());
    assert!(
        eventually(WAIT, || async { serving_pid(admin).await == Some(old_pid) }).await,
        "the first process never served /status"
    );
    // A session open before the upgrade: the old process drains it with 1012.
    let (mut before, _) = tokio_tungstenite::connect_async(format!("ws://{plain}/echo"))
        .await
        .expect("connect");

    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let workers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(load(plain, tally.clone(), stop.clone())))
        .collect();
    let attempted = || tally.attempted.load(Ordering::Relaxed);
    assert!(
        eventually(WAIT, || async { attempted() >= 100 }).await,
        "load did not start"
    );

    old.signal("USR2");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let new_pid = loop {
        if let Some(p) = serving_pid(admin).await.filter(|p| *p != old_pid) {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new process serving /status"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    old.successors.push(u32::try_from(new_pid).expect("pid"));
    match tokio::time::timeout(WAIT, before.next())
        .await
        .expect("drain close in time")
    {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 1012);
            assert!(f.reason.starts_with("reconnect "), "{}", f.reason);
        }
        other => panic!("expected close 1012 from the old process, got {other:?}"),
    }
    let status = old
        .exited(Duration::from_secs(10))
        .await
        .expect("old process exits once drained");
    assert!(status.success(), "old process: {status}");
    // Keep the load on the new process alone for a while.
    let at_exit = attempted();
    assert!(eventually(WAIT, || async { attempted() >= at_exit + 100 }).await);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(WAIT, w)
            .await
            .expect("worker ends")
            .expect("worker");
    }
    old.collect();
    let (refused, failed) = (
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "upgrade under load: {} connections attempted ({} WebSocket sessions echoed, {} closed 1012 by the drain), {refused} refused, {failed} failed requests; old pid {old_pid}, new pid {new_pid}",
        attempted(),
        tally.ws_sessions.load(Ordering::Relaxed),
        tally.ws_drained.load(Ordering::Relaxed)
    );
    assert_eq!(refused, 0, "refused connections");
    assert_eq!(failed, 0, "failed requests");
    assert_eq!(serving_pid(admin).await, Some(new_pid));
    assert_eq!(
        ws_turn(plain).await,
        WsTurn::Echoed,
        "the new process serves WebSockets"
    );
    old.wait_for("the new process is ready", WAIT);
    old.wait_for("using the inherited listening socket", WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_fails_leaves_the_old_one_serving() {
    let api = named_upstream("up").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, plain, admin) = config(api);
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, cfg.build()).expect("write config");
    let mut old = WsgateProc::start(&path);
    let pid = u64::from(old.pid());
    assert!(eventually(WAIT, || async { serving_pid(admin).await == Some(pid) }).await);
    // The new process will read a broken config and exit.
    std::fs::write(&path, "[server]\nshutdown_grace = \"soon\"\n").expect("break config");
    old.signal("USR2");
    let line = old.wait_for(
        "binary upgrade failed, still serving",
        Duration::from_secs(35),
    );
    assert!(line.contains("exited before it was ready"), "{line}");
    assert!(line.contains("exit status 1"), "{line}");
    old.wait_for("server.shutdown_grace", WAIT);
    let r = one_request(plain, "/api/x")
        .await
        .expect("old process serves");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(serving_pid(admin).await, Some(pid));
    assert!(
        old.child.try_wait().expect("try_wait").is_none(),
        "old process exited"
    );
}
