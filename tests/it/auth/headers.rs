//! Identity headers: claims copied upstream, and the client's own identity
//! headers stripped everywhere, on HTTP routes and in WebSocket tunnels.

use std::net::SocketAddr;

use serde_json::json;
use tokio::sync::mpsc;

use super::{bearer, head_of, hs_gateway_cfg, next, now, valid, whoami_upstream, Key, SECRET};
use crate::common::raw::{handshake, read_head, WS_HEADERS};
use crate::common::{get, get_with, Route, TestGateway};

#[tokio::test]
async fn claims_go_upstream_and_spoofed_identity_headers_are_stripped_everywhere() {
    let up = whoami_upstream().await;
    let mut claims_map = toml::Table::new();
    claims_map.insert("X-User-Id".into(), "sub".into());
    claims_map.insert("X-User-Roles".into(), "roles".into());
    let toml = hs_gateway_cfg(up)
        .route(
            Route::upstream("/api/", "api")
                .set("auth", "users")
                .set("auth_claims_to_headers", toml::Value::Table(claims_map)),
        )
        .route(Route::upstream("/open/", "api"))
        .build();
    let gw = TestGateway::start(&toml).await;
    let addr = gw.http();
    let hs = Key::hmac(SECRET);
    let t = hs.sign(&valid("alice"), None);
    let r = get_with(
        addr,
        "/api/me",
        &[
            ("authorization", &bearer(&t)),
            ("x-user-id", "root"),
            ("x-user-roles", "superuser"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("id=alice roles=admin,dev "),
        "{}",
        r.text()
    );
    // A claim in UTF-8 goes as it is, not dropped.
    let t8 = hs.sign(&valid("jörg"), None);
    let r = get_with(addr, "/api/me", &[("authorization", &bearer(&t8))]).await;
    assert!(r.text().starts_with("id=jörg "), "{}", r.text());
    // A route without auth: the client's copies never reach the upstream,
    // nor those spelled with `_` (nginx's underscores_in_headers off).
    let r = get_with(
        addr,
        "/open/",
        &[
            ("x-user-id", "root"),
            ("X-User-Roles", "x"),
            ("X_User_Id", "root"),
            ("x_forwarded_for", "6.6.6.6"),
        ],
    )
    .await;
    assert!(r.text().starts_with("id=- roles=- "), "{}", r.text());
    assert!(r.text().ends_with(" underscored="), "{}", r.text());
    // Two Authorization fields: the gateway would check one and the
    // upstream might read the other.
    let r = get_with(
        addr,
        "/api/me",
        &[
            ("authorization", &bearer(&t)),
            ("authorization", "Bearer forged"),
        ],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.text(),
        "bad request: more than one Authorization header\n"
    );
    // Token in the query string and in a cookie (default token_from).
    let r = get(addr, &format!("/api/q?token={t}")).await;
    assert!(r.text().starts_with("id=alice"), "{}", r.text());
    let cookie = format!("a=b; wsgate_token={t}");
    let r = get_with(addr, "/api/c", &[("cookie", &cookie)]).await;
    assert!(r.text().starts_with("id=alice"), "{}", r.text());
    // A token without the claim: the header is left out, not spoofable.
    let no_roles = hs.sign(
        &json!({"sub": "bob", "aud": "wsgate", "exp": now() + 60}),
        None,
    );
    let r = get_with(
        addr,
        "/api/",
        &[
            ("authorization", &bearer(&no_roles)),
            ("x-user-roles", "admin"),
        ],
    )
    .await;
    assert!(r.text().starts_with("id=bob roles=- "), "{}", r.text());
    // Metrics count each decision.
    let _ = get(addr, "/api/").await;
    let m = get(gw.admin(), "/metrics").await.text();
    for line in [
        r#"wsgate_auth_total{route="/api/",result="ok"} 5"#,
        r#"wsgate_auth_total{route="/api/",result="missing"} 1"#,
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
    assert!(!m.contains(std::str::from_utf8(SECRET).unwrap()));
}

/// An upstream that reports each request head it reads, lowercased, and
/// closes without answering.
async fn head_reporting_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let head = read_head(&mut s).await;
            let _ = tx.send(head.to_ascii_lowercase());
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_tunnel_gets_the_claims_and_never_the_clients_identity_headers() {
    let (up, mut heads) = head_reporting_upstream().await;
    let mut claims_map = toml::Table::new();
    claims_map.insert("X-User-Id".into(), "sub".into());
    let toml = hs_gateway_cfg(up)
        .route(
            Route::upstream("/ws/", "api")
                .set("auth", "users")
                .set("auth_claims_to_headers", toml::Value::Table(claims_map)),
        )
        .route(Route::upstream("/open/", "api"))
        .build();
    let gw = TestGateway::start(&toml).await;
    let t = Key::hmac(SECRET).sign(&valid("alice"), None);
    let spoofed = "X-User-Id: root\r\nX-Client-Cert-Subject: CN=root\r\nX-Real-IP: 203.0.113.9\r\n\
                   Forwarded: for=203.0.113.9\r\nX-Forwarded-For: 203.0.113.9\r\n";
    for (path, user) in [("/ws/", Some("alice")), ("/open/", None)] {
        let extra = format!("{WS_HEADERS}Authorization: Bearer {t}\r\n{spoofed}");
        // The upstream closes unanswered: the client gets a 502.
        let _ = head_of(gw.http(), handshake(path, &extra)).await;
        let head = next(&mut heads).await;
        let count = |name: &str| {
            head.lines()
                .filter(|l| l.starts_with(&format!("{name}: ")))
                .count()
        };
        assert_eq!(
            count("x-user-id"),
            usize::from(user.is_some()),
            "{path}: {head}"
        );
        if let Some(u) = user {
            assert!(head.contains(&format!("\r\nx-user-id: {u}\r\n")), "{head}");
        }
        for gone in ["x-client-cert-subject", "x-real-ip", "forwarded"] {
            assert_eq!(count(gone), 0, "{path}: {gone} in {head}");
        }
        for once in [
            "host",
            "connection",
            "upgrade",
            "sec-websocket-key",
            "sec-websocket-version",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
        ] {
            assert_eq!(count(once), 1, "{path}: {once} in {head}");
        }
        assert!(
            head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
            "{head}"
        );
        assert!(
            !head.contains("root") && !head.contains("203.0.113.9"),
            "{head}"
        );
    }
}

/// `underscores_in_headers = true` (nginx's directive) keeps fields named
/// with `_` for applications that need them.
#[tokio::test]
async fn underscored_fields_pass_when_the_server_allows_them() {
    let up = whoami_upstream().await;
    let toml = hs_gateway_cfg(up)
        .set("server.underscores_in_headers", true)
        .route(Route::upstream("/open/", "api"))
        .build();
    let gw = TestGateway::start(&toml).await;
    let r = get_with(gw.http(), "/open/", &[("X_Api_Version", "2")]).await;
    assert!(
        r.text().ends_with(" underscored=x_api_version"),
        "{}",
        r.text()
    );
}
