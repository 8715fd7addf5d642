//! Upstream pools end to end (issue 5): a real gateway in front of real upstream
//! servers on 127.0.0.1, driven over real sockets. Covers balancing (weighted
//! round robin, least_conn, random), sticky sessions (sealed cookie over HTTP and
//! WebSocket, ip, header, query), passive and active health, retries, and the
//! all-down fast path. Nothing sleeps to synchronise: tests wait on events or
//! poll against a deadline with `common::eventually`.
//!
//! This module holds the test upstream and the helpers; the tests are in
//! [`balancing`], [`sticky`] and [`health`].

mod balancing;
mod health;
mod sticky;

use crate::common;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::{connect_from, request, send_on, Cfg, Reply, TestGateway, WAIT};
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
                if !read_request_head(&mut s).await {
                    return;
                }
                h.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, hits)
}

/// A server that reads each request head and closes without a word.
async fn hanging_up_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move { read_request_head(&mut s).await });
        }
    });
    addr
}

/// Reads up to the end of a request head; false when the peer closed first.
async fn read_request_head(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
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
