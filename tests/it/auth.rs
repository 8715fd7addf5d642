//! Token authentication over real sockets (spec §9): tokens made here with
//! keys generated here (HS256, RS256, PS256, ES256, ES384, EdDSA; PEM files
//! and a JWKS), verified by a real gateway in front of real upstreams.

#![allow(clippy::result_large_err)]

use crate::common;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use common::raw::{handshake, read_close, read_head, WS_HEADERS};
use common::*;
use http::Response;
use http_body_util::Full;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key and its public half as PEM.
struct Key {
    alg: Algorithm,
    enc: EncodingKey,
    public_pem: String,
}

impl Key {
    fn generate(alg: Algorithm) -> Self {
        let rc = match alg {
            Algorithm::RS256 | Algorithm::PS256 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            other => panic!("no key pair for {other:?}"),
        };
        let kp = rcgen::KeyPair::generate_for(rc).expect("key pair");
        let private = kp.serialize_pem();
        let enc = match alg {
            Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(private.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()),
            _ => EncodingKey::from_ec_pem(private.as_bytes()),
        }
        .expect("encoding key");
        Self {
            alg,
            enc,
            public_pem: kp.public_key_pem(),
        }
    }

    fn hmac(secret: &[u8]) -> Self {
        Self {
            alg: Algorithm::HS256,
            enc: EncodingKey::from_secret(secret),
            public_pem: String::new(),
        }
    }

    fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut h = Header::new(self.alg);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, claims, &self.enc).expect("sign")
    }
}

fn claims(sub: &str, aud: &str, exp: i64) -> Value {
    json!({ "sub": sub, "aud": aud, "iss": "https://auth.example.test", "exp": exp, "roles": ["admin", "dev"] })
}

fn valid(sub: &str) -> Value {
    claims(sub, "wsgate", now() as i64 + 3600)
}

/// An upstream answering with the identity headers it received.
async fn whoami_upstream() -> SocketAddr {
    http_upstream(|req| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let body = format!(
            "id={} roles={} auth={}",
            h("x-user-id"),
            h("x-user-roles"),
            h("authorization").len()
        );
        Response::new(Full::new(Bytes::from(body)))
    })
    .await
}

/// The response head to a raw request (read up to the blank line, so a
/// kept-alive connection is not waited on).
async fn head_of(addr: SocketAddr, request: String) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_head(&mut s).await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn get_auth(addr: SocketAddr, path: &str, token: &str) -> Reply {
    get_with(addr, path, &[("authorization", &bearer(token))]).await
}

