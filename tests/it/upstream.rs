//! Upstream pools end to end (issue 5): a real gateway in front of real upstream
//! servers on 127.0.0.1, driven over real sockets. Covers balancing (weighted
//! round robin, least_conn, random), sticky sessions (sealed cookie over HTTP and
//! WebSocket, ip, header, query), passive and active health, retries, and the
//! all-down fast path. Nothing sleeps to synchronise: tests wait on events or
//! poll against a deadline with `common::eventually`.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    connect_from, dead_addr, eventually, get, get_with, request, send, send_on, Cfg, Listener,
    Reply, TestGateway, WAIT,
};
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsgate::upstream::{Backend, BackendId, Pool};

const COOKIE: &str = "wsgate_sticky";

// ---------------------------------------------------------------------------
// Test upstream: HTTP and WebSocket, named, killable, with a settable health
// status and a `/hold` endpoint that keeps a request in flight until released.
// ---------------------------------------------------------------------------

struct Upstream {
    name: &'static str,
    addr: SocketAddr,
    /// Requests served, health probes excluded.
    hits: Arc<AtomicUsize>,
    /// Requests currently parked on `/hold`.
    holding: Arc<AtomicUsize>,
    /// Status `/healthz` answers.
    health: Arc<AtomicU16>,
    release: watch::Sender<bool>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Upstream {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Upstream {
            name,
            addr,
            hits: Arc::new(AtomicUsize::new(0)),
            holding: Arc::new(AtomicUsize::new(0)),
            health: Arc::new(AtomicU16::new(200)),
            release: watch::channel(false).0,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let (hits, holding, health, release) = (
            up.hits.clone(),
            up.holding.clone(),
            up.health.clone(),
            up.release.clone(),
        );
        let (stop, tasks) = (up.stop.clone(), up.tasks.clone());
        up.tasks.spawn(async move {
            loop {
                let s = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let (hits, holding, health, release) = (
                    hits.clone(),
                    holding.clone(),
                    health.clone(),
                    release.clone(),
                );
                let (stop2, tasks2) = (stop.clone(), tasks.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (hits, holding, health) = (hits.clone(), holding.clone(), health.clone());
                    let mut release = release.subscribe();
                    let (stop, tasks) = (stop2.clone(), tasks2.clone());
                    async move {
                        let resp = if req.uri().path() == "/healthz" {
                            let status = StatusCode::from_u16(health.load(Ordering::SeqCst))
                                .expect("status");
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .expect("response")
                        } else {
                            hits.fetch_add(1, Ordering::SeqCst);
                            if req.headers().contains_key(header::UPGRADE) {
                                ws_accept(name, req, stop, tasks)
                            } else {
                                if req.uri().path() == "/hold" {
                                    holding.fetch_add(1, Ordering::SeqCst);
                                    let _ = release.wait_for(|r| *r).await;
                                    holding.fetch_sub(1, Ordering::SeqCst);
                                }
                                Response::builder()
                                    .header("x-upstream", name)
                                    .body(Full::new(Bytes::from(name)))
                                    .expect("response")
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let stop = stop.clone();
                tasks.spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        up
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn holding(&self) -> usize {
        self.holding.load(Ordering::SeqCst)
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    /// Stops the server and closes every connection it had; returns once the
    /// port refuses connections.
    async fn kill(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Answers a WebSocket upgrade; the session sends the server's name first, then
/// echoes.
fn ws_accept(
    name: &'static str,
    mut req: Request<Incoming>,
    stop: CancellationToken,
    tasks: TaskTracker,
) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Response::builder()
            .status(400)
            .body(Full::new(Bytes::new()))
            .expect("response");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tasks.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let session = async {
            if ws.send(Message::text(name)).await.is_err() {
                return;
            }
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = session => {}
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            wsgate::proxy::ws::accept_key(key.as_bytes()),
        )
        .body(Full::new(Bytes::new()))
        .expect("response")
}

/// A server that answers every request with half a response head, then closes:
/// a response byte arrived, so the request must not be retried.
async fn half_response_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, hits)
}

// ---------------------------------------------------------------------------
// Gateway and client helpers.
// ---------------------------------------------------------------------------

/// One plain listener and `/` routed to `[upstream.api]`, which the caller adds.
fn api_route() -> Cfg {
    Cfg::new().listener_plain().route_upstream("/", "api")
}

/// [`api_route`] with `[upstream.api]` on `servers`.
fn api<S: std::fmt::Display>(servers: &[S]) -> Cfg {
    api_route().upstream("api", servers)
}

async fn gateway(cfg: Cfg) -> TestGateway {
    TestGateway::start(&cfg.build()).await
}

fn addrs(ups: &[&Upstream]) -> Vec<String> {
    ups.iter().map(|u| u.addr.to_string()).collect()
}

fn pool(gw: &TestGateway) -> Arc<Pool> {
    gw.handle.pool("api").expect("pool api")
}

/// The pool's entry for the server at `addr`.
fn backend_of(gw: &TestGateway, addr: SocketAddr) -> Arc<Backend> {
    pool(gw)
        .backend(BackendId::of(&addr.to_string()))
        .expect("server in pool")
}

/// Whether balancing may use the server at `addr` now.
fn is_up(gw: &TestGateway, addr: SocketAddr) -> bool {
    pool(gw).is_up(&backend_of(gw, addr))
}

fn req(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Request<Full<Bytes>> {
    request(method, path, headers, body)
}

/// Sends a request over a connection whose source address is `src`.
async fn send_from(src: IpAddr, addr: SocketAddr, r: Request<Full<Bytes>>) -> Reply {
    send_on(connect_from(src, addr).await, r).await
}

/// Which server answered.
fn server(r: &Reply) -> String {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.text()
}

/// The sticky token the response set, if any.
fn set_cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let token = v.strip_prefix(COOKIE)?.strip_prefix('=')?;
            Some(token.split(';').next().unwrap_or("").to_string())
        })
}

fn full_set_cookie(headers: &http::HeaderMap) -> String {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(COOKIE))
        .expect("a sticky Set-Cookie")
        .to_string()
}

fn cookie_header(token: &str) -> String {
    format!("other=1; {COOKIE}={token}")
}

/// Opens a WebSocket through the gateway; returns the stream, the handshake
/// response and the name of the upstream server it reached.
async fn ws_open(
    addr: SocketAddr,
    src: Option<IpAddr>,
    cookie: Option<&str>,
) -> (
    WebSocketStream<TcpStream>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
    String,
) {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("ws request");
    if let Some(c) = cookie {
        request
            .headers_mut()
            .insert(header::COOKIE, HeaderValue::from_str(c).expect("cookie"));
    }
    let tcp = match src {
        Some(ip) => connect_from(ip, addr).await,
        None => TcpStream::connect(addr).await.expect("connect"),
    };
    let (mut ws, resp) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("ws handshake");
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("first message")
        .expect("open")
        .expect("message");
    let name = first.into_text().expect("text").to_string();
    // The splice works both ways.
    ws.send(Message::text("ping")).await.expect("send");
    let echo = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("echo")
        .expect("open")
        .expect("message");
    assert_eq!(echo.into_text().expect("text").as_str(), "ping");
    (ws, resp, name)
}

/// Closes a WebSocket and waits for the close handshake, so the spliced
/// session has ended on both sides when this returns.
async fn ws_close(mut ws: WebSocketStream<TcpStream>) {
    let _ = ws.close(None).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
}

fn loopback(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

async fn three() -> (Upstream, Upstream, Upstream) {
    (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    )
}

// ---------------------------------------------------------------------------
// Balancing.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn round_robin_spreads_by_weight() {
    let (a, b, c) = three().await;
    let gw = gateway(
        api_route()
            .weighted_upstream("api", &[(a.addr, 1), (b.addr, 2), (c.addr, 3)])
            .set("upstream.api.balance", "round_robin"),
    )
    .await;
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..60 {
        seen.push(server(&get(gw.http(), "/").await));
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 20, 30));
    // Smooth (nginx's sequence for 1:2:3 is c b a c b c): never 3 in a row.
    assert!(
        seen.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "{seen:?}"
    );
}

#[tokio::test]
async fn random_uses_every_server() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.balance", "random")).await;
    for _ in 0..90 {
        server(&get(gw.http(), "/").await);
    }
    assert!(
        a.hits() > 5 && b.hits() > 5 && c.hits() > 5,
        "{} {} {}",
        a.hits(),
        b.hits(),
        c.hits()
    );
}

#[tokio::test]
async fn least_conn_steers_away_from_a_busy_server() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = gateway(api(&addrs(&[&a, &b])).set("upstream.api.balance", "least_conn")).await;
    let addr = gw.http();
    let p = pool(&gw);
    let inflight = |name: &str| {
        let up = if name == "a" { &a } else { &b };
        p.backend(wsgate::upstream::BackendId::of(&up.addr.to_string()))
            .map(|b| b.inflight())
            .unwrap_or(usize::MAX)
    };

    // One request parked on a server keeps it busy.
    let held = tokio::spawn(async move { get(addr, "/hold").await });
    assert!(eventually(WAIT, || async { a.holding() + b.holding() == 1 }).await);
    let idle = if a.holding() == 1 { "b" } else { "a" };
    for _ in 0..10 {
        // The previous response's count is released when its body is done.
        assert!(eventually(WAIT, || async { inflight(idle) == 0 }).await);
        assert_eq!(server(&get(addr, "/").await), idle);
    }
    a.release.send_replace(true);
    b.release.send_replace(true);
    assert_eq!(held.await.expect("held request").status, StatusCode::OK);

    // An open spliced WebSocket counts as load too.
    assert!(eventually(WAIT, || async { inflight("a") == 0 && inflight("b") == 0 }).await);
    let (ws, _, busy) = ws_open(addr, None, None).await;
    let other = if busy == "a" { "b" } else { "a" };
    assert_eq!(inflight(&busy), 1);
    for _ in 0..10 {
        assert!(eventually(WAIT, || async { inflight(other) == 0 }).await);
        assert_eq!(server(&get(addr, "/").await), other);
    }
    ws_close(ws).await;
    // Once the session ends, both servers share again.
    assert!(eventually(WAIT, || async { inflight("a") == 0 && inflight("b") == 0 }).await);
    let mut seen = HashSet::new();
    for _ in 0..4 {
        assert!(eventually(WAIT, || async { inflight("a") == 0 && inflight("b") == 0 }).await);
        seen.insert(server(&get(addr, "/").await));
    }
    assert_eq!(seen.len(), 2, "idle servers share: {seen:?}");
}

// ---------------------------------------------------------------------------
// Sticky cookie.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sticky_cookie_pins_twenty_requests_and_fails_over_with_a_new_cookie() {
    let (a, b, c) = three().await;
    let ups = [&a, &b, &c];
    let gw = gateway(
        api(&addrs(&ups))
            .set("upstream.api.sticky", "cookie")
            .set("upstream.api.max_fails", 1)
            .set("upstream.api.fail_timeout", "60s")
            .set("upstream.api.retries", 1),
    )
    .await;

    let first = get(gw.http(), "/").await;
    let pinned = server(&first);
    let full = full_set_cookie(&first.headers);
    assert!(full.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{full}");
    let token = set_cookie(&first.headers).expect("cookie set on first response");
    for _ in 0..20 {
        let r = get_with(gw.http(), "/", &[("cookie", &cookie_header(&token))]).await;
        assert_eq!(server(&r), pinned);
        assert_eq!(
            set_cookie(&r.headers),
            None,
            "a valid cookie is not re-issued"
        );
    }

    // Its server dies: the request is served elsewhere with a new cookie.
    let dead = ups
        .iter()
        .find(|u| u.name == pinned)
        .expect("pinned upstream");
    dead.kill().await;
    let r = get_with(gw.http(), "/", &[("cookie", &cookie_header(&token))]).await;
    let moved = server(&r);
    assert_ne!(moved, pinned);
    let token2 = set_cookie(&r.headers).expect("a new cookie after failover");
    assert_ne!(token2, token);
    for _ in 0..20 {
        assert_eq!(
            server(&get_with(gw.http(), "/", &[("cookie", &cookie_header(&token2))]).await),
            moved
        );
    }
    // The old cookie names a server now marked down: also re-chosen.
    assert!(!is_up(&gw, dead.addr));
    let r = get_with(gw.http(), "/", &[("cookie", &cookie_header(&token))]).await;
    assert_ne!(server(&r), pinned);
    assert!(set_cookie(&r.headers).is_some());
}

#[tokio::test]
async fn tampered_or_garbage_cookie_is_ignored_and_replaced() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "cookie")).await;
    let token = set_cookie(&get(gw.http(), "/").await.headers).expect("cookie");
    let mut chars: Vec<char> = token.chars().collect();
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let mut servers = HashSet::new();
    for bad in [tampered.as_str(), "garbage", "", &"A".repeat(66)] {
        for _ in 0..3 {
            let r = get_with(gw.http(), "/", &[("cookie", &cookie_header(bad))]).await;
            servers.insert(server(&r));
            let fresh = set_cookie(&r.headers).expect("a bad cookie is replaced");
            assert_ne!(fresh, bad);
        }
    }
    // Not pinned: round robin spread them.
    assert_eq!(servers.len(), 3, "{servers:?}");
}

