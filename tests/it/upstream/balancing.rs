//! Balancing: weighted smooth round robin, random, and least_conn steering
//! away from a server busy with a held request or an open WebSocket.

use std::collections::HashSet;

use http::StatusCode;

use super::{addrs, api, api_route, gateway, pool, server, three, ws_close, ws_open, Upstream};
use crate::common::{eventually, get, WAIT};

#[tokio::test]
async fn round_robin_spreads_by_weight() {
    let (a, b, c) = three().await;
    let gw = gateway(
        api_route()
            .weighted_upstream("api", &[(a.addr, 1), (b.addr, 2), (c.addr, 3)])
            .set("upstream.api.balance", "round_robin"),
    )
    .await;
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..60 {
        seen.push(server(&get(gw.http(), "/").await));
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 20, 30));
    // Smooth (nginx's sequence for 1:2:3 is c b a c b c): never 3 in a row.
    assert!(
        seen.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "{seen:?}"
    );
}

#[tokio::test]
async fn random_uses_every_server() {
    let (a, b, c) = three().await;
    let gw = gateway(api(&addrs(&[&a, &b, &c])).set("upstream.api.balance", "random")).await;
    for _ in 0..90 {
        server(&get(gw.http(), "/").await);
    }
    assert!(
        a.hits() > 5 && b.hits() > 5 && c.hits() > 5,
        "{} {} {}",
        a.hits(),
        b.hits(),
        c.hits()
    );
}

#[tokio::test]
async fn least_conn_steers_away_from_a_busy_server() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = gateway(api(&addrs(&[&a, &b])).set("upstream.api.balance", "least_conn")).await;
    let addr = gw.http();
    let p = pool(&gw);
    let inflight = |name: &str| {
        let up = if name == "a" { &a } else { &b };
        p.backend(wsgate::upstream::BackendId::of(&up.addr.to_string()))
            .map(|b| b.inflight())
            .unwrap_or(usize::MAX)
    };

    // One request parked on a server keeps it busy.
    let held = tokio::spawn(async move { get(addr, "/hold").await });
    assert!(eventually(WAIT, || async { a.holding() + b.holding() == 1 }).await);
    let idle = if a.holding() == 1 { "b" } else { "a" };
    for _ in 0..10 {
        // The previous response's count is released when its body is done.
        assert!(eventually(WAIT, || async { inflight(idle) == 0 }).await);
        assert_eq!(server(&get(addr, "/").await), idle);
    }
    a.release.send_replace(true);
    b.release.send_replace(true);
    assert_eq!(held.await.expect("held request").status, StatusCode::OK);

    // An open spliced WebSocket counts as load too.
    assert!(eventually(WAIT, || async { inflight("a") == 0 && inflight("b") == 0 }).await);
    let (ws, _, busy) = ws_open(addr, None, None).await;
    let other = if busy == "a" { "b" } else { "a" };
    assert_eq!(inflight(&busy), 1);
    for _ in 0..10 {
        assert!(eventually(WAIT, || async { inflight(other) == 0 }).await);
        assert_eq!(server(&get(addr, "/").await), other);
    }
    ws_close(ws).await;
    // Once the session ends, both servers share again.
    assert!(eventually(WAIT, || async { inflight("a") == 0 && inflight("b") == 0 }).await);
    let mut seen = HashSet::new();
    for _ in 0..4 {
        assert!(eventually(WAIT, || async { inflight("a") == 0 && inflight("b") == 0 }).await);
        seen.insert(server(&get(addr, "/").await));
    }
    assert_eq!(seen.len(), 2, "idle servers share: {seen:?}");
}

/// `max_conns` (nginx's, HAProxy's `maxconn`): a server holding as many
/// requests and WebSocket sessions as it may take is passed over; once every
/// server is full the answer is 503 with `Retry-After`, for an upgrade too;
/// a place that frees is used again.
#[tokio::test]
async fn a_server_at_max_conns_is_passed_over_and_all_full_is_503() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = gateway(
        api(&addrs(&[&a, &b]))
            .set("upstream.api.max_conns", 1)
            .admin(),
    )
    .await;
    let addr = gw.http();
    let p = pool(&gw);
    let inflight = |up: &Upstream| {
        p.backend(wsgate::upstream::BackendId::of(&up.addr.to_string()))
            .map(|b| b.inflight())
            .unwrap_or(usize::MAX)
    };

    // A request parked on one server fills it: the others all go to the other.
    let held = tokio::spawn(async move { get(addr, "/hold").await });
    assert!(eventually(WAIT, || async { a.holding() + b.holding() == 1 }).await);
    let (parked, idle) = if a.holding() == 1 { (&a, &b) } else { (&b, &a) };
    for _ in 0..4 {
        // The previous response's place is released when its body is done.
        assert!(eventually(WAIT, || async { inflight(idle) == 0 }).await);
        assert_eq!(server(&get(addr, "/").await), idle.name);
    }

    // A spliced session fills the other: every server is full.
    assert!(eventually(WAIT, || async { inflight(idle) == 0 }).await);
    let (ws, _, busy) = ws_open(addr, None, None).await;
    assert_eq!(busy, idle.name);
    let r = get(addr, "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.headers[http::header::RETRY_AFTER], "1");
    assert!(r.text().contains("connection limit"), "{}", r.text());
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let refused = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        other => panic!(
            "expected a 503 to the upgrade, got {:?}",
            other.map(|r| r.1)
        ),
    }
    assert_eq!(
        (inflight(parked), inflight(idle)),
        (1, 1),
        "never over max_conns"
    );
    let status = crate::common::json_of(&get(gw.admin(), "/status").await);
    let servers = status["upstreams"]["api"]["servers"].as_array().cloned();
    for s in servers.expect("servers in /status") {
        assert_eq!(
            (&s["inflight"], &s["max_conns"]),
            (&1.into(), &1.into()),
            "{s}"
        );
    }
    let metrics = get(gw.admin(), "/metrics").await.text();
    for up in [&a, &b] {
        let series = format!(
            "wsgate_upstream_inflight{{upstream=\"api\",server=\"{}\"}} 1\n",
            up.addr
        );
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }

    // The session ends: its server takes requests again.
    ws_close(ws).await;
    assert!(eventually(WAIT, || async { inflight(idle) == 0 }).await);
    assert_eq!(server(&get(addr, "/").await), idle.name);
    a.release.send_replace(true);
    b.release.send_replace(true);
    assert_eq!(held.await.expect("held request").status, StatusCode::OK);
}
