//! The HTTP API: push (token and delivery counts, or disabled), the online
//! and history endpoints, and the demo page.

use http::StatusCode;
use serde_json::json;

use super::{config, gateway};
use crate::common::chat::{is_presence, Client, Sse};
use crate::common::{get, json_of, post};

#[tokio::test]
async fn push_checks_the_token_and_counts_deliveries() {
    let gw = gateway(config().set("app.chat.push_token", "s3cret")).await;
    let addr = gw.http();
    let body = r#"{"room":"lobby","text":"announcement"}"#;
    let r = post(addr, "/chat/api/push", body, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.contains_key("www-authenticate"));
    let r = post(addr, "/chat/api/push", body, Some("Basic czNjcmV0")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = post(addr, "/chat/api/push", body, Some("Bearer wrong")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post(addr, "/chat/api/push", body, Some("Bearer s3cre")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let mut a1 = Client::new(addr, "alice").await;
    let mut a2 = Client::new(addr, "alice").await;
    let mut bob = Client::new(addr, "bob").await;
    for c in [&mut a1, &mut a2, &mut bob] {
        c.join("lobby").await;
    }
    let (mut sse, _) = Sse::open(addr, "/chat/sse?user=carol&rooms=lobby", None).await;
    sse.next_until("own join", |v| is_presence(v, "carol", "join"))
        .await;
    let r = post(addr, "/chat/api/push", body, Some("Bearer s3cret")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(json_of(&r), json!({"delivered":4}));
    for c in [&mut a1, &mut a2, &mut bob] {
        let v = c.recv_until("push", |v| v["type"] == "msg").await;
        assert_eq!(
            (v["from"].as_str(), v["text"].as_str()),
            (Some("system"), Some("announcement"))
        );
    }
    sse.next_until("push", |v| v["type"] == "msg").await;

    let r = post(
        addr,
        "/chat/api/push",
        r#"{"user":"alice","text":"just you","from":"ops"}"#,
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(json_of(&r), json!({"delivered":2}));
    for c in [&mut a1, &mut a2] {
        let v = c.recv().await;
        assert_eq!(
            (v["type"].as_str(), v["from"].as_str(), v["to"].as_str()),
            (Some("dm"), Some("ops"), Some("alice"))
        );
    }
    let r = post(
        addr,
        "/chat/api/push",
        r#"{"user":"nobody","text":"x"}"#,
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(json_of(&r), json!({"delivered":0}));
    let r = post(
        addr,
        "/chat/api/push",
        r#"{"text":"x"}"#,
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    sse.close();
}

#[tokio::test]
async fn push_is_forbidden_when_disabled() {
    let gw = gateway(config()).await;
    let r = post(
        gw.http(),
        "/chat/api/push",
        r#"{"room":"lobby","text":"x"}"#,
        Some("Bearer anything"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(json_of(&r)["code"], "push_disabled");
    let r = post(
        gw.http(),
        "/chat/api/push",
        r#"{"room":"lobby","text":"x"}"#,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn online_and_history_endpoints() {
    let gw = gateway(config()).await;
    let addr = gw.http();
    let r = get(addr, "/chat/api/online").await;
    assert_eq!(json_of(&r), json!({"users":[]}));
    let mut bob = Client::new(addr, "bob").await;
    let _alice = Client::new(addr, "alice").await;
    let r = get(addr, "/chat/api/online").await;
    assert_eq!(
        json_of(&r),
        json!({"users":[{"user":"alice","node":"t1"},{"user":"bob","node":"t1"}]})
    );

    bob.join("lobby").await;
    for i in 0..25 {
        bob.sentinel("lobby", &format!("m{i}")).await;
    }
    // The ring keeps the last 20 (history = 20).
    let r = get(addr, "/chat/api/history?room=lobby&limit=100").await;
    let h = json_of(&r);
    assert_eq!(h["type"], "history");
    let ids: Vec<u64> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(ids, (6..=25).collect::<Vec<_>>());
    let r = get(addr, "/chat/api/history?room=lobby&limit=2").await;
    let texts: Vec<String> = json_of(&r)["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").into())
        .collect();
    assert_eq!(texts, vec!["m23", "m24"]);
    assert_eq!(
        json_of(&get(addr, "/chat/api/history?room=empty").await)["messages"],
        json!([])
    );
    assert_eq!(
        get(addr, "/chat/api/history").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(addr, "/chat/api/history?room=lobby&limit=x")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(addr, "/chat/api/nope").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn demo_page_is_served() {
    let gw = gateway(config()).await;
    let r = get(gw.http(), "/chat?user=alice").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers["location"], "/chat/?user=alice");
    let r = get(gw.http(), "/chat/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/html"));
    // It may not be framed (clickjacking).
    assert_eq!(r.headers["x-frame-options"], "DENY");
    let csp = r.headers["content-security-policy"].to_str().expect("csp");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let page = r.text();
    for id in [
        "id=\"status\"",
        "id=\"log\"",
        "id=\"text\"",
        "id=\"send\"",
        "id=\"users\"",
        "name=\"viewport\"",
    ] {
        assert!(page.contains(id), "page has {id}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "self-contained: no external URLs"
    );
}
