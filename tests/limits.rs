//! Rate limits over real sockets (spec §10, docs/limits.md): route limits on
//! requests and handshakes (429 + Retry-After), keys isolated by source
//! address, the key table bounded under a flood of distinct keys, connection
//! limits closing before TLS, cluster scope across two nodes sharing a real
//! `redis-server`, and message rates (chat, inspected splices). Nothing
//! sleeps to synchronise: every wait polls against a deadline.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::raw::{read_to_close, ws_request};
use common::redis::Redis;
use common::{
    connect_from, get, get_with, raw, request, send_on, Cfg, Listener, Reply, Route, TestGateway,
    WAIT,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// `[limit.NAME]` with `rate` and `burst`, keyed by `key`.
fn limit(cfg: Cfg, name: &str, rate: &str, burst: i64, key: &str) -> Cfg {
    cfg.set(&format!("limit.{name}.rate"), rate)
        .set(&format!("limit.{name}.burst"), burst)
        .set(&format!("limit.{name}.key"), key)
}

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers))
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds")
}

async fn metrics(gw: &TestGateway) -> String {
    get(gw.admin(), "/metrics").await.text()
}

/// The value of one exact series in the metrics text (0 when absent).
fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn get_from(src: &str, addr: SocketAddr, path: &str) -> Reply {
    let s = connect_from(ip(src), addr).await;
    send_on(s, request("GET", path, &[], Bytes::new())).await
}

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

/// Resident set size of this process (the gateway runs in it).
fn rss() -> u64 {
    wsgate::metrics::process_rss_bytes().expect("/proc/self/status")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `keys` requests with distinct `X-Api-Key` values over `conns`
/// keep-alive connections at once, pipelined in batches (a client library
/// would spend more than the gateway); returns how many were limited.
async fn flood(addr: SocketAddr, path: &'static str, keys: u64, conns: u64) -> u64 {
    const BATCH: u64 = 256;
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mine: Vec<u64> = (c..keys).step_by(conns as usize).collect();
            let (mut passed, mut limited) = (0u64, 0u64);
            let mut buf = Vec::new();
            for chunk in mine.chunks(BATCH as usize) {
                let mut out = String::new();
                for n in chunk {
                    out.push_str(&format!(
                        "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: key-{n:08}-{}\r\n\r\n",
                        "x".repeat(40)
                    ));
                }
                s.write_all(out.as_bytes()).await.expect("write batch");
                let want = passed + limited + chunk.len() as u64;
                let mut tmp = [0u8; 65536];
                while passed + limited < want {
                    let n = tokio::time::timeout(WAIT, s.read(&mut tmp))
                        .await
                        .expect("answers in time")
                        .expect("read");
                    assert!(n > 0, "the gateway closed mid-flood");
                    buf.extend_from_slice(&tmp[..n]);
                    // Count whole status lines; keep a partial one for the next read.
                    let mut counted = 0;
                    while let Some(i) = find(&buf[counted..], b"HTTP/1.1 ") {
                        let at = counted + i;
                        if buf.len() < at + 12 {
                            break;
                        }
                        match &buf[at + 9..at + 12] {
                            b"426" => passed += 1,
                            b"429" => limited += 1,
                            other => panic!("unexpected {}", String::from_utf8_lossy(other)),
                        }
                        counted = at + 12;
                    }
                    let keep_from = counted.max(buf.len().saturating_sub(11));
                    buf.drain(..keep_from);
                }
            }
            limited
        }));
    }
    let mut limited = 0;
    for t in tasks {
        limited += t.await.expect("flood task");
    }
    limited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_stays_within_the_cap() {
    const CAP: usize = 10_000;
    const KEYS: u64 = 100_000;
    let gw = TestGateway::start(
        // One token an hour: no bucket is ever full again during the test, so
        // only the cap (not idleness) keeps the table small.
        &limit(Cfg::new(), "api", "1/h", 5, "header:X-Api-Key")
            .set("limit.api.max_keys", CAP as i64)
            .set("log.access_log", false)
            .listener_plain()
            .route(Route::app("/flood", "echo").set("limits", vec!["api"]))
            .build(),
    )
    .await;
    let limiter = gw.handle.limiter("api").expect("limit api");
    // Warm up the paths (allocator arenas, connection state) before measuring.
    flood(gw.http(), "/flood", 2_000, 4).await;
    let before = rss();
    let started = std::time::Instant::now();
    let limited = flood(gw.http(), "/flood", KEYS, 4).await;
    let elapsed = started.elapsed();
    let after = rss();
    let tracked = limiter.tracked_keys();
    eprintln!(
        "flood: {KEYS} distinct keys in {elapsed:?}, tracked {tracked} (cap {CAP}), \
         RSS {} KiB -> {} KiB (+{} KiB)",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    );
    // Every key is new, so each one's first request passes.
    assert_eq!(limited, 0);
    assert!(tracked <= CAP, "tracked {tracked} > cap {CAP}");
    assert!(tracked >= CAP / 2, "the table is used: {tracked}");
    // The table itself is well under 1 MiB at this cap; allow generously for
    // the allocator and the test's own clients.
    assert!(
        after.saturating_sub(before) < 32 << 20,
        "RSS grew by {} KiB",
        (after - before) / 1024
    );
}