#[tokio::test]
async fn sticky_cookie_is_secure_on_tls_listeners() {
    let a = Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = common::write_cert(dir.path(), "localhost", &["localhost"]);
    // Another address than the plain listener's: listeners are told apart by
    // their configured address.
    let gw = TestGateway::start_in(
        &api(&[a.addr])
            .set("upstream.api.sticky", "cookie")
            .listener(Listener::at("127.0.0.2:0").tls(&crt, &key))
            .build(),
        dir,
    )
    .await;

    let plain = full_set_cookie(&get(gw.http(), "/").await.headers);
    assert!(!plain.contains("Secure"), "{plain}");

    let stream = common::tls_connect(
        gw.https(),
        common::tls_client(&crt, &[b"http/1.1"]),
        "localhost",
    )
    .await;
    let r = send_on(stream, req("GET", "/", &[], "")).await;
    let secure = full_set_cookie(&r.headers);
    assert!(
        secure.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure"),
        "{secure}"
    );
}

// ---------------------------------------------------------------------------
// WebSocket stickiness.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn websocket_upgrades_are_pinned_by_cookie() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "cookie")).await;
    let (ws, resp, pinned) = ws_open(gw.http(), None, None).await;
    let token = set_cookie(resp.headers()).expect("the 101 carries Set-Cookie");
    assert!(full_set_cookie(resp.headers()).ends_with("; Path=/; HttpOnly; SameSite=Lax"));
    ws_close(ws).await;
    for _ in 0..10 {
        let (ws, resp, name) = ws_open(gw.http(), None, Some(&cookie_header(&token))).await;
        assert_eq!(name, pinned);
        assert_eq!(set_cookie(resp.headers()), None);
        ws_close(ws).await;
    }
    // HTTP requests with the same cookie go to the same server.
    for _ in 0..5 {
        assert_eq!(
            server(&get_with(gw.http(), "/", &[("cookie", &cookie_header(&token))]).await),
            pinned
        );
    }
    // Without the cookie, upgrades are balanced.
    let mut names = HashSet::new();
    for _ in 0..3 {
        let (ws, resp, name) = ws_open(gw.http(), None, None).await;
        assert!(set_cookie(resp.headers()).is_some());
        names.insert(name);
        ws_close(ws).await;
    }
    assert_eq!(names.len(), 3, "{names:?}");
}

