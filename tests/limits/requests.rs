//! Route limits: bursts answered 429 with Retry-After, WebSocket handshakes
//! limited too, keys isolated by client address, header and authenticated
//! user, and bad limit configs named by key and line.

use std::time::Duration;

use http::StatusCode;

use super::{get_from, limit, metrics, retry_after, series};
use crate::common::raw::ws_request;
use crate::common::{self, get, get_with, raw, Cfg, Route, TestGateway, WAIT};

#[tokio::test]
async fn a_burst_is_answered_429_with_retry_after() {
    let gw = TestGateway::start(
        &limit(Cfg::new(), "slow", "1/m", 3, "ip")
            .set("limit.fast.rate", "2/s")
            .set("limit.fast.burst", 1)
            .listener_plain()
            .admin()
            .route(Route::app("/slow", "echo").set("limits", vec!["slow"]))
            .route(Route::app("/fast", "echo").set("limits", vec!["fast"]))
            .build(),
    )
    .await;
    // An echo route answers plain requests 426: that is "passed the limit".
    for _ in 0..3 {
        assert_eq!(
            get(gw.http(), "/slow").await.status,
            StatusCode::UPGRADE_REQUIRED
        );
    }
    let r = get(gw.http(), "/slow").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    // One token per minute: the next one is a minute (rounded up) away.
    let wait = retry_after(&r);
    assert!((59..=60).contains(&wait), "Retry-After {wait}");
    assert!(r.text().contains("slow"), "{}", r.text());

    // 2/s, burst 1: the second at once waits half a second, told as 1.
    assert_eq!(
        get(gw.http(), "/fast").await.status,
        StatusCode::UPGRADE_REQUIRED
    );
    let r = get(gw.http(), "/fast").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), 1);
    // ... and after that wait, it passes again (polled, never slept blind).
    assert!(
        common::eventually(WAIT, || async {
            get(gw.http(), "/fast").await.status == StatusCode::UPGRADE_REQUIRED
        })
        .await
    );

    let m = metrics(&gw).await;
    assert_eq!(
        series(&m, r#"wsgate_limited_total{limit="slow",kind="request"}"#),
        1
    );
    assert!(series(&m, r#"wsgate_limited_total{limit="fast",kind="request"}"#) >= 1);
    assert!(
        m.contains(r#"wsgate_http_requests_total{route="/slow",status="429"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn websocket_handshakes_are_limited_too() {
    let gw = TestGateway::start(
        &limit(Cfg::new(), "ws", "1/m", 1, "ip")
            .listener_plain()
            .admin()
            .route(Route::app("/echo", "echo").set("limits", vec!["ws"]))
            .build(),
    )
    .await;
    let first = raw(
        gw.http(),
        ws_request("/echo").as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    assert!(first.text().starts_with("HTTP/1.1 101"), "{}", first.text());
    let second = raw(gw.http(), ws_request("/echo").as_bytes(), WAIT).await;
    let text = second.answer();
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 60"),
        "{text}"
    );
    let m = metrics(&gw).await;
    assert_eq!(
        series(&m, r#"wsgate_limited_total{limit="ws",kind="handshake"}"#),
        1
    );
    assert!(
        m.contains(r#"wsgate_ws_handshakes_total{route="/echo",result="429"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn keys_are_isolated_by_client_address_and_header() {
    let gw = TestGateway::start(
        &limit(Cfg::new(), "per_ip", "1/m", 1, "ip")
            .set("limit.per_key.rate", "1/m")
            .set("limit.per_key.burst", 1)
            .set("limit.per_key.key", "header:X-Api-Key")
            .listener_plain()
            .route(Route::app("/ip", "echo").set("limits", vec!["per_ip"]))
            .route(Route::app("/key", "echo").set("limits", vec!["per_key"]))
            .build(),
    )
    .await;
    let a = get_from("127.0.0.2", gw.http(), "/ip").await;
    assert_eq!(a.status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(
        get_from("127.0.0.2", gw.http(), "/ip").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another source address has its own bucket.
    assert_eq!(
        get_from("127.0.0.3", gw.http(), "/ip").await.status,
        StatusCode::UPGRADE_REQUIRED
    );
    assert_eq!(
        get_from("127.0.0.3", gw.http(), "/ip").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Header keys: one bucket per value, whatever the address.
    let addr = gw.http();
    let with =
        |k: &'static str| async move { get_with(addr, "/key", &[("x-api-key", k)]).await.status };
    assert_eq!(with("alice").await, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(with("alice").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(with("bob").await, StatusCode::UPGRADE_REQUIRED);
    // Without the header, the client address is the key.
    assert_eq!(
        get_from("127.0.0.4", gw.http(), "/key").await.status,
        StatusCode::UPGRADE_REQUIRED
    );
    assert_eq!(
        get_from("127.0.0.4", gw.http(), "/key").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        get_from("127.0.0.5", gw.http(), "/key").await.status,
        StatusCode::UPGRADE_REQUIRED
    );
}

/// `key = "user"` counts the token's subject: each user has a bucket of
/// their own whatever their address, and users behind one address do not
/// share one (the limit runs after authentication).
#[tokio::test]
async fn user_keys_count_the_authenticated_subject() {
    use base64::Engine;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-limits";
    let gw = TestGateway::start(
        &limit(Cfg::new(), "per_user", "1/m", 1, "user")
            .set(
                "auth.users.hmac_secret",
                format!(
                    "base64:{}",
                    base64::engine::general_purpose::STANDARD.encode(SECRET)
                ),
            )
            .listener_plain()
            .route(
                Route::app("/u", "echo")
                    .set("auth", "users")
                    .set("limits", vec!["per_user"]),
            )
            .build(),
    )
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let token = |sub: &str| {
        let claims = serde_json::json!({ "sub": sub, "exp": exp });
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token")
    };
    let addr = gw.http();
    let as_user = |sub: &'static str| {
        let bearer = format!("Bearer {}", token(sub));
        async move {
            get_with(addr, "/u", &[("authorization", &bearer)])
                .await
                .status
        }
    };
    assert_eq!(as_user("alice").await, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(as_user("alice").await, StatusCode::TOO_MANY_REQUESTS);
    // Same address, another user: a bucket of its own.
    assert_eq!(as_user("bob").await, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(as_user("carol").await, StatusCode::UPGRADE_REQUIRED);
    // Without a token: 401 from authentication, never counted as a user.
    assert_eq!(get(addr, "/u").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_limit_configs_name_the_key_and_line() {
    let cases = [
        ("[limit.a]\nrate = \"20/d\"\n", "3:", "limit.a.rate"),
        ("[limit.a]\nrate = \"20/s\"\nkey = \"cookie\"\n", ":", "limit.a.key"),
        ("[limit.a]\nrate = \"20/s\"\nscope = \"cluster\"\n", ":", "needs a [cluster]"),
        ("[[route]]\npath = \"/\"\napp = \"echo\"\nlimits = [\"nope\"]\n", ":", "route[0].limits: no [limit.nope]"),
        (
            "[limit.h]\nrate = \"1/s\"\nkey = \"header:X-A\"\n[[listener]]\naddr = \"127.0.0.1:0\"\nconnection_limits = [\"h\"]\n",
            ":",
            "use key = \"ip\"",
        ),
        ("[app.chat]\nmessage_rate = \"fast\"\n", ":", "app.chat.message_rate"),
        (
            "[upstream.u]\nservers = [\"127.0.0.1:1\"]\nws_message_rate = \"10/s\"\n",
            ":",
            "needs ws_inspect = true",
        ),
    ];
    for (text, _, want) in cases {
        let text = format!("[[listener]]\naddr = \"127.0.0.1:0\"\n{text}");
        // A second listener line in the listener case is fine (port 0 repeats).
        let err = wsgate::config::parse(std::path::Path::new("t.toml"), &text)
            .expect_err(text.as_str())
            .to_string();
        assert!(err.contains(want), "{want:?} not in {err}");
        // PATH:LINE:COL: message.
        let mut parts = err.splitn(4, ':');
        assert_eq!(parts.next(), Some("t.toml"), "{err}");
        assert!(
            parts.next().is_some_and(|l| l.parse::<usize>().is_ok()),
            "{err}"
        );
        assert!(
            parts.next().is_some_and(|c| c.parse::<usize>().is_ok()),
            "{err}"
        );
    }
}
