//! The chat app with `[app.chat] auth` (docs/auth.md, "Chat"): the user is
//! the token's subject, `rooms` claims forbid other rooms, `refresh` frames
//! extend a session and expiry closes it with 4001 (SSE ends, long-poll
//! answers 401), read-only guests, the per-user connection cap, and the
//! readers of the HTTP API. Tokens are HS256, made here with the test's own
//! secret; one test runs two nodes through a real `redis-server`.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::StatusCode;
use http_body_util::BodyExt;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common;
use common::chat::{is_msg, Client, Sse};
use common::raw::{handshake, read_head, read_server_frame, WS_HEADERS};
use common::redis::Redis;
use common::{eventually, get, get_with, json_of, post, Cfg, TestGateway, WAIT};

const SECRET: &[u8] = b"chat-auth-test-secret-0123456789";
const PUSH: &str = "push-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 token for `sub`, valid for `ttl` seconds, with `extra` claims.
fn token_with(secret: &[u8], sub: &str, ttl: i64, extra: Value) -> String {
    let mut claims = json!({ "sub": sub, "exp": now() as i64 + ttl });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn token(sub: &str, ttl: i64) -> String {
    token_with(SECRET, sub, ttl, json!({}))
}

/// The chat at `/chat` with `[app.chat] auth = "users"` (no leeway, so a
/// short `exp` ends a session within the test's deadlines).
fn config() -> Cfg {
    Cfg::new()
        .set("log.access_log", false)
        .listener_plain()
        .admin()
        .route_app("/chat", "chat")
        .set(
            "auth.users.hmac_secret",
            format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(SECRET)
            ),
        )
        .set("auth.users.leeway", "0s")
        .set("app.chat.auth", "users")
        .set("app.chat.push_token", PUSH)
        .set("app.chat.ping_interval", "30s")
}

async fn connect(addr: SocketAddr, query: &str) -> Client {
    connect_at(addr, &format!("/chat/ws?{query}")).await
}

async fn connect_at(addr: SocketAddr, path: &str) -> Client {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake within deadline")
        .expect("chat handshake");
    let mut c = Client {
        ws,
        user: String::new(),
    };
    let welcome = c.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    c.user = welcome["user"].as_str().expect("user").to_string();
    c
}

/// The status of a refused WebSocket handshake, with its headers.
async fn refused(addr: SocketAddr, query: &str) -> (StatusCode, http::HeaderMap) {
    let url = format!("ws://{addr}/chat/ws?{query}");
    let r = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("answer within deadline");
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            (resp.status(), resp.headers().clone())
        }
        Ok(_) => panic!("handshake {query:?} was accepted"),
        Err(e) => panic!("handshake {query:?} failed without a status: {e}"),
    }
}