#[tokio::test]
async fn websocket_upgrades_are_pinned_by_ip() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "ip")).await;
    let mut by_ip: HashMap<IpAddr, String> = HashMap::new();
    for i in 2..14u8 {
        let ip = loopback(i);
        for _ in 0..3 {
            let (ws, resp, name) = ws_open(gw.http(), Some(ip), None).await;
            assert_eq!(
                set_cookie(resp.headers()),
                None,
                "ip stickiness sets no cookie"
            );
            assert_eq!(
                by_ip.entry(ip).or_insert_with(|| name.clone()),
                &name,
                "{ip} moved"
            );
            ws_close(ws).await;
        }
        // Plain HTTP from the same address lands on the same server.
        assert_eq!(
            server(&send_from(ip, gw.http(), req("GET", "/", &[], "")).await),
            by_ip[&ip]
        );
    }
    let distinct: HashSet<&String> = by_ip.values().collect();
    assert!(
        distinct.len() >= 2,
        "12 addresses all on one server: {by_ip:?}"
    );
}

// ---------------------------------------------------------------------------
// Hash stickiness: ip, header, query.
// ---------------------------------------------------------------------------

/// Asserts that each key always reaches the same server and that 60 keys use
/// all three servers.
async fn assert_sticky_and_spread<F, Fut>(mut send_key: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let mut placement: HashMap<usize, String> = HashMap::new();
    for round in 0..3 {
        for k in 0..60 {
            let name = server(&send_key(k).await);
            let first = placement.entry(k).or_insert_with(|| name.clone());
            assert_eq!(first, &name, "key {k} moved in round {round}");
        }
    }
    let used: HashSet<&String> = placement.values().collect();
    assert_eq!(used.len(), 3, "60 keys over 3 servers: {placement:?}");
}

