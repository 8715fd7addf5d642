//! Health and retries: active and passive health taking servers out (and
//! back), the all-down 502 fast path, and which requests are retried (and
//! never once a response byte arrived).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{
    addrs, api, backend_of, gateway, half_response_upstream, hanging_up_upstream, is_up, pool, req,
    server, ws_close, ws_open, Upstream,
};
use crate::common::{body_summing_upstream, dead_addr, eventually, get, send, WAIT};

// ---------------------------------------------------------------------------
// Health.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn active_health_takes_a_server_out_and_brings_it_back() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = gateway(
        api(&addrs(&[&a, &b]))
            .set("upstream.api.health.path", "/healthz")
            .set("upstream.api.health.interval", "50ms")
            .set("upstream.api.health.timeout", "1s")
            .set("upstream.api.health.healthy", 2)
            .set("upstream.api.health.unhealthy", 2),
    )
    .await;
    a.set_health(503);
    assert!(eventually(WAIT, || async { !is_up(&gw, a.addr) }).await);
    assert!(!backend_of(&gw, a.addr).health().active_up());
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(server(&get(gw.http(), "/").await), "b");
    }
    assert_eq!(a.hits(), before);

    a.set_health(200);
    assert!(eventually(WAIT, || async { is_up(&gw, a.addr) }).await);
    let mut names = HashSet::new();
    for _ in 0..4 {
        names.insert(server(&get(gw.http(), "/").await));
    }
    assert!(names.contains("a"), "{names:?}");
}

/// A server whose health path answers 200 with a body that never ends is
/// healthy, and is not read past a small buffer: the probe reads the
/// status, takes 16 KiB of body at most, and drops the connection. Before,
/// the probe read the body whole until its timeout (hundreds of MB held per
/// round from a fast server) and then judged the server down.
#[tokio::test]
async fn a_health_answer_with_an_endless_body_is_a_pass() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probes = Arc::new(AtomicUsize::new(0));
    let seen = probes.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let mut chunk = b"4000\r\n".to_vec();
                chunk.resize(chunk.len() + 0x4000, b'x');
                chunk.extend_from_slice(b"\r\n");
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let gw = gateway(
        api(&[addr])
            .set("upstream.api.health.path", "/healthz")
            .set("upstream.api.health.interval", "100ms")
            .set("upstream.api.health.timeout", "300ms")
            .set("upstream.api.health.healthy", 1)
            .set("upstream.api.health.unhealthy", 1),
    )
    .await;
    assert!(
        eventually(WAIT, || async { probes.load(Ordering::SeqCst) >= 4 }).await,
        "the server was not probed"
    );
    assert!(is_up(&gw, addr), "a 200 with a long body was judged down");
    assert!(backend_of(&gw, addr).health().active_up());
}

#[tokio::test]
async fn passive_health_marks_a_dead_server_down() {
    let a = Upstream::start("a").await;
    let dead = dead_addr().await;
    let gw = gateway(
        api(&[a.addr, dead])
            .set("upstream.api.max_fails", 2)
            .set("upstream.api.fail_timeout", "60s")
            .set("upstream.api.retries", 1),
    )
    .await;
    // Every request succeeds (retried on `a`) while the dead server fails twice.
    let mut n = 0;
    while is_up(&gw, dead) {
        assert_eq!(server(&get(gw.http(), "/").await), "a");
        n += 1;
        assert!(n < 20, "the dead server was never marked down");
    }
    let down_for = backend_of(&gw, dead)
        .health()
        .passive_down_for(Instant::now());
    assert!(
        down_for.is_some_and(|d| d > Duration::from_secs(50)),
        "{down_for:?}"
    );
    assert!(pool(&gw).cfg.health.is_none(), "passive health only");
    // From now on it is skipped without a connection attempt: no retry needed.
    let gw2 = gw.http();
    for _ in 0..10 {
        assert_eq!(server(&get(gw2, "/").await), "a");
    }
}

#[tokio::test]
async fn all_servers_down_answers_502_at_once() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let gw = gateway(
        api(&[d1, d2])
            .set("upstream.api.max_fails", 1)
            .set("upstream.api.fail_timeout", "60s")
            .set("upstream.api.retries", 1),
    )
    .await;
    // The first request tries both and fails.
    assert_eq!(get(gw.http(), "/").await.status, StatusCode::BAD_GATEWAY);
    let p = pool(&gw);
    assert!(p.backends().iter().all(|b| !p.is_up(b)));
    let t0 = Instant::now();
    for _ in 0..10 {
        let r = get(gw.http(), "/").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert!(
            r.text().contains("no upstream server is available"),
            "{}",
            r.text()
        );
    }
    // A WebSocket upgrade too.
    let mut request = format!("ws://{}/ws", gw.http())
        .into_client_request()
        .expect("ws request");
    request
        .headers_mut()
        .insert("host", HeaderValue::from_static("localhost"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::BAD_GATEWAY)
        }
        other => panic!("expected 502, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Retries.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn idempotent_requests_are_retried_around_a_refused_server() {
    let a = Upstream::start("a").await;
    let dead = dead_addr().await;
    // max_fails = 0: passive health off, so the dead server keeps being chosen.
    let gw = gateway(
        api(&[dead, a.addr])
            .set("upstream.api.max_fails", 0)
            .set("upstream.api.retries", 1),
    )
    .await;
    for method in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"] {
        for _ in 0..4 {
            let r = send(gw.http(), req(method, "/", &[], "")).await;
            assert_eq!(r.status, StatusCode::OK, "{method}");
        }
    }
    assert_eq!(a.hits(), 20);
    // WebSocket upgrades retry a refused connection too.
    for _ in 0..4 {
        let (ws, _, name) = ws_open(gw.http(), None, None).await;
        assert_eq!(name, "a");
        ws_close(ws).await;
    }
}

