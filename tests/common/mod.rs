//! Test harness: start a real gateway in-process on 127.0.0.1 port 0, real
//! upstream servers, and small clients. Nothing here sleeps to synchronise:
//! servers are bound before their address is returned.
#![allow(dead_code, clippy::result_large_err)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsgate::{Gateway, GatewayHandle};

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

/// Sends one HTTP/1.1 request over a fresh connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = tx.send_request(req).await.expect("response");
    collect(resp).await
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
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(addr, req).await
}

/// Writes raw bytes and reads until the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts an HTTP/1.1 upstream whose responses come from `f`.
pub async fn http_upstream<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let f = Arc::new(f);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let f = f.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let f = f.clone();
                    async move { Ok::<_, Infallible>(f(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// An upstream answering every request with `name` in the body and the
/// `x-upstream` header (for spread/stickiness tests).
pub async fn named_upstream(name: &'static str) -> SocketAddr {
    http_upstream(move |_req| async move {
        Response::builder()
            .header("x-upstream", name)
            .body(Full::new(Bytes::from(name)))
            .expect("response")
    })
    .await
}

/// A WebSocket echo upstream (tokio-tungstenite). It selects the subprotocol
/// `chosen` when the client offers it, and echoes text and binary messages.
pub async fn ws_echo_upstream(chosen: Option<&'static str>) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{Request as WsReq, Response as WsResp};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let cb = |req: &WsReq, mut resp: WsResp| {
                    if let Some(p) = chosen {
                        let offered = req
                            .headers()
                            .get("sec-websocket-protocol")
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.split(',').any(|x| x.trim() == p));
                        if offered {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", p.parse().expect("header"));
                        }
                    }
                    // Echo the forwarded headers back so tests can see them.
                    for h in [
                        "x-forwarded-for",
                        "x-forwarded-proto",
                        "x-forwarded-host",
                        "cookie",
                        "origin",
                    ] {
                        if let Some(v) = req.headers().get(h) {
                            let name = format!("x-seen-{h}");
                            resp.headers_mut().insert(
                                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                                v.clone(),
                            );
                        }
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        if ws.send(m).await.is_err() {
                            break;
                        }
                    } else if m.is_close() {
                        break;
                    }
                }
            });
        }
    });
    addr
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

/// A rustls client config trusting exactly the PEM certificate at `ca`.
pub fn tls_client(ca: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("pem") {
        roots.add(c.expect("cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Opens a TLS connection with `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).expect("server name");
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .expect("tls handshake")
}

/// Sends one request over HTTP/2 on an established (TLS) stream.
pub async fn send_h2<IO>(io: IO, req: Request<Full<Bytes>>) -> Reply
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    collect(tx.send_request(req).await.expect("h2 response")).await
}

/// A raw WebSocket frame, masked when `mask` is given (client → server frames must be).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(k) = mask {
        f.extend_from_slice(&k);
    }
    f.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask.map_or(0, |k| k[i % 4])),
    );
    f
}