#[tokio::test]
async fn ip_stickiness_pins_each_address_and_spreads_addresses() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "ip")).await;
    let addr = gw.http();
    assert_sticky_and_spread(|k| send_from(loopback(2 + k as u8), addr, req("GET", "/", &[], "")))
        .await;
}

#[tokio::test]
async fn header_stickiness_pins_each_value_and_falls_back_without_it() {
    let (a, b, c) = three().await;
    let gw =
        gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "header:X-User-Id")).await;
    let addr = gw.http();
    assert_sticky_and_spread(|k| {
        let user = format!("user-{k}");
        async move { get_with(addr, "/", &[("x-user-id", &user)]).await }
    })
    .await;
    // No header: round robin.
    let before = (a.hits(), b.hits(), c.hits());
    for _ in 0..6 {
        server(&get(addr, "/").await);
    }
    assert_eq!(
        (
            a.hits() - before.0,
            b.hits() - before.1,
            c.hits() - before.2
        ),
        (2, 2, 2)
    );
}

#[tokio::test]
async fn query_stickiness_pins_each_value_and_falls_back_without_it() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "query:user")).await;
    let addr = gw.http();
    assert_sticky_and_spread(|k| async move { get(addr, &format!("/x?a=1&user=u{k}")).await })
        .await;
    // Same key whatever else the query holds.
    let one = server(&get(addr, "/p?user=alice").await);
    assert_eq!(server(&get(addr, "/q?z=9&user=alice&user=bob").await), one);
    let before = (a.hits(), b.hits(), c.hits());
    for _ in 0..6 {
        server(&get(addr, "/?other=1").await);
    }
    assert_eq!(
        (
            a.hits() - before.0,
            b.hits() - before.1,
            c.hits() - before.2
        ),
        (2, 2, 2)
    );
}

