//! Auth callouts (`auth_request`, docs/auth.md) over real sockets: a real HTTP auth
//! service answers 200 with headers, 401 with `WWW-Authenticate`, 403, 500 or
//! never; the gateway relays, copies, caches and reuses connections.

// tungstenite's handshake callback fixes its (large) error type.
#![allow(clippy::result_large_err)]

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

mod ws;

/// Fails the test instead of hanging when the gateway never answers.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("no answer in time: the gateway hung")
}

/// A real auth service: decides by the `Authorization` header, records every
/// request it sees and counts the TCP connections it accepted.
struct AuthService {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    conns: Arc<AtomicUsize>,
}

impl AuthService {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            s.lock().unwrap().push((parts.headers.clone(), body));
                            Ok::<_, std::convert::Infallible>(decide(&parts.headers).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { addr, seen, conns }
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .expect("a callout")
            .0
            .clone()
    }
}

async fn decide(h: &HeaderMap) -> Response<Full<Bytes>> {
    let auth = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let b = Response::builder();
    // Credentials other than `Authorization`: an API key, a query token.
    let api_key = h.get("x-api-key").and_then(|v| v.to_str().ok());
    let uri = h.get("x-original-uri").and_then(|v| v.to_str().ok());
    let r = match auth {
        "" if api_key == Some("k-alice") => b
            .status(200)
            .header("x-user-id", "alice-key")
            .body(Full::default()),
        "" if uri.is_some_and(|u| u.contains("?token=good")) => b
            .status(200)
            .header("x-user-id", "bob-query")
            .body(Full::default()),
        a if a.starts_with("Bearer good") => b
            .status(200)
            .header("x-user-id", "alice")
            .header("x-groups", "dev")
            .header("x-groups", "ops")
            .header("x-not-listed", "leak")
            .body(Full::new(Bytes::from_static(b"ignored body"))),
        "Bearer anon" => b.status(204).body(Full::default()),
        "Bearer forbidden" => b
            .status(403)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"forbidden by policy"))),
        "Bearer broken" => b
            .status(500)
            .body(Full::new(Bytes::from_static(b"db down at 10.0.0.9"))),
        "Bearer redirect" => b
            .status(302)
            .header("location", "/login")
            .body(Full::default()),
        "Bearer slow" => {
            // Never answers: the gateway's response timeout must decide.
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => b
            .status(401)
            .header("www-authenticate", "Bearer realm=\"test\"")
            .header("content-type", "application/json")
            .header("x-user-id", "should-not-pass")
            .body(Full::new(Bytes::from_static(b"{\"error\":\"login\"}"))),
    };
    r.expect("response")
}

/// An upstream that answers every request with the `x-*` headers it received,
/// echoed as `seen-x-*`, and counts requests.
async fn echo_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = http_upstream(move |req: Request<Incoming>| {
        h.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut b = Response::builder();
            for (k, v) in req.headers() {
                if k.as_str().starts_with("x-") {
                    b = b.header(format!("seen-{k}"), v.clone());
                }
            }
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            b.body(Full::new(body)).expect("response")
        }
    })
    .await;
    (addr, hits)
}

struct Setup {
    gw: TestGateway,
    auth: AuthService,
    up_hits: Arc<AtomicUsize>,
}

/// `/api/` (callout, no cache), `/cached/` (callout, 60s cache), both to the
/// echo upstream; `/ws/` a WebSocket upstream behind a callout.
async fn setup(extra: impl FnOnce(Cfg) -> Cfg) -> Setup {
    let auth = AuthService::start().await;
    let (up, up_hits) = echo_upstream().await;
    let cfg = Cfg::new()
        .listener_plain()
        .admin()
        .upstream("authsvc", &[auth.addr])
        .set("upstream.authsvc.response_timeout", "300ms")
        .upstream("api", &[up])
        .route(
            Route::upstream("/api/", "api")
                .set("auth_request", "authsvc")
                .set("auth_request_path", "/check?v=1")
                .set("auth_request_headers", vec!["X-User-Id", "X-Groups"]),
        )
        .route(
            Route::upstream("/cached/", "api")
                .set("auth_request", "authsvc")
                .set("auth_request_path", "/check")
                .set("auth_request_headers", vec!["X-User-Id"])
                .set("auth_request_cache", "60s"),
        );
    let gw = TestGateway::start(&extra(cfg).build()).await;
    Setup { gw, auth, up_hits }
}

async fn get_h(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    within(get_with(addr, path, headers)).await
}