/// Any request moves to the next server when no connection could be made:
/// nothing reached the server, and its body is still unread (nginx and
/// HAProxy do the same). Before, a POST or a request with a body got the
/// connect error (a 502 for every such request during a rolling restart).
#[tokio::test]
async fn any_request_moves_on_when_the_connect_fails() {
    let a = Upstream::start("a").await;
    let dead = dead_addr().await;
    let gw = gateway(
        api(&[dead, a.addr])
            .set("upstream.api.max_fails", 0)
            .set("upstream.api.retries", 3),
    )
    .await;
    for (method, body) in [
        ("POST", "payload"),
        ("PUT", "payload"),
        ("POST", ""),
        ("PATCH", ""),
    ] {
        let before = a.hits();
        for _ in 0..4 {
            let r = send(gw.http(), req(method, "/", &[], body)).await;
            assert_eq!(r.status, StatusCode::OK, "{method} {body:?}: {}", r.text());
        }
        assert_eq!(a.hits() - before, 4, "{method} with {body:?}");
    }
    // The body arrives whole at the server that takes it.
    let summing = body_summing_upstream().await;
    let gw = gateway(api(&[dead, summing]).set("upstream.api.max_fails", 0)).await;
    let sum: u64 = b"payload".iter().map(|b| u64::from(*b)).sum();
    for _ in 0..2 {
        let r = send(gw.http(), req("POST", "/", &[], "payload")).await;
        assert_eq!(r.text(), format!("7 {sum} None"));
    }
}

/// The same when the server had served keep-alive requests before it went
/// away: its pooled connections, closed by it, are passed over, and a POST
/// still moves on (before, a dead idle connection made it skip the connect
/// check, and the request was lost with the connect error: a 502).
#[tokio::test]
async fn a_post_moves_on_from_a_server_that_left_pooled_connections() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = gateway(
        api(&addrs(&[&a, &b]))
            .set("upstream.api.max_fails", 0)
            .set("upstream.api.retries", 1),
    )
    .await;
    for _ in 0..4 {
        assert_eq!(get(gw.http(), "/").await.status, StatusCode::OK);
    }
    a.kill().await;
    let before = b.hits();
    for _ in 0..4 {
        let r = send(gw.http(), req("POST", "/", &[], "payload")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(server(&r), "b");
    }
    assert_eq!(b.hits() - before, 4);
}

/// Once a server had the request, only an idempotent bodiless one is sent
/// again: the server may have acted on it, and a streamed body is gone.
#[tokio::test]
async fn requests_with_a_body_or_unsafe_methods_are_not_resent_once_a_server_had_them() {
    let a = Upstream::start("a").await;
    let hangs_up = hanging_up_upstream().await;
    let gw = gateway(
        api(&[hangs_up, a.addr])
            .set("upstream.api.max_fails", 0)
            .set("upstream.api.retries", 3),
    )
    .await;
    for (method, body, resent) in [
        ("GET", "", true),
        ("POST", "payload", false),
        ("PUT", "payload", false),
        ("POST", "", false),
        ("PATCH", "", false),
    ] {
        let before = a.hits();
        let mut failed = 0;
        for _ in 0..4 {
            let r = send(gw.http(), req(method, "/", &[], body)).await;
            if r.status == StatusCode::BAD_GATEWAY {
                failed += 1;
            } else {
                assert_eq!(r.status, StatusCode::OK);
            }
        }
        // Round robin alternates: half of them went to the server that hung
        // up and, unless resent, stayed failed; `a` saw each request once.
        let (want_failed, want_hits) = if resent { (0, 4) } else { (2, 2) };
        assert_eq!(failed, want_failed, "{method} with {body:?}");
        assert_eq!(a.hits() - before, want_hits, "{method} with {body:?}");
    }
}

#[tokio::test]
async fn no_retry_once_a_response_byte_arrived() {
    let a = Upstream::start("a").await;
    let (half, half_hits) = half_response_upstream().await;
    let gw = gateway(
        api(&[half, a.addr])
            .set("upstream.api.max_fails", 0)
            .set("upstream.api.retries", 1),
    )
    .await;
    let mut failed = 0;
    for _ in 0..6 {
        let r = get(gw.http(), "/").await;
        if r.status == StatusCode::BAD_GATEWAY {
            failed += 1;
        } else {
            assert_eq!(server(&r), "a");
        }
    }
    assert_eq!(failed, 3);
    assert_eq!(half_hits.load(Ordering::SeqCst), 3);
    assert_eq!(a.hits(), 3, "the half-answered GETs were not sent again");
}

#[tokio::test]
async fn retries_zero_means_one_attempt() {
    let a = Upstream::start("a").await;
    let dead = dead_addr().await;
    let gw = gateway(
        api(&[dead, a.addr])
            .set("upstream.api.max_fails", 0)
            .set("upstream.api.retries", 0),
    )
    .await;
    let statuses: Vec<StatusCode> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(get(gw.http(), "/").await.status);
        }
        v
    };
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::BAD_GATEWAY)
            .count(),
        2,
        "{statuses:?}"
    );
}