/// Issue 5's movement figure through the public API: 10 000 keys, 3 → 4
/// servers; about 1/4 move, all of them to the new server.
#[test]
fn consistent_hash_moves_about_a_quarter_of_keys_when_a_fourth_server_joins() {
    let pool = |n: usize| {
        let servers: Vec<String> = (1..=n).map(|i| format!("10.1.0.{i}:8080")).collect();
        let text = api(&servers)
            .set("upstream.api.sticky", "header:X-User-Id")
            .build();
        let cfg = wsgate::config::parse(std::path::Path::new("test.toml"), &text).expect("config");
        Pool::new(cfg.upstreams["api"].clone(), None, &[0; 32]).expect("pool")
    };
    let (three, four) = (pool(3), pool(4));
    let place = |p: &Pool, k: &[u8]| {
        p.select(&wsgate::upstream::Affinity::Hash(k.to_vec()), &[])
            .map(|c| c.backend.addr.to_string())
            .expect("a server")
    };
    let mut moved = 0;
    for k in 0..10_000 {
        let key = format!("user-{k}");
        let (before, after) = (place(&three, key.as_bytes()), place(&four, key.as_bytes()));
        if before != after {
            assert_eq!(after, "10.1.0.4:8080", "keys only move to the new server");
            moved += 1;
        }
    }
    println!(
        "3 -> 4 servers: {moved} of 10000 keys moved ({:.2}%)",
        f64::from(moved) / 100.0
    );
    assert!((2_000..=3_000).contains(&moved), "moved {moved}");
}