#[tokio::test]
async fn an_allowed_request_carries_the_listed_headers_and_the_original_request() {
    let s = setup(|c| c).await;
    let r = within(send(
        s.gw.http(),
        request(
            "POST",
            "/api/items?q=1",
            &[
                ("authorization", "Bearer good"),
                ("cookie", "session=abc"),
                ("x-user-id", "mallory"),
                ("x-original-uri", "/spoofed"),
                ("x-client-cert-subject", "CN=admin"),
            ],
            "payload",
        ),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "payload", "the upstream got the body");
    assert_eq!(r.headers["seen-x-user-id"], "alice");
    // A field the answer repeats reaches the upstream with every value.
    let groups: Vec<_> = r.headers.get_all("seen-x-groups").iter().collect();
    assert_eq!(groups, ["dev", "ops"], "{:?}", r.headers);
    assert!(!r.headers.contains_key("seen-x-not-listed"));
    assert!(!r.headers.contains_key("seen-x-client-cert-subject"));
    assert_eq!(s.auth.hits(), 1);
    let (h, body) = s.auth.seen.lock().unwrap()[0].clone();
    assert!(body.is_empty(), "the subrequest has no body");
    assert_eq!(h["authorization"], "Bearer good");
    assert_eq!(h["cookie"], "session=abc");
    assert_eq!(h["x-original-method"], "POST");
    assert_eq!(h["x-original-uri"], "/api/items?q=1");
    assert_eq!(h["x-original-host"], "localhost");
    assert_eq!(h["x-original-for"], "127.0.0.1");
    assert!(!h.contains_key("content-length"));
    assert!(!h.contains_key("x-client-cert-subject"));
    assert_eq!(h["host"], s.auth.addr.to_string().as_str());
}

#[tokio::test]
async fn the_subrequest_carries_no_client_claims_about_address_or_identity() {
    // `/open/` sets claim headers (on any route, clients may not send them).
    let s = setup(|c| {
        c.set(
            "auth.users.hmac_secret",
            format!("base64:{}", "A".repeat(44)),
        )
        .route(Route::upstream("/open/", "api").set("auth", "users").set(
            "auth_claims_to_headers",
            {
                let mut t = toml::Table::new();
                t.insert("X-Tenant".into(), "tid".into());
                toml::Value::Table(t)
            },
        ))
    })
    .await;
    let r = get_h(
        s.gw.http(),
        "/api/x",
        &[
            ("authorization", "Bearer anon"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-real-ip", "10.9.9.9"),
            ("true-client-ip", "10.9.9.9"),
            ("forwarded", "for=10.9.9.9"),
            ("x-tenant", "acme"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = s.auth.last();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h:?}");
    assert_eq!(h["x-original-for"], "127.0.0.1");
    for spoofed in ["x-real-ip", "true-client-ip", "forwarded", "x-tenant"] {
        assert!(
            !h.contains_key(spoofed),
            "{spoofed} reached the auth service: {h:?}"
        );
    }
}

#[tokio::test]
async fn client_copies_of_listed_headers_never_pass_even_when_the_service_sets_none() {
    let s = setup(|c| c).await;
    let r = get_h(
        s.gw.http(),
        "/api/x",
        &[
            ("authorization", "Bearer anon"),
            ("x-user-id", "mallory"),
            ("X-User-ID", "eve"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("seen-x-user-id"), "{:?}", r.headers);
}

#[tokio::test]
async fn denials_are_relayed_and_nothing_reaches_the_upstream() {
    let s = setup(|c| c).await;
    let r = get_h(s.gw.http(), "/api/x", &[("authorization", "Bearer nope")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"test\"");
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(!r.headers.contains_key("x-user-id"));
    assert_eq!(r.text(), "{\"error\":\"login\"}");
    let r = get_h(s.gw.http(), "/api/x", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "no credentials at all");
    let r = get_h(
        s.gw.http(),
        "/api/x",
        &[("authorization", "Bearer forbidden")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.text(), "forbidden by policy");
    assert_eq!(s.up_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn errors_and_timeouts_are_503_without_detail() {
    let s = setup(|c| c).await;
    for auth in ["Bearer broken", "Bearer redirect", "Bearer slow"] {
        let r = get_h(s.gw.http(), "/api/x", &[("authorization", auth)]).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{auth}");
        let text = r.text();
        assert!(
            !text.contains("10.0.0.9") && !text.contains("127.0.0.1"),
            "{text}"
        );
    }
    assert_eq!(s.up_hits.load(Ordering::SeqCst), 0);
    let m = within(get(s.gw.admin(), "/metrics")).await.text();
    assert!(
        m.contains("wsgate_auth_total{route=\"/api/\",result=\"callout_error\"} 3"),
        "{m}"
    );
}

#[tokio::test]
async fn an_unreachable_auth_service_is_503() {
    let dead = dead_addr().await;
    let s = setup(|c| {
        c.upstream("deadauth", &[dead])
            .route(Route::upstream("/dead/", "api").set("auth_request", "deadauth"))
    })
    .await;
    let r = get_h(s.gw.http(), "/dead/x", &[("authorization", "Bearer good")]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.up_hits.load(Ordering::SeqCst), 0);
}

/// The access line of a callout's 503 names the cause, the server's
/// failure, not the pool left with no other server to try (the tenth
/// probe: every cause read "no server of pool ... is usable").
#[tokio::test]
async fn the_access_line_of_an_unreachable_auth_service_names_the_cause() {
    let dead = dead_addr().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let [port] = common::redis::free_ports();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = Cfg::new()
        .listener(Listener::at(addr))
        .upstream("deadauth", &[dead])
        .upstream("api", &[dead])
        .route(Route::upstream("/dead/", "api").set("auth_request", "deadauth"))
        .build();
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, cfg).expect("write config");
    let mut gw = common::process::WsgateProc::start(&path);
    gw.wait_for("listening", WAIT);
    let r = within(get(addr, "/dead/x")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let line = gw.wait_for("path=\"/dead/x\"", WAIT);
    assert!(
        line.contains(&format!("auth service unavailable: {dead}: connect failed")),
        "{line}"
    );
}

#[tokio::test]
async fn decisions_are_cached_per_credentials() {
    let s = setup(|c| c).await;
    let good = [("authorization", "Bearer good"), ("cookie", "a=1")];
    for _ in 0..3 {
        let r = get_h(s.gw.http(), "/cached/x", &good).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers["seen-x-user-id"], "alice",
            "cached headers are copied too"
        );
    }
    assert_eq!(s.auth.hits(), 1, "identical credentials: one callout");
    // Other credentials (even only another cookie) are asked about.
    let r = get_h(
        s.gw.http(),
        "/cached/x",
        &[("authorization", "Bearer good"), ("cookie", "a=2")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.auth.hits(), 2);
    let r = get_h(
        s.gw.http(),
        "/cached/x",
        &[("authorization", "Bearer good2")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.auth.hits(), 3);
    // Denials are cached as well, with their answer.
    for _ in 0..2 {
        let r = get_h(
            s.gw.http(),
            "/cached/x",
            &[("authorization", "Bearer nope")],
        )
        .await;
        assert_eq!(r.status, 401);
        assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"test\"");
    }
    assert_eq!(s.auth.hits(), 4);
    // Errors are not: each asks again.
    for _ in 0..2 {
        let r = get_h(
            s.gw.http(),
            "/cached/x",
            &[("authorization", "Bearer broken")],
        )
        .await;
        assert_eq!(r.status, 503);
    }
    assert_eq!(s.auth.hits(), 6);
    // Without a cache every request is a callout.
    for _ in 0..2 {
        get_h(s.gw.http(), "/api/x", &good).await;
    }
    assert_eq!(s.auth.hits(), 8);
    let m = within(get(s.gw.admin(), "/metrics")).await.text();
    assert!(
        m.contains("wsgate_auth_total{route=\"/cached/\",result=\"ok\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("wsgate_auth_total{route=\"/cached/\",result=\"callout_denied\"} 2"),
        "{m}"
    );
}

/// The default key holds header credentials only. A request with none of
/// them (here: an API key the service reads) is never answered from the
/// cache, so it cannot get another client's decision; with the API key and
/// query token named as the key, their decisions are cached per value.
#[tokio::test]
async fn cache_keys_hold_what_they_name_and_keyless_requests_are_always_asked() {
    let s = setup(|c| {
        c.route(
            Route::upstream("/keyed/", "api")
                .set("auth_request", "authsvc")
                .set("auth_request_headers", vec!["X-User-Id"])
                .set("auth_request_cache", "60s")
                .set(
                    "auth_request_cache_key",
                    vec!["header:X-Api-Key", "query:token"],
                ),
        )
    })
    .await;
    let gw = s.gw.http();
    let r = get_h(gw, "/cached/x", &[("x-api-key", "k-alice")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["seen-x-user-id"], "alice-key");
    for _ in 0..2 {
        let r = get_h(gw, "/cached/x", &[]).await;
        assert_eq!(r.status, 401, "another client's decision was reused");
    }
    assert_eq!(s.auth.hits(), 3, "keyless requests are each asked about");

    for _ in 0..2 {
        let r = get_h(gw, "/keyed/x", &[("x-api-key", "k-alice")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["seen-x-user-id"], "alice-key");
    }
    assert_eq!(s.auth.hits(), 4, "the API key's decision is cached");
    let r = get_h(gw, "/keyed/x", &[("x-api-key", "k-eve")]).await;
    assert_eq!(r.status, 401);
    for path in ["/keyed/x?token=good", "/keyed/y?token=good"] {
        let r = get_h(gw, path, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["seen-x-user-id"], "bob-query");
    }
    assert_eq!(s.auth.hits(), 6, "the query token's decision is cached");
    let r = get_h(gw, "/keyed/x?token=bad", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(s.auth.hits(), 7);
}

#[tokio::test]
async fn callouts_reuse_keep_alive_connections() {
    let s = setup(|c| c).await;
    const N: usize = 30;
    for i in 0..N {
        let auth = format!("Bearer good-{i}");
        let r = get_h(s.gw.http(), "/api/x", &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200);
    }
    // Some concurrency too: at most one connection per request in flight.
    let mut tasks = Vec::new();
    for i in 0..5 {
        let addr = s.gw.http();
        tasks.push(tokio::spawn(async move {
            let auth = format!("Bearer good-c{i}");
            get_h(addr, "/api/x", &[("authorization", &auth)])
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!(s.auth.hits(), N + 5);
    let conns = s.auth.conns.load(Ordering::SeqCst);
    assert!(conns <= 6, "{} callouts over {conns} connections", N + 5);
}
