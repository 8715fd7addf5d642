//! Sticky sessions: the sealed cookie (pinning, failover with a new cookie,
//! tampering, `Secure` on TLS), WebSocket upgrades pinned by cookie and by
//! address, and hash stickiness by ip, header and query (with the consistent
//! hash's key movement when a server joins).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::{
    addrs, api, cookie_header, full_set_cookie, gateway, is_up, loopback, req, send_from, server,
    set_cookie, three, ws_close, ws_open, Upstream,
};
use crate::common::{self, get, get_with, send_on, Listener, Reply, TestGateway};
use wsgate::upstream::Pool;

// ---------------------------------------------------------------------------
// Sticky cookie.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sticky_cookie_pins_twenty_requests_and_fails_over_with_a_new_cookie() {
    let (a, b, c) = three().await;
    let ups = [&a, &b, &c];
    let gw = gateway(
        api(&addrs(&ups))
            .set("upstream.api.sticky", "cookie")
            .set("upstream.api.max_fails", 1)
            .set("upstream.api.fail_timeout", "60s")
            .set("upstream.api.retries", 1),
    )
    .await;

    let first = get(gw.http(), "/").await;
    let pinned = server(&first);
    let full = full_set_cookie(&first.headers);
    assert!(full.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{full}");
    let token = set_cookie(&first.headers).expect("cookie set on first response");
    for _ in 0..20 {
        let r = get_with(gw.http(), "/", &[("cookie", &cookie_header(&token))]).await;
        assert_eq!(server(&r), pinned);
        assert_eq!(
            set_cookie(&r.headers),
            None,
            "a valid cookie is not re-issued"
        );
    }

    // Its server dies: the request is served elsewhere with a new cookie.
    let dead = ups
        .iter()
        .find(|u| u.name == pinned)
        .expect("pinned upstream");
    dead.kill().await;
    let r = get_with(gw.http(), "/", &[("cookie", &cookie_header(&token))]).await;
    let moved = server(&r);
    assert_ne!(moved, pinned);
    let token2 = set_cookie(&r.headers).expect("a new cookie after failover");
    assert_ne!(token2, token);
    for _ in 0..20 {
        assert_eq!(
            server(&get_with(gw.http(), "/", &[("cookie", &cookie_header(&token2))]).await),
            moved
        );
    }
    // The old cookie names a server now marked down: also re-chosen.
    assert!(!is_up(&gw, dead.addr));
    let r = get_with(gw.http(), "/", &[("cookie", &cookie_header(&token))]).await;
    assert_ne!(server(&r), pinned);
    assert!(set_cookie(&r.headers).is_some());
}

#[tokio::test]
async fn tampered_or_garbage_cookie_is_ignored_and_replaced() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "cookie")).await;
    let token = set_cookie(&get(gw.http(), "/").await.headers).expect("cookie");
    let mut chars: Vec<char> = token.chars().collect();
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let mut servers = HashSet::new();
    for bad in [tampered.as_str(), "garbage", "", &"A".repeat(66)] {
        for _ in 0..3 {
            let r = get_with(gw.http(), "/", &[("cookie", &cookie_header(bad))]).await;
            servers.insert(server(&r));
            let fresh = set_cookie(&r.headers).expect("a bad cookie is replaced");
            assert_ne!(fresh, bad);
        }
    }
    // Not pinned: round robin spread them.
    assert_eq!(servers.len(), 3, "{servers:?}");
}

#[tokio::test]
async fn sticky_cookie_is_secure_on_tls_listeners() {
    let a = Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = common::write_cert(dir.path(), "localhost", &["localhost"]);
    // Another address than the plain listener's: listeners are told apart by
    // their configured address.
    let gw = TestGateway::start_in(
        &api(&[a.addr])
            .set("upstream.api.sticky", "cookie")
            .listener(Listener::at("127.0.0.2:0").tls(&crt, &key))
            .build(),
        dir,
    )
    .await;

    let plain = full_set_cookie(&get(gw.http(), "/").await.headers);
    assert!(!plain.contains("Secure"), "{plain}");

    let stream = common::tls_connect(
        gw.https(),
        common::tls_client(&crt, &[b"http/1.1"]),
        "localhost",
    )
    .await;
    let r = send_on(stream, req("GET", "/", &[], "")).await;
    let secure = full_set_cookie(&r.headers);
    assert!(
        secure.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure"),
        "{secure}"
    );
}

// ---------------------------------------------------------------------------
// WebSocket stickiness.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn websocket_upgrades_are_pinned_by_cookie() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "cookie")).await;
    let (ws, resp, pinned) = ws_open(gw.http(), None, None).await;
    let token = set_cookie(resp.headers()).expect("the 101 carries Set-Cookie");
    assert!(full_set_cookie(resp.headers()).ends_with("; Path=/; HttpOnly; SameSite=Lax"));
    ws_close(ws).await;
    for _ in 0..10 {
        let (ws, resp, name) = ws_open(gw.http(), None, Some(&cookie_header(&token))).await;
        assert_eq!(name, pinned);
        assert_eq!(set_cookie(resp.headers()), None);
        ws_close(ws).await;
    }
    // HTTP requests with the same cookie go to the same server.
    for _ in 0..5 {
        assert_eq!(
            server(&get_with(gw.http(), "/", &[("cookie", &cookie_header(&token))]).await),
            pinned
        );
    }
    // Without the cookie, upgrades are balanced.
    let mut names = HashSet::new();
    for _ in 0..3 {
        let (ws, resp, name) = ws_open(gw.http(), None, None).await;
        assert!(set_cookie(resp.headers()).is_some());
        names.insert(name);
        ws_close(ws).await;
    }
    assert_eq!(names.len(), 3, "{names:?}");
}

