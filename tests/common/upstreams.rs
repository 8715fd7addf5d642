//! Upstream servers for the gateway to proxy to, all on 127.0.0.1 port 0 and
//! bound before their address is returned.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// An address nothing listens on: connecting is refused at once.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// An HTTP/1.1 upstream answering every bodiless request with `answer`, the
/// bytes as given: for answers a well-behaved server would not send
/// (malformed, or a body that never ends). It never closes a connection.
pub async fn canned_upstream(answer: &'static [u8]) -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        head.clear();
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
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

/// An upstream that counts the requests reaching it and answers `up`.
pub async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = http_upstream(move |_req| {
        h.fetch_add(1, Ordering::SeqCst);
        async { Response::new(Full::new(Bytes::from_static(b"up"))) }
    })
    .await;
    (addr, hits)
}

/// An upstream that reads each request body and answers
/// `"{bytes} {sum of the bytes} {transfer-encoding:?}"`.
pub async fn body_summing_upstream() -> SocketAddr {
    http_upstream(|req| async move {
        let te = req
            .headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let mut body = req.into_body();
        let mut n = 0usize;
        let mut sum = 0u64;
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.expect("body frame").into_data() {
                n += d.len();
                sum += d.iter().map(|b| u64::from(*b)).sum::<u64>();
            }
        }
        Response::new(Full::new(Bytes::from(format!("{n} {sum} {te:?}"))))
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

/// An upstream that completes the handshake by hand and hands each upgraded
/// connection to the test.
pub async fn raw_ws_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let head = super::raw::read_head(&mut s).await;
            let key = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("sec-websocket-key:")
                        .then(|| l[18..].trim().to_string())
                })
                .expect("key");
            let accept = wsgate::proxy::ws::accept_key(key.as_bytes());
            let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
            s.write_all(resp.as_bytes()).await.expect("101");
            let _ = tx.send(s);
        }
    });
    (addr, rx)
}
