//! Test harness: start a real gateway in-process on 127.0.0.1 port 0, real
//! upstream servers, and small clients. Nothing here sleeps to synchronise:
//! servers are bound before their address is returned, and every wait has a
//! deadline.
//!
//! - [`cfg`]: the config builder ([`Cfg`], [`Listener`], [`Route`]).
//! - [`upstreams`]: HTTP and WebSocket upstream servers.
//! - [`raw`]: raw bytes, [`Raw`] answers that tell "closed" from "timed out",
//!   WebSocket handshakes and frames.
//! - [`tls`]: TLS clients.
//! - [`h2`]: a raw HTTP/2 client (streams, resets, pings).
//! - [`openssl`]: the openssl CLI (OCSP responses, `s_client`).
//! - [`pebble`]: Pebble, the ACME test CA, and its mock DNS, as children.
//! - [`h2_upstream`]: an HTTP/2-only upstream that answers with trailers, like gRPC.
//! - [`grpc`]: a real gRPC server and client (tonic, raw-bytes messages).
//! - [`tls_upstream`]: a test CA and a real TLS upstream (HTTP, WebSocket, health).
//! - [`chat`]: the chat app's WebSocket and SSE clients.
//! - [`redis`]: a `redis-server` child for cluster tests.
//! - [`process`]: the real `wsgate` binary as a child (upgrades, systemd).
#![allow(dead_code, clippy::result_large_err)]

pub mod cfg;
pub mod chat;
pub mod grpc;
pub mod h2;
pub mod h2_upstream;
pub mod openssl;
pub mod pebble;
pub mod process;
pub mod raw;
pub mod redis;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod tls;
pub mod tls_upstream;
pub mod upstreams;

use std::fmt::Display;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use wsgate::{Gateway, GatewayHandle};

// Each test binary uses a different part of the re-exports.
#[allow(unused_imports)]
pub use cfg::{Cfg, Listener, Route};
#[allow(unused_imports)]
pub use raw::{raw, End, Raw};
#[allow(unused_imports)]
pub use tls::{send_h2, tls_client, tls_connect};
#[allow(unused_imports)]
pub use upstreams::{
    body_summing_upstream, counting_upstream, dead_addr, http_upstream, named_upstream,
    ws_echo_upstream,
};

/// How long any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running gateway plus the temp dir holding its config and certificates.
pub struct TestGateway {
    pub handle: GatewayHandle,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway from TOML. `{dir}` in the text is replaced by a temp dir
    /// (for certificates and static roots). Listeners should use port 0.
    pub async fn start(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(toml, dir).await
    }

    pub async fn start_in(toml: &str, dir: tempfile::TempDir) -> Self {
        init_logs();
        let text = toml.replace("{dir}", dir.path().to_str().expect("utf-8 temp path"));
        let path = dir.path().join("wsgate.toml");
        std::fs::write(&path, &text).expect("write config");
        let cfg =
            wsgate::config::load(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let handle = Gateway::start(cfg).await.expect("gateway starts");
        Self { handle, dir }
    }

    pub fn http(&self) -> SocketAddr {
        self.handle.http_addr().expect("a plain listener")
    }

    pub fn https(&self) -> SocketAddr {
        self.handle.https_addr().expect("a TLS listener")
    }

    pub fn admin(&self) -> SocketAddr {
        self.handle.admin_addr().expect("an admin listener")
    }
}

pub fn init_logs() {
    wsgate::logging::init(wsgate::config::LogFormat::Text);
}

/// Writes a self-signed certificate for `hosts` as `NAME.crt`/`NAME.key` in `dir`.
pub fn write_cert(dir: &Path, name: &str, hosts: &[&str]) -> (String, String) {
    let g = wsgate::certs::generate_self_signed(
        &hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    )
    .expect("cert");
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&crt, g.cert_pem).expect("write crt");
    std::fs::write(&key, g.key_pem).expect("write key");
    (
        crt.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- HTTP clients -------------------------------------------------------------------

/// A simple response from a test client.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The body of `r` as JSON (fails with the text when it is not).
pub fn json_of(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// A request with `Host: localhost` and the given headers.
pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).expect("request")
}

/// Sends one HTTP/1.1 request over an established stream.
pub async fn send_on<IO>(io: IO, req: Request<Full<Bytes>>) -> Reply
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    collect(tx.send_request(req).await.expect("response")).await
}

/// Sends one HTTP/1.1 request over a fresh connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    send_on(TcpStream::connect(addr).await.expect("connect"), req).await
}

pub async fn collect(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET path` with `Host: localhost`.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    get_with(addr, path, &[]).await
}

/// `GET path` with `Host: localhost` and `headers`.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, request("GET", path, headers, Bytes::new())).await
}

/// `POST path` with a JSON content type, `body` and an optional `Authorization`.
pub async fn post(addr: SocketAddr, path: &str, body: impl Display, auth: Option<&str>) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    send(addr, request("POST", path, &headers, body.to_string())).await
}

/// A TCP connection whose source address is `src` (any 127.0.0.0/8 address
/// works on Linux loopback).
pub async fn connect_from(src: IpAddr, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(src, 0))
        .expect("bind source address");
    sock.connect(addr).await.expect("connect")
}