#[tokio::test]
async fn websocket_upgrades_are_pinned_by_ip() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "ip")).await;
    let mut by_ip: HashMap<IpAddr, String> = HashMap::new();
    for i in 2..14u8 {
        let ip = loopback(i);
        for _ in 0..3 {
            let (ws, resp, name) = ws_open(gw.http(), Some(ip), None).await;
            assert_eq!(
                set_cookie(resp.headers()),
                None,
                "ip stickiness sets no cookie"
            );
            assert_eq!(
                by_ip.entry(ip).or_insert_with(|| name.clone()),
                &name,
                "{ip} moved"
            );
            ws_close(ws).await;
        }
        // Plain HTTP from the same address lands on the same server.
        assert_eq!(
            server(&send_from(ip, gw.http(), req("GET", "/", &[], "")).await),
            by_ip[&ip]
        );
    }
    let distinct: HashSet<&String> = by_ip.values().collect();
    assert!(
        distinct.len() >= 2,
        "12 addresses all on one server: {by_ip:?}"
    );
}

// ---------------------------------------------------------------------------
// Hash stickiness: ip, header, query.
// ---------------------------------------------------------------------------

/// Asserts that each key always reaches the same server and that 60 keys use
/// all three servers.
async fn assert_sticky_and_spread<F, Fut>(mut send_key: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let mut placement: HashMap<usize, String> = HashMap::new();
    for round in 0..3 {
        for k in 0..60 {
            let name = server(&send_key(k).await);
            let first = placement.entry(k).or_insert_with(|| name.clone());
            assert_eq!(first, &name, "key {k} moved in round {round}");
        }
    }
    let used: HashSet<&String> = placement.values().collect();
    assert_eq!(used.len(), 3, "60 keys over 3 servers: {placement:?}");
}

#[tokio::test]
async fn ip_stickiness_pins_each_address_and_spreads_addresses() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "ip")).await;
    let addr = gw.http();
    assert_sticky_and_spread(|k| send_from(loopback(2 + k as u8), addr, req("GET", "/", &[], "")))
        .await;
}

#[tokio::test]
async fn header_stickiness_pins_each_value_and_falls_back_without_it() {
    let (a, b, c) = three().await;
    let gw =
        gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "header:X-User-Id")).await;
    let addr = gw.http();
    assert_sticky_and_spread(|k| {
        let user = format!("user-{k}");
        async move { get_with(addr, "/", &[("x-user-id", &user)]).await }
    })
    .await;
    // No header: round robin.
    let before = (a.hits(), b.hits(), c.hits());
    for _ in 0..6 {
        server(&get(addr, "/").await);
    }
    assert_eq!(
        (
            a.hits() - before.0,
            b.hits() - before.1,
            c.hits() - before.2
        ),
        (2, 2, 2)
    );
}

#[tokio::test]
async fn query_stickiness_pins_each_value_and_falls_back_without_it() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.sticky", "query:user")).await;
    let addr = gw.http();
    assert_sticky_and_spread(|k| async move { get(addr, &format!("/x?a=1&user=u{k}")).await })
        .await;
    // Same key whatever else the query holds.
    let one = server(&get(addr, "/p?user=alice").await);
    assert_eq!(server(&get(addr, "/q?z=9&user=alice&user=bob").await), one);
    let before = (a.hits(), b.hits(), c.hits());
    for _ in 0..6 {
        server(&get(addr, "/?other=1").await);
    }
    assert_eq!(
        (
            a.hits() - before.0,
            b.hits() - before.1,
            c.hits() - before.2
        ),
        (2, 2, 2)
    );
}

/// Issue 5's movement figure through the public API: 10 000 keys, 3 → 4
/// servers; about 1/4 move, all of them to the new server.
#[test]
fn consistent_hash_moves_about_a_quarter_of_keys_when_a_fourth_server_joins() {
    let pool = |n: usize| {
        let servers: Vec<String> = (1..=n).map(|i| format!("10.1.0.{i}:8080")).collect();
        let text = api(&servers)
            .set("upstream.api.sticky", "header:X-User-Id")
            .build();
        let cfg = wsgate::config::parse(std::path::Path::new("test.toml"), &text).expect("config");
        Pool::new(cfg.upstreams["api"].clone(), None, &[0; 32]).expect("pool")
    };
    let (three, four) = (pool(3), pool(4));
    let place = |p: &Pool, k: &[u8]| {
        p.select(&wsgate::upstream::Affinity::Hash(k.to_vec()), &[])
            .map(|c| c.backend.addr.to_string())
            .expect("a server")
    };
    let mut moved = 0;
    for k in 0..10_000 {
        let key = format!("user-{k}");
        let (before, after) = (place(&three, key.as_bytes()), place(&four, key.as_bytes()));
        if before != after {
            assert_eq!(after, "10.1.0.4:8080", "keys only move to the new server");
            moved += 1;
        }
    }
    println!(
        "3 -> 4 servers: {moved} of 10000 keys moved ({:.2}%)",
        f64::from(moved) / 100.0
    );
    assert!((2_000..=3_000).contains(&moved), "moved {moved}");
}
