//! Auth callouts in front of WebSocket upstreams: handshakes over HTTP/1.1
//! and HTTP/2 (RFC 8441) are checked, and described to the service, alike.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::{setup, within};
use crate::common::raw::{handshake, read_head, WS_HEADERS};
use crate::common::Route;

/// A WebSocket upstream recording the `x-user-id` of each handshake.
async fn ws_upstream() -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request as WsReq, Response as WsResp};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let users = Arc::new(Mutex::new(Vec::new()));
    let u = users.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let u = u.clone();
            tokio::spawn(async move {
                let cb = |req: &WsReq, resp: WsResp| {
                    let user = req
                        .headers()
                        .get("x-user-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    u.lock().unwrap().push(user);
                    Ok(resp)
                };
                let _ = tokio_tungstenite::accept_hdr_async(s, cb).await;
            });
        }
    });
    (addr, users)
}

#[tokio::test]
async fn websocket_handshakes_are_checked_before_anything_goes_upstream() {
    let (ws, users) = ws_upstream().await;
    let s = setup(|c| {
        c.upstream("wsup", &[ws]).route(
            Route::upstream("/ws/", "wsup")
                .set("auth_request", "authsvc")
                .set("auth_request_headers", vec!["X-User-Id"]),
        )
    })
    .await;
    let open = |auth: &'static str| {
        let addr = s.gw.http();
        async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            let extra = format!("{WS_HEADERS}Authorization: {auth}\r\nX-User-Id: mallory\r\n");
            c.write_all(handshake("/ws/chat", &extra).as_bytes())
                .await
                .expect("write");
            within(read_head(&mut c)).await
        }
    };
    let denied = open("Bearer nope").await;
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    assert!(
        denied
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"test\""),
        "{denied}"
    );
    let forbidden = open("Bearer forbidden").await;
    assert!(forbidden.starts_with("HTTP/1.1 403"), "{forbidden}");
    assert!(
        users.lock().unwrap().is_empty(),
        "the upstream saw a refused handshake"
    );
    let ok = open("Bearer good").await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    assert_eq!(*users.lock().unwrap(), vec![Some("alice".to_string())]);
    let h = s.auth.last();
    assert_eq!(h["x-original-method"], "GET");
    assert_eq!(h["x-original-uri"], "/ws/chat");
    assert!(!h.contains_key("sec-websocket-key"));
    // The same handshake over HTTP/2 comes as CONNECT (RFC 8441): the
    // service is told GET all the same, as the upstream is sent GET.
    let tcp = TcpStream::connect(s.gw.http()).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method("CONNECT")
        .uri(format!("http://{}/ws/chat", s.gw.http()))
        .header("sec-websocket-version", "13")
        .header("authorization", "Bearer good")
        .body(Full::new(Bytes::new()))
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = within(tx.send_request(req)).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let h = s.auth.last();
    assert_eq!(h["x-original-method"], "GET");
    assert_eq!(h["x-original-uri"], "/ws/chat");
}