#[tokio::test]
async fn connection_limits_close_new_connections_before_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = common::write_cert(dir.path(), "gw", &["localhost"]);
    let toml = limit(Cfg::new(), "conn", "1/m", 2, "ip")
        .listener(Listener::plain().set("connection_limits", vec!["conn"]))
        .listener(
            Listener::plain()
                .tls(&crt, &key)
                .set("connection_limits", vec!["conn"]),
        )
        .admin()
        .route(Route::app("/", "echo"))
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;

    // Plain: two connections from one address are served, the third is closed
    // without a byte.
    for _ in 0..2 {
        let r = get_from("127.0.0.6", gw.http(), "/").await;
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
    }
    let mut s = connect_from(ip("127.0.0.6"), gw.http()).await;
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let r = read_to_close(&mut s, WAIT).await;
    assert!(r.closed() && r.bytes.is_empty(), "{r:?}");
    // Another address is not affected.
    assert_eq!(
        get_from("127.0.0.7", gw.http(), "/").await.status,
        StatusCode::UPGRADE_REQUIRED
    );

    // TLS: a connection within the limit waits for a ClientHello (the TLS
    // handshake timeout is 10 s); one over it is closed before the gateway
    // reads anything, so the client, which sent nothing, sees EOF at once.
    let mut quiet = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(ip("127.0.0.8"), gw.https()).await;
        let r = read_to_close(&mut s, Duration::from_millis(200)).await;
        assert!(!r.closed(), "a connection within the limit was closed");
        quiet.push(s);
    }
    let mut s = connect_from(ip("127.0.0.8"), gw.https()).await;
    let r = read_to_close(&mut s, WAIT).await;
    assert!(r.closed() && r.bytes.is_empty(), "{r:?}");

    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            r#"wsgate_limited_total{limit="conn",kind="connection"}"#
        ),
        2
    );
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

// ---- cluster scope ------------------------------------------------------------------

/// A node sharing `redis` with a cluster-scope limit `shared` (1/m, burst 4)
/// on `/c`.
async fn cluster_node(id: &str, redis: &Redis) -> TestGateway {
    let toml = limit(Cfg::new(), "shared", "1/m", 4, "ip")
        .set("limit.shared.scope", "cluster")
        .set("server.node_id", id)
        .set("log.access_log", false)
        .set("cluster.redis", redis.url())
        .set("cluster.heartbeat", "200ms")
        .listener_plain()
        .admin()
        .route(Route::app("/c", "echo").set("limits", vec!["shared"]))
        .build();
    let gw = TestGateway::start(&toml).await;
    let admin = gw.admin();
    assert!(
        common::eventually(WAIT, || async move {
            get(admin, "/readyz").await.status == StatusCode::OK
        })
        .await,
        "node {id} never became ready"
    );
    gw
}