/// A 401 that tells the client nothing about which check failed.
fn assert_invalid(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(
        r.headers["www-authenticate"], "Bearer realm=\"wsgate\", error=\"invalid_token\"",
        "{what}"
    );
    assert_eq!(r.text(), "invalid token\n", "{what}");
}

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn every_algorithm_valid_forged_expired_wrong_audience() {
    let keys: Vec<Key> = [
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ]
    .into_iter()
    .map(Key::generate)
    .collect();
    let up = whoami_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut pems = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let p = dir.path().join(format!("key{i}.pem"));
        std::fs::write(&p, &k.public_pem).unwrap();
        pems.push(toml::Value::from(p.to_str().unwrap()));
    }
    let toml = Cfg::new()
        .listener_plain()
        .upstream("api", &[up])
        .set("auth.users.hmac_secret", format!("base64:{}", b64(SECRET)))
        .set("auth.users.public_keys", pems)
        .set("auth.users.issuer", "https://auth.example.test")
        .set("auth.users.audience", "wsgate")
        .set("auth.users.leeway", "5s")
        .route(Route::upstream("/api/", "api").set("auth", "users"))
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;
    let addr = gw.http();

    let mut all = vec![Key::hmac(SECRET)];
    all.extend(keys);
    for k in &all {
        let name = format!("{:?}", k.alg);
        let r = get_auth(addr, "/api/x", &k.sign(&valid("alice"), None)).await;
        assert_eq!(r.status, 200, "{name} valid: {}", r.text());
        // Same algorithm, another key: the signature does not verify.
        let forger = match k.alg {
            Algorithm::HS256 => Key::hmac(b"another-secret-another-secret-another"),
            alg => Key::generate(alg),
        };
        let r = get_auth(addr, "/api/x", &forger.sign(&valid("mallory"), None)).await;
        assert_invalid(&r, &format!("{name} forged"));
        let expired = claims("alice", "wsgate", now() as i64 - 3600);
        assert_invalid(
            &get_auth(addr, "/api/x", &k.sign(&expired, None)).await,
            &format!("{name} expired"),
        );
        let other_aud = claims("alice", "someone-else", now() as i64 + 3600);
        assert_invalid(
            &get_auth(addr, "/api/x", &k.sign(&other_aud, None)).await,
            &format!("{name} audience"),
        );
        // A bit flipped in the payload.
        let t = k.sign(&valid("alice"), None);
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        parts[1] = b64url(&serde_json::to_vec(&valid("admin")).unwrap());
        assert_invalid(
            &get_auth(addr, "/api/x", &parts.join(".")).await,
            &format!("{name} tampered"),
        );
    }
    // The `none` algorithm is never accepted.
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(&serde_json::to_vec(&valid("alice")).unwrap())
    );
    assert_invalid(&get_auth(addr, "/api/x", &none).await, "alg none");
    assert_invalid(&get_auth(addr, "/api/x", "garbage").await, "garbage");
    // No token at all: realm only, no error code (RFC 6750 §3.1).
    let r = get(addr, "/api/x").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"wsgate\"");
    assert_eq!(r.text(), "authentication required\n");
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn ps256_and_jwks_keys_are_picked_by_kid() {
    let rsa = Key::generate(Algorithm::RS256);
    let ps = Key {
        alg: Algorithm::PS256,
        enc: rsa.enc.clone(),
        public_pem: String::new(),
    };
    let ec = Key::generate(Algorithm::ES256);
    let mut set = JwkSet { keys: Vec::new() };
    for (k, kid) in [(&rsa, "r1"), (&ec, "e1")] {
        let mut jwk = Jwk::from_encoding_key(&k.enc, k.alg).expect("jwk");
        jwk.common.key_id = Some(kid.into());
        // No alg binding on the RSA key: RS256 and PS256 both use it.
        if kid == "r1" {
            jwk.common.key_algorithm = None;
        }
        set.keys.push(jwk);
    }
    let up = whoami_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::to_vec(&set).unwrap()).unwrap();
    let toml = Cfg::new()
        .listener_plain()
        .upstream("api", &[up])
        .set("auth.idp.jwks", jwks.to_str().unwrap())
        .set("auth.idp.audience", "wsgate")
        .route(Route::upstream("/api/", "api").set("auth", "idp"))
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;
    let addr = gw.http();
    for (k, kid) in [(&rsa, "r1"), (&ps, "r1"), (&ec, "e1")] {
        let r = get_auth(addr, "/api/", &k.sign(&valid("alice"), Some(kid))).await;
        assert_eq!(r.status, 200, "{:?} kid {kid}: {}", k.alg, r.text());
    }
    assert_invalid(
        &get_auth(addr, "/api/", &rsa.sign(&valid("alice"), Some("nope"))).await,
        "unknown kid",
    );
    // The kid names the EC key, the token says RS256: no key fits.
    assert_invalid(
        &get_auth(addr, "/api/", &rsa.sign(&valid("alice"), Some("e1"))).await,
        "kid of another key type",
    );
    let expired = claims("alice", "wsgate", now() as i64 - 3600);
    assert_invalid(
        &get_auth(addr, "/api/", &ec.sign(&expired, Some("e1"))).await,
        "expired",
    );
    let forger = Key::generate(Algorithm::ES256);
    assert_invalid(
        &get_auth(addr, "/api/", &forger.sign(&valid("alice"), Some("e1"))).await,
        "forged",
    );
}