// ---------------------------------------------------------------------------
// Health.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn active_health_takes_a_server_out_and_brings_it_back() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = gateway(
        api(&addrs(&[&a, &b]))
            .set("upstream.api.health.path", "/healthz")
            .set("upstream.api.health.interval", "50ms")
            .set("upstream.api.health.timeout", "1s")
            .set("upstream.api.health.healthy", 2)
            .set("upstream.api.health.unhealthy", 2),
    )
    .await;
    a.set_health(503);
    assert!(eventually(WAIT, || async { !is_up(&gw, a.addr) }).await);
    assert!(!backend_of(&gw, a.addr).health().active_up());
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(server(&get(gw.http(), "/").await), "b");
    }
    assert_eq!(a.hits(), before);

    a.set_health(200);
    assert!(eventually(WAIT, || async { is_up(&gw, a.addr) }).await);
    let mut names = HashSet::new();
    for _ in 0..4 {
        names.insert(server(&get(gw.http(), "/").await));
    }
    assert!(names.contains("a"), "{names:?}");
}

#[tokio::test]
async fn passive_health_marks_a_dead_server_down() {
    let a = Upstream::start("a").await;
    let dead = dead_addr().await;
    let gw = gateway(
        api(&[a.addr, dead])
            .set("upstream.api.max_fails", 2)
            .set("upstream.api.fail_timeout", "60s")
            .set("upstream.api.retries", 1),
    )
    .await;
    // Every request succeeds (retried on `a`) while the dead server fails twice.
    let mut n = 0;
    while is_up(&gw, dead) {
        assert_eq!(server(&get(gw.http(), "/").await), "a");
        n += 1;
        assert!(n < 20, "the dead server was never marked down");
    }
    let down_for = backend_of(&gw, dead)
        .health()
        .passive_down_for(Instant::now());
    assert!(
        down_for.is_some_and(|d| d > Duration::from_secs(50)),
        "{down_for:?}"
    );
    assert!(pool(&gw).cfg.health.is_none(), "passive health only");
    // From now on it is skipped without a connection attempt: no retry needed.
    let gw2 = gw.http();
    for _ in 0..10 {
        assert_eq!(server(&get(gw2, "/").await), "a");
    }
}