async fn readyz(gw: &TestGateway) -> String {
    get(gw.admin(), "/readyz").await.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scope_shares_one_budget_and_falls_back_per_node() {
    let mut redis = Redis::start().await;
    let a = cluster_node("lim-a", &redis).await;
    let b = cluster_node("lim-b", &redis).await;

    // Four tokens for the whole cluster: two spent on each node.
    for gw in [&a, &b, &a, &b] {
        assert_eq!(
            get(gw.http(), "/c").await.status,
            StatusCode::UPGRADE_REQUIRED
        );
    }
    for gw in [&a, &b] {
        let r = get(gw.http(), "/c").await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
        let wait = retry_after(&r);
        assert!((59..=60).contains(&wait), "Retry-After {wait}");
    }
    // Each node tracked nothing of its own: the buckets are in Redis.
    assert_eq!(a.handle.limiter("shared").expect("limit").tracked_keys(), 0);

    // Redis goes away: each node decides alone (a fresh local budget), and
    // says so in /readyz.
    redis.kill();
    for _ in 0..4 {
        assert_eq!(
            get(a.http(), "/c").await.status,
            StatusCode::UPGRADE_REQUIRED
        );
    }
    assert_eq!(
        get(a.http(), "/c").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let why = readyz(&a).await;
    assert!(
        why.contains("degraded") && why.contains("rate limits per node (redis unreachable)"),
        "{why}"
    );

    // Redis is back (empty): the probe finds it and the limits leave /readyz.
    redis.spawn().await;
    assert!(
        common::eventually(WAIT, || async {
            !readyz(&a).await.contains("rate limits per node")
        })
        .await,
        "{}",
        readyz(&a).await
    );
    // Each node finds Redis again on its next decision (from another address,
    // so the budget under test stays untouched).
    for gw in [&a, &b] {
        assert!(
            common::eventually(WAIT, || async {
                get_from("127.0.0.9", gw.http(), "/c").await;
                !readyz(gw).await.contains("rate limits per node")
            })
            .await,
            "{}",
            readyz(gw).await
        );
    }
    // And decisions are shared again: the restarted Redis has a full bucket.
    for gw in [&a, &b, &a, &b] {
        assert_eq!(
            get(gw.http(), "/c").await.status,
            StatusCode::UPGRADE_REQUIRED
        );
    }
    assert_eq!(
        get(b.http(), "/c").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

// ---- message rates --------------------------------------------------------------------

#[tokio::test]
async fn chat_message_rate_drops_then_closes_1008() {
    use common::chat::Client;
    use serde_json::json;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let gw = TestGateway::start(
        &Cfg::new()
            .listener_plain()
            .admin()
            .route_app("/chat", "chat")
            // One token a minute after a burst of three: the test decides
            // exactly which frames are over.
            .set("app.chat.message_rate", "1/m")
            .set("app.chat.message_burst", 3)
            .build(),
    )
    .await;
    let mut c = Client::new(gw.http(), "ann").await;
    c.join("lobby").await;
    c.sentinel("lobby", "one").await;
    c.sentinel("lobby", "two").await;
    // The fourth frame is over the rate: dropped (never echoed), answered.
    c.msg("lobby", "three").await;
    let e = c.expect_error("rate_limited").await;
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many messages")),
        "{e}"
    );
    // A second strike: still open.
    c.send(json!({"type":"who","room":"lobby"})).await;
    c.expect_error("rate_limited").await;
    // The third within 10 s closes with 1008.
    c.msg("lobby", "four").await;
    assert_eq!(c.close_code().await, Some(CloseCode::Policy));

    // Another connection has its own budget.
    let mut d = Client::new(gw.http(), "bob").await;
    d.join("lobby").await;
    d.sentinel("lobby", "hello").await;

    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            r#"wsgate_limited_total{limit="app.chat",kind="message"}"#
        ),
        3
    );
}

#[tokio::test]
async fn ws_message_rate_closes_1008_to_the_client_and_1001_upstream() {
    use common::raw::{frame, open_ws, read_close, read_frame, MASK};

    let (up, mut ups) = common::upstreams::raw_ws_upstream().await;
    let gw = TestGateway::start(
        &Cfg::new()
            .listener_plain()
            .admin()
            .upstream("ws", &[up])
            .set("upstream.ws.ws_inspect", true)
            // Burst = one period's worth: 3 messages, then one a minute.
            .set("upstream.ws.ws_message_rate", "3/m")
            .route_upstream("/ws", "ws")
            .build(),
    )
    .await;
    let mut c = open_ws(gw.http(), "/ws").await;
    let mut u = tokio::time::timeout(WAIT, ups.recv())
        .await
        .expect("upstream connection in time")
        .expect("upstream");
    // Three messages pass; a fragmented one counts once, control frames not at all.
    c.write_all(&frame(true, 1, b"one", MASK))
        .await
        .expect("write");
    c.write_all(&frame(false, 2, b"tw", MASK))
        .await
        .expect("write");
    c.write_all(&frame(true, 0, b"o", MASK))
        .await
        .expect("write");
    c.write_all(&frame(true, 9, b"ping", MASK))
        .await
        .expect("write");
    c.write_all(&frame(true, 1, b"three", MASK))
        .await
        .expect("write");
    for want in [1u8, 2, 0, 9, 1] {
        let (_, op, _, _) = read_frame(&mut u).await;
        assert_eq!(op, want);
    }
    // The fourth message closes the session.
    c.write_all(&frame(true, 1, b"four", MASK))
        .await
        .expect("write");
    assert_eq!(read_close(&mut c).await, (1008, false));
    let (_, op, p, masked) = read_frame(&mut u).await;
    assert_eq!(
        (op, masked),
        (8, true),
        "the next upstream frame is the close"
    );
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1001);

    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            r#"wsgate_limited_total{limit="upstream.ws",kind="message"}"#
        ),
        1
    );
    assert!(
        m.contains(r#"wsgate_ws_close_codes_total{route="/ws",code="1008"} 1"#),
        "{m}"
    );
}
