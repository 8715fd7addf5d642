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
use common::redis::free_ports;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// The listening addresses of [`config`].
struct Addrs {
    plain: SocketAddr,
    tls: SocketAddr,
    admin: SocketAddr,
}

/// A config on fixed ports (an inherited socket is matched by address): a
/// plain listener, a TLS one (certificate `up` in `dir`) and admin.
fn config(api: SocketAddr, dir: &std::path::Path) -> (Cfg, Addrs) {
    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let [plain, tls, admin] = free_ports();
    let a = Addrs {
        plain: at(plain),
        tls: at(tls),
        admin: at(admin),
    };
    let (crt, key) = write_cert(dir, "up", &["localhost"]);
    let cfg = Cfg::new()
        .set("server.shutdown_grace", "5s")
        .set("server.drain_window", "1s")
        .set("log.access_log", false)
        .set("admin.addr", a.admin.to_string())
        .listener(Listener::at(a.plain))
        .listener(Listener::at(a.tls).tls(crt, key))
        .upstream("api", &[api])
        .route_upstream("/api/", "api")
        .route_app("/echo", "echo");
    (cfg, a)
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
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    request_on(s, path).await
}

/// The same over TLS.
async fn one_tls_request(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, s)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    request_on(s, "/api/x").await
}

async fn request_on<S>(mut s: S, path: &str) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
    /// Requests answered over TLS.
    https: AtomicU64,
    /// WebSocket sessions the old process's drain closed (1012).
    ws_drained: AtomicU64,
}

/// What one turn of the load loop came to.
enum Outcome {
    /// Answered 200; over TLS or not.
    Http {
        tls: bool,
    },
    Ws(WsTurn),
    Refused(String),
    Failed(String),
}

impl Tally {
    fn count(&self, o: Outcome) {
        let add = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
        match o {
            Outcome::Http { tls: false } => {}
            Outcome::Http { tls: true } => drop(add(&self.https)),
            Outcome::Ws(WsTurn::Echoed) => drop(add(&self.ws_sessions)),
            Outcome::Ws(WsTurn::Drained) => drop(add(&self.ws_drained)),
            Outcome::Ws(WsTurn::Failed(e)) => {
                eprintln!("WebSocket session failed: {e}");
                add(&self.failed);
            }
            Outcome::Refused(e) => {
                eprintln!("refused: {e}");
                add(&self.refused);
            }
            Outcome::Failed(e) => {
                eprintln!("request failed: {e}");
                add(&self.failed);
            }
        }
    }
}

/// New connection, request, answer checked (every fifth over TLS); every
/// tenth turn a WebSocket echo session instead. Until `stop`.
async fn load(
    a: Arc<Addrs>,
    tls: Arc<rustls::ClientConfig>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut turn = 0u64;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        tally.attempted.fetch_add(1, Ordering::Relaxed);
        if turn % 10 == 0 {
            tally.count(Outcome::Ws(ws_turn(a.plain).await));
            continue;
        }
        let request = async {
            if turn % 5 == 0 {
                one_tls_request(a.tls, tls.clone()).await
            } else {
                one_request(a.plain, "/api/x").await
            }
        };
        tally.count(
            match tokio::time::timeout(Duration::from_secs(5), request).await {
                Ok(Ok(r)) if r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nup") => {
                    Outcome::Http { tls: turn % 5 == 0 }
                }
                Ok(Ok(r)) => Outcome::Failed(r),
                Ok(Err(e)) if e.starts_with("connect") => Outcome::Refused(e),
                Ok(Err(e)) => Outcome::Failed(e),
                Err(_) => Outcome::Failed("no answer within 5 s".into()),
            },
        );
    }
}

/// A short echo session: echoed, or closed by the old process's drain
/// (1012, the designed way a session leaves it), or failed (with what went
/// wrong, so that a failure says which step).
async fn ws_turn(addr: SocketAddr) -> WsTurn {
    let session = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/echo"))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        ws.send(Message::text("ping"))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let turn = match ws.next().await {
            Some(Ok(m)) if m == Message::text("ping") => WsTurn::Echoed,
            Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 1012 => WsTurn::Drained,
            Some(Ok(m)) => WsTurn::Failed(format!("unexpected message: {m}")),
            Some(Err(e)) => WsTurn::Failed(format!("read: {e}")),
            None => WsTurn::Failed("closed before an answer".into()),
        };
        let _ = ws.close(None).await;
        Ok::<_, String>(turn)
    };
    match tokio::time::timeout(Duration::from_secs(5), session).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => WsTurn::Failed(e),
        Err(_) => WsTurn::Failed("no answer within 5 s".into()),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum WsTurn {
    Echoed,
    Drained,
    Failed(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_over_under_load_without_a_refused_connection() {
    let api = named_upstream("up").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, addrs) = config(api, dir.path());
    let (plain, admin) = (addrs.plain, addrs.admin);
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, cfg.build()).expect("write config");
    let mut old = WsgateProc::start(&path);
    let old_pid = u64::from(old.pid());
    if !eventually(WAIT, || async { serving_pid(admin).await == Some(old_pid) }).await {
        old.collect();
        panic!(
            "the first process never served /status; it logged:\n{}",
            old.seen.join("\n")
        );
    }
    // A session open before the upgrade: the old process drains it with 1012.
    let (mut before, _) = tokio_tungstenite::connect_async(format!("ws://{plain}/echo"))
        .await
        .expect("connect");

    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let addrs = Arc::new(addrs);
    let tls = tls_client(
        &dir.path().join("up.crt").display().to_string(),
        &[b"http/1.1"],
    );
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(load(
                addrs.clone(),
                tls.clone(),
                tally.clone(),
                stop.clone(),
            ))
        })
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
        "upgrade under load: {} connections attempted ({} HTTPS requests, {} WebSocket sessions echoed, {} closed 1012 by the drain), {refused} refused, {failed} failed requests; old pid {old_pid}, new pid {new_pid}",
        attempted(),
        tally.https.load(Ordering::Relaxed),
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
    // Plain, TLS and admin sockets were all handed over, none bound anew.
    old.wait_for("using the inherited listening socket", WAIT);
    for addr in [addrs.plain, addrs.tls, addrs.admin] {
        let inherited = old.seen.iter().any(|l| {
            l.contains("using the inherited listening socket") && l.contains(&addr.to_string())
        });
        assert!(
            inherited,
            "{addr} was not inherited:\n{}",
            old.seen.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_fails_leaves_the_old_one_serving() {
    let api = named_upstream("up").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, addrs) = config(api, dir.path());
    let (plain, admin) = (addrs.plain, addrs.admin);
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