#[tokio::test]
async fn all_servers_down_answers_502_at_once() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let gw = gateway(
        api(&[d1, d2])
            .set("upstream.api.max_fails", 1)
            .set("upstream.api.fail_timeout", "60s")
            .set("upstream.api.retries", 1),
    )
    .await;
    // The first request tries both and fails.
    assert_eq!(get(gw.http(), "/").await.status, StatusCode::BAD_GATEWAY);
    let p = pool(&gw);
    assert!(p.backends().iter().all(|b| !p.is_up(b)));
    let t0 = Instant::now();
    for _ in 0..10 {
        let r = get(gw.http(), "/").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert!(
            r.text().contains("no upstream server is available"),
            "{}",
            r.text()
        );
    }
    // A WebSocket upgrade too.
    let mut request = format!("ws://{}/ws", gw.http())
        .into_client_request()
        .expect("ws request");
    request
        .headers_mut()
        .insert("host", HeaderValue::from_static("localhost"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::BAD_GATEWAY)
        }
        other => panic!("expected 502, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Retries.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn idempotent_requests_are_retried_around_a_refused_server() {
    let a = Upstream::start("a").await;
    let dead = dead_addr().await;
    // max_fails = 0: passive health off, so the dead server keeps being chosen.
    let gw = gateway(
        api(&[dead, a.addr])
            .set("upstream.api.max_fails", 0)
            .set("upstream.api.retries", 1),
    )
    .await;
    for method in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"] {
        for _ in 0..4 {
            let r = send(gw.http(), req(method, "/", &[], "")).await;
            assert_eq!(r.status, StatusCode::OK, "{method}");
        }
    }
    assert_eq!(a.hits(), 20);
    // WebSocket upgrades retry a refused connection too.
    for _ in 0..4 {
        let (ws, _, name) = ws_open(gw.http(), None, None).await;
        assert_eq!(name, "a");
        ws_close(ws).await;
    }
}

#[tokio::test]
async fn requests_with_a_body_or_unsafe_methods_are_not_retried() {
    let a = Upstream::start("a").await;
    let dead = dead_addr().await;
    let gw = gateway(
        api(&[dead, a.addr])
            .set("upstream.api.max_fails", 0)
            .set("upstream.api.retries", 3),
    )
    .await;
    for (method, body) in [
        ("POST", "payload"),
        ("PUT", "payload"),
        ("POST", ""),
        ("PATCH", ""),
    ] {
        let before = a.hits();
        let mut failed = 0;
        for _ in 0..4 {
            let r = send(gw.http(), req(method, "/", &[], body)).await;
            if r.status == StatusCode::BAD_GATEWAY {
                failed += 1;
            } else {
                assert_eq!(r.status, StatusCode::OK);
            }
        }
        // Round robin alternates: half of them went to the dead server and
        // stayed failed; the others reached `a` exactly once each.
        assert_eq!(failed, 2, "{method} with {body:?}");
        assert_eq!(a.hits() - before, 2, "{method} with {body:?}");
    }
}

#[tokio::test]
async fn no_retry_once_a_response_byte_arrived() {
    let a = Upstream::start("a").await;
    let (half, half_hits) = half_response_upstream().await;
    let gw = gateway(
        api(&[half, a.addr])
            .set("upstream.api.max_fails", 0)
            .set("upstream.api.retries", 1),
    )
    .await;
    let mut failed = 0;
    for _ in 0..6 {
        let r = get(gw.http(), "/").await;
        if r.status == StatusCode::BAD_GATEWAY {
            failed += 1;
        } else {
            assert_eq!(server(&r), "a");
        }
    }
    assert_eq!(failed, 3);
    assert_eq!(half_hits.load(Ordering::SeqCst), 3);
    assert_eq!(a.hits(), 3, "the half-answered GETs were not sent again");
}

#[tokio::test]
async fn retries_zero_means_one_attempt() {
    let a = Upstream::start("a").await;
    let dead = dead_addr().await;
    let gw = gateway(
        api(&[dead, a.addr])
            .set("upstream.api.max_fails", 0)
            .set("upstream.api.retries", 0),
    )
    .await;
    let statuses: Vec<StatusCode> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(get(gw.http(), "/").await.status);
        }
        v
    };
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::BAD_GATEWAY)
            .count(),
        2,
        "{statuses:?}"
    );
}