fn hs_gateway_cfg(up: SocketAddr) -> Cfg {
    Cfg::new()
        .listener_plain()
        .admin()
        .upstream("api", &[up])
        .set("auth.users.hmac_secret", format!("base64:{}", b64(SECRET)))
        .set("auth.users.audience", "wsgate")
        .set("auth.users.leeway", "0s")
}

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
    // A route without auth: the client's copies never reach the upstream.
    let r = get_with(
        addr,
        "/open/",
        &[("x-user-id", "root"), ("X-User-Roles", "x")],
    )
    .await;
    assert!(r.text().starts_with("id=- roles=- "), "{}", r.text());
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
        r#"wsgate_auth_total{route="/api/",result="ok"} 4"#,
        r#"wsgate_auth_total{route="/api/",result="missing"} 1"#,
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
    assert!(!m.contains(std::str::from_utf8(SECRET).unwrap()));
}

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

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the upstream reports in time")
        .expect("upstream alive")
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

    for (offer, upstream_sees) in [
        (format!("chat, bearer.{t}"), "protocols chat"),
        (format!("bearer.{t}"), "protocols -"),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let extra = format!("{WS_HEADERS}Sec-WebSocket-Protocol: {offer}\r\n");
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
async fn wsgate_token_mints_what_the_gateway_accepts_and_reload_rotates_keys() {
    let up = whoami_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, "a-development-secret-of-32-bytes-at-least\n").unwrap();
    let mut claims_map = toml::Table::new();
    claims_map.insert("X-User-Id".into(), "sub".into());
    claims_map.insert("X-User-Roles".into(), "rooms".into());
    let toml = Cfg::new()
        .listener_plain()
        .upstream("api", &[up])
        .set(
            "auth.users.hmac_secret",
            format!("file:{}", secret.display()),
        )
        .set("auth.users.audience", "wsgate")
        .route(
            Route::upstream("/api/", "api")
                .set("auth", "users")
                .set("auth_claims_to_headers", toml::Value::Table(claims_map)),
        )
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;
    let config = gw.dir.path().join("wsgate.toml");
    let mint = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("-c")
            .arg(&config)
            .arg("token")
            .args(args)
            .output()
            .expect("run wsgate token")
    };
    let out = mint(&[
        "--sub",
        "alice",
        "--rooms",
        "lobby,team-7-*",
        "--ttl",
        "10m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = get_auth(gw.http(), "/api/", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("id=alice roles=lobby,team-7-* "),
        "{}",
        r.text()
    );

    let out = mint(&["--auth", "nope", "--sub", "alice"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [auth.nope]"));

    // Key rotation: a new secret on disk and a reload (what SIGHUP runs).
    std::fs::write(&secret, "the-next-secret-which-is-also-32-bytes-long").unwrap();
    gw.handle
        .reload(wsgate::config::load(&config).expect("config"))
        .await
        .expect("reload");
    assert_invalid(&get_auth(gw.http(), "/api/", &token).await, "old key");
    let out = mint(&["--sub", "bob"]);
    let fresh = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(get_auth(gw.http(), "/api/", &fresh).await.status, 200);
}

#[test]
fn config_errors_name_the_key_and_position() {
    let text = "[[listener]]\naddr = \"127.0.0.1:0\"\n\n[auth.users]\nhmac_secret = \"env:WSGATE_TEST_SURELY_UNSET\"\ntoken_from = [\"header\", \"form:x\"]\n\n[[route]]\npath = \"/\"\napp = \"echo\"\nauth = \"nobody\"\n";
    let e = wsgate::config::parse(std::path::Path::new("t.toml"), text)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.toml:5:15: auth.users.hmac_secret: environment variable WSGATE_TEST_SURELY_UNSET is not set"),
        "{e}"
    );
    assert!(e.contains("t.toml:6:25: auth.users.token_from"), "{e}");
    assert!(
        e.contains("t.toml:11:8: route[0].auth: no [auth.nobody]"),
        "{e}"
    );
    let short =
        "[[listener]]\naddr = \"127.0.0.1:0\"\n[auth.u]\nhmac_secret = \"base64:c2hvcnQ=\"\n";
    let e = wsgate::config::parse(std::path::Path::new("t.toml"), short)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 32 are required"), "{e}");
    assert!(!e.contains("c2hvcnQ"), "the secret is echoed: {e}");
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