#[tokio::test]
async fn the_user_is_the_token_subject_and_bad_tokens_are_refused() {
    let gw = TestGateway::start(&config().build()).await;
    let addr = gw.http();

    // `?user=` is ignored: the token decides.
    let alice = connect(addr, &format!("user=mallory&token={}", token("alice", 60))).await;
    assert_eq!(alice.user, "alice");

    // The `bearer.` subprotocol carries a token too, and is never chosen.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let offer = format!("sec-websocket-protocol: bearer.{}\r\n", token("bob", 60));
    let hs = handshake("/chat/ws", &format!("{WS_HEADERS}{offer}"));
    s.write_all(hs.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
    let welcome = read_server_frame(&mut s).await;
    assert!(
        String::from_utf8_lossy(&welcome.2).contains("\"user\":\"bob\""),
        "{welcome:?}"
    );

    // Two tokens: which is the client's? Refused, as a route's `auth` does.
    let two = format!("token={}&token={}", token("alice", 60), token("bob", 60));
    assert_eq!(refused(addr, &two).await.0, StatusCode::BAD_REQUEST);

    let (status, h) = refused(addr, "user=alice").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let forged = token_with(b"another-secret-another-secret!!", "alice", 60, json!({}));
    for bad in [forged, token("alice", -30), "garbage".to_string()] {
        let (status, h) = refused(addr, &format!("token={bad}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let www = h["www-authenticate"].to_str().unwrap();
        assert!(www.contains("invalid_token"), "{www}");
    }
    // Fallbacks need a token as well.
    assert_eq!(
        get(addr, "/chat/sse?rooms=lobby").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(addr, "/chat/poll?rooms=lobby&user=alice").await.status,
        StatusCode::UNAUTHORIZED
    );
    let send = post(
        addr,
        "/chat/send?user=alice",
        json!({"type":"join","room":"x"}),
        None,
    );
    assert_eq!(send.await.status, StatusCode::UNAUTHORIZED);

    let metrics = get(gw.admin(), "/metrics").await.text();
    for result in ["ok", "missing", "invalid", "expired"] {
        let line = format!("wsgate_auth_total{{route=\"app.chat\",result=\"{result}\"}}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_rooms_claim_forbids_every_other_room_on_every_transport() {
    let gw = TestGateway::start(&config().build()).await;
    let addr = gw.http();
    let t = token_with(SECRET, "carol", 60, json!({"rooms": ["lobby", "team-7-*"]}));

    let mut carol = connect(addr, &format!("token={t}")).await;
    carol.join("lobby").await;
    carol.join("team-7-dev").await;
    for frame in [
        json!({"type":"join","room":"secret"}),
        json!({"type":"history","room":"secret"}),
        json!({"type":"who","room":"team-8"}),
    ] {
        carol.send(frame).await;
        let e = carol.expect_error("forbidden").await;
        assert!(
            e["message"].as_str().unwrap().contains("not allowed"),
            "{e}"
        );
    }

    let forbidden = [
        format!("/chat/sse?rooms=secret&token={t}"),
        format!("/chat/poll?rooms=lobby,secret&token={t}"),
        format!("/chat/api/history?room=secret&token={t}"),
    ];
    for path in &forbidden {
        let r = get(addr, path).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text());
        assert_eq!(json_of(&r)["code"], "forbidden");
    }
    // A stream in an allowed room; joining another through /send is refused.
    let (mut sse, parts) = Sse::open(addr, &format!("/chat/sse?rooms=lobby&token={t}"), None).await;
    assert_eq!(parts.status, StatusCode::OK);
    sse.next_until("welcome", |v| v["type"] == "welcome").await;
    let r = post(
        addr,
        &format!("/chat/send?token={t}"),
        json!({"type":"join","room":"secret"}),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    // The push token reads any room's history.
    let r = get_with(
        addr,
        "/chat/api/history?room=secret",
        &[("authorization", &format!("Bearer {PUSH}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    sse.close();
}

#[tokio::test]
async fn refresh_extends_a_session_and_expiry_closes_with_4001() {
    let gw = TestGateway::start(&config().build()).await;
    let addr = gw.http();
    let mut short = connect(addr, &format!("token={}", token("dave", 2))).await;
    let mut kept = connect(addr, &format!("token={}", token("erin", 2))).await;

    // Someone else's token, or a bad one, changes nothing.
    kept.send(json!({"type":"refresh","token": token("dave", 600)}))
        .await;
    kept.expect_error("forbidden").await;
    kept.send(json!({"type":"refresh","token":"garbage"})).await;
    kept.expect_error("invalid_token").await;
    kept.send(json!({"type":"refresh","token": token("erin", 600)}))
        .await;
    let r = kept
        .recv_until("refreshed", |v| v["type"] == "refreshed")
        .await;
    assert!(r["expires"].as_u64().unwrap() >= now() + 500, "{r}");

    assert_eq!(short.close_code().await, Some(CloseCode::Library(4001)));
    // The refreshed session outlived the other one's token and still works.
    kept.join("lobby").await;
    kept.drain_to("lobby", "still here").await;
}

#[tokio::test]
async fn an_sse_stream_ends_and_a_poll_is_refused_when_the_token_expires() {
    let gw = TestGateway::start(&config().build()).await;
    let addr = gw.http();
    let t = token("frank", 2);
    let (mut sse, parts) = Sse::open(addr, &format!("/chat/sse?rooms=lobby&token={t}"), None).await;
    assert_eq!(parts.status, StatusCode::OK);
    sse.next_until("welcome", |v| v["type"] == "welcome").await;
    let poll = format!("/chat/poll?rooms=lobby&token={t}");
    assert_eq!(get(addr, &poll).await.status, StatusCode::OK);

    // The stream ends by itself (its body finishes) within the deadline.
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(f) = sse.body_mut().frame().await {
            if f.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the SSE stream outlived its token");
    assert!(
        eventually(WAIT, || async {
            get(addr, &poll).await.status == StatusCode::UNAUTHORIZED
        })
        .await,
        "a poll with an expired token was still served"
    );
}

#[tokio::test]
async fn guests_read_but_never_send_and_users_are_capped_per_node() {
    let cfg = config()
        .set("app.chat.anonymous", true)
        .set("app.chat.guest_rooms", vec!["lobby"])
        .set("app.chat.max_connections_per_user", 2);
    let gw = TestGateway::start(&cfg.build()).await;
    let addr = gw.http();

    let mut guest = connect_at(addr, "/chat/ws").await;
    assert!(guest.user.starts_with("guest-"), "{}", guest.user);
    guest.join("lobby").await;
    guest.send(json!({"type":"join","room":"staff"})).await;
    guest.expect_error("forbidden").await;
    guest.msg("lobby", "hi").await;
    let e = guest.expect_error("forbidden").await;
    assert!(e["message"].as_str().unwrap().contains("guests"), "{e}");

    let t = token("gina", 60);
    let mut gina = connect(addr, &format!("token={t}")).await;
    gina.join("lobby").await;
    gina.msg("lobby", "welcome, guest").await;
    guest
        .recv_until("gina's message", |v| is_msg(v, "welcome, guest"))
        .await;

    // A bad token is never a guest.
    assert_eq!(
        refused(addr, "token=garbage").await.0,
        StatusCode::UNAUTHORIZED
    );
    // Two sessions per user: the third handshake and SSE stream get 429.
    let _second = connect(addr, &format!("token={t}")).await;
    let (status, h) = refused(addr, &format!("token={t}")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(h.contains_key("retry-after"));
    let r = get(addr, &format!("/chat/sse?rooms=lobby&token={t}")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json_of(&r)["code"], "too_many_connections");

    // Who is online: the push token or a user token, never anonymous.
    assert_eq!(
        get(addr, "/chat/api/online").await.status,
        StatusCode::UNAUTHORIZED
    );
    for bearer in [format!("Bearer {PUSH}"), format!("Bearer {t}")] {
        let r = get_with(addr, "/chat/api/online", &[("authorization", &bearer)]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(r.text().contains("gina"));
    }
}

/// One chat node of a two-node cluster through `redis`, with auth, returned
/// once `/readyz` says it reached Redis (registered and subscribed).
async fn node(id: &str, redis: &Redis) -> TestGateway {
    let cfg = config()
        .set("server.node_id", id)
        .set("cluster.redis", redis.url())
        .set("cluster.heartbeat", "200ms");
    let gw = TestGateway::start(&cfg.build()).await;
    let admin = gw.admin();
    let ready = eventually(WAIT, || async move {
        get(admin, "/readyz").await.status == StatusCode::OK
    });
    assert!(ready.await, "node {id} never became ready");
    gw
}

#[tokio::test]
async fn two_nodes_with_auth_behave_the_same() {
    let redis = Redis::start().await;
    let (a, b) = (node("na", &redis).await, node("nb", &redis).await);
    let t_alice = token_with(SECRET, "alice", 60, json!({"rooms": ["lobby"]}));
    let mut alice = connect(a.http(), &format!("token={t_alice}")).await;
    let mut bob = connect(b.http(), &format!("token={}", token("bob", 60))).await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    // Both nodes subscribed: alice has heard bob's join from node B.
    alice
        .recv_until("bob's join", |v| {
            v["type"] == "presence" && v["user"] == "bob" && v["state"] == "join"
        })
        .await;
    alice.msg("lobby", "across nodes").await;
    bob.recv_until("alice's message", |v| is_msg(v, "across nodes"))
        .await;
    bob.send(json!({"type":"dm","to":"alice","text":"psst"}))
        .await;
    alice
        .recv_until("bob's dm", |v| v["type"] == "dm" && v["text"] == "psst")
        .await;
    // The same token is judged the same on the other node.
    let mut alice_b = connect(b.http(), &format!("token={t_alice}")).await;
    assert_eq!(alice_b.user, "alice");
    alice_b.send(json!({"type":"join","room":"secret"})).await;
    alice_b.expect_error("forbidden").await;
    assert_eq!(
        refused(b.http(), "user=alice").await.0,
        StatusCode::UNAUTHORIZED
    );
    let r = get_with(
        b.http(),
        "/chat/api/online",
        &[("authorization", &format!("Bearer {t_alice}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let users = json_of(&r)["users"].to_string();
    assert!(users.contains("alice") && users.contains("bob"), "{users}");
}
