//! WebSocket sessions behind auth: handshakes checked before the upstream
//! (the `bearer.` subprotocol hidden from it), inspected sessions closed when
//! their token expires, and the chat app taking the user from the token.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{claims, head_of, hs_gateway_cfg, next, now, valid, Key, SECRET};
use crate::common::raw::{handshake, read_close, read_head, WS_HEADERS};
use crate::common::{dead_addr, get, Route, TestGateway, WAIT};

/// A WebSocket upstream that reports the subprotocols offered to it and the
/// close code it receives.
async fn ws_reporting_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::handshake::server::{Request as WsReq, Response as WsResp};
    let (tx, rx) = mpsc::unbounded_channel();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let tx2 = tx.clone();
                let cb = move |req: &WsReq, resp: WsResp| {
                    let p = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    let _ = tx2.send(format!("protocols {p}"));
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Close(c) = m {
                        let code = c.map(|c| u16::from(c.code)).unwrap_or(1005);
                        let _ = tx.send(format!("close {code}"));
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn websocket_handshakes_are_checked_before_the_upstream_and_bearer_protocol_is_hidden() {
    let (up, mut seen) = ws_reporting_upstream().await;
    let toml = hs_gateway_cfg(up)
        .route(Route::upstream("/ws/", "api").set("auth", "users"))
        .build();
    let gw = TestGateway::start(&toml).await;
    let addr = gw.http();
    let t = Key::hmac(SECRET).sign(&valid("alice"), None);

    let r = head_of(addr, handshake("/ws/", WS_HEADERS)).await;
    assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
    let expired = Key::hmac(SECRET).sign(&claims("a", "wsgate", now() as i64 - 10), None);
    let extra = format!("{WS_HEADERS}Authorization: Bearer {expired}\r\n");
    let r = head_of(addr, handshake("/ws/", &extra)).await;
    assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
    assert!(r.contains("error=\"invalid_token\""), "{r}");
    assert!(
        seen.try_recv().is_err(),
        "a refused handshake reached the upstream"
    );

    // The third offer's token is not the one verified (`Authorization` is
    // looked at first): it is still a token, and still hidden.
    for (offer, authorization, upstream_sees) in [
        (format!("chat, bearer.{t}"), String::new(), "protocols chat"),
        (format!("bearer.{t}"), String::new(), "protocols -"),
        (
            format!("chat, bearer.{t}"),
            format!("Authorization: Bearer {t}\r\n"),
            "protocols chat",
        ),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let extra = format!("{WS_HEADERS}{authorization}Sec-WebSocket-Protocol: {offer}\r\n");
        s.write_all(handshake("/ws/", &extra).as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("bearer."), "{head}");
        assert_eq!(next(&mut seen).await, upstream_sees);
    }
}

#[tokio::test]
async fn an_inspected_session_is_closed_when_its_token_expires() {
    let (up, mut seen) = ws_reporting_upstream().await;
    let toml = hs_gateway_cfg(up)
        .set("upstream.api.ws_inspect", true)
        .route(Route::upstream("/ws/", "api").set("auth", "users"))
        .build();
    let gw = TestGateway::start(&toml).await;
    // Expires within 1-2 s (exp has second granularity; leeway is 0).
    let t = Key::hmac(SECRET).sign(&claims("alice", "wsgate", now() as i64 + 2), None);
    let mut s = TcpStream::connect(gw.http()).await.unwrap();
    let extra = format!("{WS_HEADERS}Authorization: Bearer {t}\r\n");
    s.write_all(handshake("/ws/", &extra).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(next(&mut seen).await, "protocols -");
    let (code, _) = read_close(&mut s).await;
    assert_eq!(code, 1008);
    assert_eq!(next(&mut seen).await, "close 1001");
}

#[tokio::test]
async fn chat_behind_auth_takes_the_user_from_the_token_not_the_query() {
    use futures_util::StreamExt;
    let toml = hs_gateway_cfg(dead_addr().await)
        .route(Route::app("/chat", "chat").set("auth", "users"))
        .build();
    let gw = TestGateway::start(&toml).await;
    let addr = gw.http();
    let t = Key::hmac(SECRET).sign(&valid("alice"), None);
    let url = format!("ws://{addr}/chat/ws?user=mallory&token={t}");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("in time")
        .expect("handshake");
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("welcome in time")
        .expect("a frame")
        .expect("ok");
    let v: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "welcome");
    assert_eq!(v["user"], "alice");
    let r = head_of(addr, handshake("/chat/ws?user=alice", WS_HEADERS)).await;
    assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
    let r = get(addr, "/chat/sse?user=alice&rooms=lobby").await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn chat_behind_auth_refuses_a_token_that_names_no_user() {
    let toml = hs_gateway_cfg(dead_addr().await)
        .route(Route::app("/chat", "chat").set("auth", "users"))
        .build();
    let gw = TestGateway::start(&toml).await;
    let addr = gw.http();
    let exp = now() as i64 + 3600;
    let base =
        serde_json::json!({ "aud": "wsgate", "iss": "https://auth.example.test", "exp": exp });
    let mut numeric = base.clone();
    numeric["sub"] = serde_json::json!(12345);
    for (what, claims) in [("no sub", base), ("a numeric sub", numeric)] {
        let t = Key::hmac(SECRET).sign(&claims, None);
        // Valid tokens, so the access phase passes them; the chat must not
        // then let the client be whoever `?user=` says.
        let r = head_of(
            addr,
            handshake(&format!("/chat/ws?user=alice&token={t}"), WS_HEADERS),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 401 "), "{what}: {r}");
        assert!(r.contains("invalid_token"), "{what}: {r}");
        let r = get(addr, &format!("/chat/sse?user=alice&rooms=lobby&token={t}")).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert!(r.text().contains("names no user"), "{what}: {}", r.text());
        let bearer = format!("Bearer {t}");
        let r = crate::common::post(
            addr,
            "/chat/send?user=alice",
            r#"{"type":"dm","to":"bob","text":"hi"}"#,
            Some(&bearer),
        )
        .await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
    }
}
