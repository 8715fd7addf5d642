//! Multi-node chat through a real `redis-server` (spec §5): every test starts
//! its own Redis on a free port and two or three wsgate nodes (in-process, plus
//! a child process of the `wsgate` binary where a node must die by SIGKILL).
//! Nothing sleeps to synchronise: tests wait for the events they expect, or
//! poll state against a deadline.
//!
//! `redis-server` must be installed; `scripts/test.sh` installs it. Without it
//! these tests fail (they never skip).

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use tokio::net::TcpStream;

use common::chat::{is_msg, is_presence, online, Client, Sse};
use common::redis::{free_ports, Redis};
use common::{eventually, get, json_of, post, Cfg, Listener, TestGateway, WAIT};

/// The heartbeat every node of these tests uses.
const BEAT: Duration = Duration::from_millis(200);

// ---- nodes ----------------------------------------------------------------------------

/// A chat node on `listen` (with an admin listener on `admin`) joined to the
/// cluster through `redis`.
fn node_config(node: &str, redis: &str, listen: &str, admin: &str) -> String {
    node_cfg(node, redis, listen, admin).build()
}

/// [`node_config`], still open to more keys.
pub(crate) fn node_cfg(node: &str, redis: &str, listen: &str, admin: &str) -> Cfg {
    Cfg::new()
        .set("server.node_id", node)
        .set("server.shutdown_grace", "1s")
        .set("log.access_log", false)
        .set("admin.addr", admin)
        .listener(Listener::at(listen))
        .route_app("/chat", "chat")
        .set("app.chat.history", 100)
        .set("app.chat.send_queue", 256)
        .set("app.chat.ping_interval", "30s")
        .set("app.chat.push_token", "s3cret")
        .set("cluster.redis", redis)
        .set("cluster.heartbeat", format!("{}ms", BEAT.as_millis()))
}

pub(crate) struct Node {
    gw: TestGateway,
}

impl Node {
    /// An in-process node, returned once its first heartbeat reached Redis
    /// (registered and subscribed).
    pub(crate) async fn start(id: &str, redis: &Redis) -> Self {
        let gw =
            TestGateway::start(&node_config(id, &redis.url(), "127.0.0.1:0", "127.0.0.1:0")).await;
        let n = Node { gw };
        n.wait_ready(true).await;
        n
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.gw.http()
    }

    fn admin(&self) -> SocketAddr {
        self.gw.admin()
    }

    async fn wait_ready(&self, ready: bool) {
        let admin = self.admin();
        assert!(
            eventually(WAIT, || async move {
                let r = get(admin, "/readyz").await;
                (r.status == StatusCode::OK) == ready
            })
            .await,
            "readyz never became {}: {}",
            if ready { "ready" } else { "degraded" },
            get(admin, "/readyz").await.text()
        );
    }

    async fn redis_up_metric(&self) -> Option<String> {
        let r = get(self.admin(), "/metrics").await;
        r.text()
            .lines()
            .find(|l| l.starts_with("wsgate_cluster_redis_up"))
            .map(|l| l.to_string())
    }
}

/// A node as a child process of the `wsgate` binary, so it can be SIGKILLed.
pub(crate) struct ChildNode {
    child: Child,
    pub(crate) addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ChildNode {
    pub(crate) async fn start(id: &str, redis: &Redis) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let [port, admin_port] = free_ports();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let path = dir.path().join("wsgate.toml");
        std::fs::write(
            &path,
            node_config(id, &redis.url(), &addr.to_string(), &admin.to_string()),
        )
        .expect("write config");
        let child = spawn_wsgate(&path);
        assert!(
            eventually(WAIT, || async move {
                TcpStream::connect(admin).await.is_ok()
                    && get(admin, "/readyz").await.status == StatusCode::OK
            })
            .await,
            "child node {id} never became ready"
        );
        ChildNode {
            child,
            addr,
            _dir: dir,
        }
    }

    /// SIGKILL: no drain, no cleanup.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_wsgate(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wsgate")
}

// ---- clients ----------------------------------------------------------------------------

/// Alice on node A, bob on node B, both in `lobby`, each having seen the other join.
async fn two_nodes(redis: &Redis) -> (Node, Node, Client, Client) {
    let a = Node::start("na", redis).await;
    let b = Node::start("nb", redis).await;
    let mut alice = Client::new(a.addr(), "alice").await;
    alice.join("lobby").await;
    let mut bob = Client::new(b.addr(), "bob").await;
    bob.join("lobby").await;
    alice
        .recv_until("bob's join from node B", |v| is_presence(v, "bob", "join"))
        .await;
    (a, b, alice, bob)
}

// ---- tests --------------------------------------------------------------------------------

#[tokio::test]
async fn cross_node_room_dm_push_online_history_and_fallbacks() {
    let redis = Redis::start().await;
    let (a, b, mut alice, mut bob) = two_nodes(&redis).await;

    // Room message across nodes; the sender gets its own copy.
    alice.msg("lobby", "hello from A").await;
    let m = bob
        .recv_until("alice's message", |v| is_msg(v, "hello from A"))
        .await;
    assert_eq!(m["from"], "alice");
    assert_eq!(m["id"], 1);
    alice
        .recv_until("own copy", |v| is_msg(v, "hello from A"))
        .await;

    // DM across nodes, echoed to the sender.
    bob.send(json!({"type":"dm","to":"alice","text":"psst"}))
        .await;
    let dm = alice
        .recv_until("bob's dm", |v| v["type"] == "dm" && v["text"] == "psst")
        .await;
    assert_eq!(dm["from"], "bob");
    bob.recv_until("dm echo", |v| v["type"] == "dm" && v["text"] == "psst")
        .await;

    // Push to a user on the other node, and to a room.
    let r = post(
        a.addr(),
        "/chat/api/push",
        json!({"user":"bob","text":"pushed"}),
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(json_of(&r)["delivered"].as_u64().expect("delivered") >= 1);
    bob.recv_until("push", |v| v["text"] == "pushed").await;
    // A second tab of bob: the registry's connection count reaches node A
    // within a heartbeat, and a push counts both connections.
    let mut bob2 = Client::new(b.addr(), "bob").await;
    let addr = a.addr();
    assert!(
        eventually(WAIT, || async move {
            let r = post(
                addr,
                "/chat/api/push",
                json!({"user":"bob","text":"counted"}),
                Some("Bearer s3cret"),
            )
            .await;
            json_of(&r)["delivered"] == 2
        })
        .await,
        "push never counted bob's two connections"
    );
    bob2.recv_until("push to the second tab", |v| v["text"] == "counted")
        .await;
    let r = post(
        b.addr(),
        "/chat/api/push",
        json!({"room":"lobby","text":"room push"}),
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    alice
        .recv_until("room push", |v| is_msg(v, "room push"))
        .await;

    // Online and who, with nodes, the same on both nodes.
    let want = vec![
        ("alice".to_string(), "na".to_string()),
        ("bob".to_string(), "nb".to_string()),
    ];
    assert_eq!(online(a.addr()).await, want);
    assert_eq!(online(b.addr()).await, want);
    bob.send(json!({"type":"who","room":"lobby"})).await;
    let who = bob.recv_until("who", |v| v["type"] == "who").await;
    assert_eq!(who["users"], json!(["alice", "bob"]));

    // Fallback send on the node alice is not connected to.
    let r = post(
        b.addr(),
        "/chat/send?user=alice",
        json!({"type":"msg","room":"lobby","text":"via B"}),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    alice
        .recv_until("own http send", |v| is_msg(v, "via B"))
        .await;
    bob.recv_until("alice's http send", |v| is_msg(v, "via B"))
        .await;

    // Shared history: the same answer on both nodes, ids 1..=3.
    let ha = json_of(&get(a.addr(), "/chat/api/history?room=lobby&limit=10").await);
    let hb = json_of(&get(b.addr(), "/chat/api/history?room=lobby&limit=10").await);
    assert_eq!(ha, hb);
    let ids: Vec<u64> = ha["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, vec![1, 2, 3], "{ha}");
    bob.send(json!({"type":"history","room":"lobby","limit":2}))
        .await;
    let h = bob.recv_until("history", |v| v["type"] == "history").await;
    assert_eq!(h["messages"][1]["text"], "via B");

    // A long-poll on node B resumes from a history cursor written on node A.
    let r = get(b.addr(), "/chat/poll?user=dave&rooms=lobby").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let cursor = json_of(&r)["cursor"].as_str().expect("cursor").to_string();
    // `lobby:3:EPOCH,@…`: the room's position in its history stream.
    assert!(cursor.starts_with("lobby:3:"), "{cursor}");
    alice.msg("lobby", "for dave").await;
    let r = get(
        b.addr(),
        &format!("/chat/poll?user=dave&rooms=lobby&cursor={cursor}"),
    )
    .await;
    let body = json_of(&r);
    assert!(
        body["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| is_msg(e, "for dave") && e["id"] == 4),
        "{body}"
    );

    // SSE on node A resumes with a Last-Event-ID from node B's history.
    let text = sse_until(
        a.addr(),
        "/chat/sse?user=erin&rooms=lobby",
        "lobby:2",
        "for dave",
    )
    .await;
    assert!(text.contains("via B"), "{text}");
    assert!(!text.contains("hello from A"), "resumed too early: {text}");
}

/// Opens an SSE stream with `Last-Event-ID` and reads events until one holds
/// `until`; returns the events read, as JSON text.
async fn sse_until(addr: SocketAddr, path: &str, last_id: &str, until: &str) -> String {
    let (mut sse, parts) = Sse::open(addr, path, Some(last_id)).await;
    assert_eq!(parts.status, StatusCode::OK);
    let mut text = String::new();
    while !text.contains(until) {
        let (_, v) = sse.next().await;
        text.push_str(&v.to_string());
        text.push('\n');
    }
    sse.close();
    text
}

#[tokio::test]
async fn thirty_cross_node_messages_arrive_exactly_once_in_order() {
    let redis = Redis::start().await;
    let (_a, b, mut alice, mut bob) = two_nodes(&redis).await;
    // A second connection of bob on node B and carol on a third node.
    let c = Node::start("nc", &redis).await;
    let mut carol = Client::new(c.addr(), "carol").await;
    carol.join("lobby").await;
    alice
        .recv_until("carol joins", |v| is_presence(v, "carol", "join"))
        .await;
    bob.recv_until("carol joins", |v| is_presence(v, "carol", "join"))
        .await;
    let _ = b;

    for i in 0..30 {
        alice.msg("lobby", &format!("m{i}")).await;
    }
    // Every member (the sender included) sees m0..m29 once, in order, and
    // nothing else from alice before the closing sentinel.
    carol.msg("lobby", "end").await;
    for who in [&mut alice, &mut bob, &mut carol] {
        let mut got = Vec::new();
        let mut ended = false;
        while !(ended && got.len() >= 30) {
            let v = who.recv().await;
            if v["type"] != "msg" {
                continue;
            }
            if v["text"] == "end" {
                ended = true;
                continue;
            }
            got.push(v["text"].as_str().expect("text").to_string());
        }
        let want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
        assert_eq!(got, want, "{}", who.user);
        // No duplicate trails behind.
        if let Some(v) = who.try_recv(BEAT * 2).await {
            assert_ne!(v["type"], "msg", "{}: extra frame {v}", who.user);
        }
    }
}

#[tokio::test]
async fn a_killed_node_is_swept_and_its_users_announced_once() {
    let redis = Redis::start().await;
    let a = Node::start("na", &redis).await;
    let b = Node::start("nb", &redis).await;
    let mut alice = Client::new(a.addr(), "alice").await;
    alice.join("lobby").await;
    let mut bob = Client::new(b.addr(), "bob").await;
    bob.join("lobby").await;

    let mut c = ChildNode::start("nc", &redis).await;
    let mut carol = Client::new(c.addr, "carol").await;
    carol.join("lobby").await;
    carol.join("garden").await;
    alice
        .recv_until("carol joins", |v| is_presence(v, "carol", "join"))
        .await;
    bob.recv_until("carol joins", |v| is_presence(v, "carol", "join"))
        .await;
    assert!(online(a.addr())
        .await
        .contains(&("carol".into(), "nc".into())));

    c.kill();
    let killed = Instant::now();
    alice
        .recv_until("carol's leave", |v| is_presence(v, "carol", "leave"))
        .await;
    let elapsed = killed.elapsed();
    eprintln!("dead-node cleanup: leave announced {elapsed:?} after SIGKILL (heartbeat {BEAT:?})");
    // TTL of three beats, plus the sweeper's half-beat tick, plus scheduling slack.
    assert!(
        elapsed <= BEAT * 4 + Duration::from_millis(500),
        "carol announced as left only after {elapsed:?}"
    );
    bob.recv_until("carol's leave", |v| is_presence(v, "carol", "leave"))
        .await;
    assert!(!online(a.addr()).await.iter().any(|(u, _)| u == "carol"));
    assert!(!online(b.addr()).await.iter().any(|(u, _)| u == "carol"));

    // Exactly once: no second leave of carol reaches anyone.
    alice.msg("lobby", "after").await;
    for who in [&mut alice, &mut bob] {
        let v = who
            .recv_until("the sentinel", |v| {
                is_msg(v, "after") || is_presence(v, "carol", "leave")
            })
            .await;
        assert!(is_msg(&v, "after"), "{}: second leave {v}", who.user);
    }
    bob.send(json!({"type":"who","room":"lobby"})).await;
    let who = bob.recv_until("who", |v| v["type"] == "who").await;
    assert_eq!(who["users"], json!(["alice", "bob"]));
}

#[tokio::test]
async fn redis_outage_degrades_then_recovers_without_restart() {
    let mut redis = Redis::start().await;
    let (a, b, mut alice, mut bob) = two_nodes(&redis).await;
    let mut alice2 = Client::new(a.addr(), "alice2").await;
    alice2.join("lobby").await;
    assert_eq!(
        a.redis_up_metric().await.as_deref(),
        Some("wsgate_cluster_redis_up 1")
    );

    redis.kill();
    a.wait_ready(false).await;
    b.wait_ready(false).await;
    let r = get(a.admin(), "/readyz").await;
    assert!(r.text().contains("degraded"), "{}", r.text());
    assert_eq!(
        a.redis_up_metric().await.as_deref(),
        Some("wsgate_cluster_redis_up 0")
    );

    // Local clients keep chatting.
    alice.msg("lobby", "during outage").await;
    alice2
        .recv_until("local delivery during the outage", |v| {
            is_msg(v, "during outage")
        })
        .await;
    let during = alice
        .recv_until("own copy", |v| is_msg(v, "during outage"))
        .await["id"]
        .as_u64()
        .expect("id");
    // The push API's caller can try again: told 503, nothing delivered (it
    // was a 200 and a message no history kept, the ninth probe's finding).
    for push in [
        json!({"room":"lobby","text":"pushed during outage"}),
        json!({"user":"alice2","text":"pushed during outage"}),
    ] {
        let r = post(a.addr(), "/chat/api/push", push, Some("Bearer s3cret")).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert_eq!(json_of(&r)["code"], "unavailable", "{}", r.text());
        assert_eq!(r.headers["retry-after"], "1");
    }
    alice.msg("lobby", "after the pushes").await;
    let next = alice2
        .recv_until("the next message", |v| {
            v["type"] == "msg" || v["type"] == "dm"
        })
        .await;
    assert!(
        is_msg(&next, "after the pushes"),
        "a refused push was delivered: {next}"
    );

    // Redis returns (empty) on the same port.
    redis.spawn().await;
    let back = Instant::now();
    a.wait_ready(true).await;
    b.wait_ready(true).await;
    let ready_after = back.elapsed();
    // Cross-node delivery resumes: keep sending until one arrives at bob.
    let mut n = 0;
    let delivered = loop {
        n += 1;
        let text = format!("after outage {n}");
        alice.msg("lobby", &text).await;
        if let Some(v) = bob.try_recv(BEAT).await {
            if v["type"] == "msg" && v["text"].as_str().unwrap_or("").starts_with("after outage") {
                // Ids keep increasing although Redis came back empty.
                assert!(v["id"].as_u64().expect("id") > during, "{v}");
                break back.elapsed();
            }
        }
        assert!(back.elapsed() < WAIT, "cross-node delivery never resumed");
    };
    eprintln!(
        "redis recovery: ready again after {ready_after:?}, cross-node delivery after {delivered:?}"
    );
    assert_eq!(
        a.redis_up_metric().await.as_deref(),
        Some("wsgate_cluster_redis_up 1")
    );
    // The registry was rebuilt: both users are online again, with their nodes.
    let want = vec![
        ("alice".to_string(), "na".to_string()),
        ("alice2".to_string(), "na".to_string()),
        ("bob".to_string(), "nb".to_string()),
    ];
    let addr = b.addr();
    assert!(
        eventually(WAIT, || {
            let want = want.clone();
            async move { online(addr).await == want }
        })
        .await,
        "registry not rebuilt: {:?}",
        online(addr).await
    );
    // DMs cross again.
    bob.send(json!({"type":"dm","to":"alice","text":"welcome back"}))
        .await;
    alice
        .recv_until("dm after recovery", |v| v["text"] == "welcome back")
        .await;
}

/// A Redis that refuses the node's password: `/readyz` says why (not
/// "connecting" forever), and never shows the password.
#[tokio::test]
async fn a_wrong_redis_password_is_reported_without_the_password() {
    let redis = Redis::start().await;
    assert_eq!(
        redis.command("CONFIG SET requirepass right-one").await,
        "+OK"
    );
    let url = redis.url().replacen("redis://", "redis://:Wr0ngPass@", 1);
    let gw = TestGateway::start(&node_config("n1", &url, "127.0.0.1:0", "127.0.0.1:0")).await;
    let admin = gw.admin();
    let told = eventually(WAIT, || async move {
        let r = get(admin, "/readyz").await;
        r.status != StatusCode::OK && r.text().contains("WRONGPASS")
    })
    .await;
    let r = get(admin, "/readyz").await;
    assert!(told, "{}", r.text());
    assert!(!r.text().contains("Wr0ngPass"), "{}", r.text());
    let status = get(admin, "/status").await;
    assert!(!status.text().contains("Wr0ngPass"), "{}", status.text());
}

/// A room's keys in Redis expire `cluster.room_ttl` after its last message
/// (rooms a client made and left would otherwise fill Redis), and a room
/// made again counts in a new epoch.
#[tokio::test]
async fn a_quiet_rooms_keys_expire_and_it_starts_a_new_epoch() {
    let redis = Redis::start().await;
    let cfg = node_cfg("n1", &redis.url(), "127.0.0.1:0", "127.0.0.1:0")
        .set("cluster.room_ttl", "3s")
        .build();
    let node = Node {
        gw: TestGateway::start(&cfg).await,
    };
    node.wait_ready(true).await;
    let own_join = |me: &'static str| {
        move |v: &serde_json::Value| is_presence(v, me, "join") && v["room"] == "quiet"
    };
    let mut alice = Client::new(node.addr(), "alice").await;
    alice.send(json!({"type":"join","room":"quiet"})).await;
    let first = alice.recv_until("own join", own_join("alice")).await;
    alice.sentinel("quiet", "hello").await;
    // Each key exists and has a TTL (-1 would be none, -2 no key).
    for key in ["id", "history", "epoch"] {
        let ttl = redis
            .command(&format!("PTTL wsgate:room:{{quiet}}:{key}"))
            .await;
        let ms: i64 = ttl.trim_start_matches(':').parse().expect("a PTTL");
        assert!(ms > 0 && ms <= 3000, "{key}: {ttl}");
    }
    let gone = eventually(WAIT, || async {
        redis.command("EXISTS wsgate:room:{quiet}:history").await == ":0"
    })
    .await;
    assert!(gone, "the room's history never expired");
    let mut bob = Client::new(node.addr(), "bob").await;
    bob.send(json!({"type":"join","room":"quiet"})).await;
    let again = bob.recv_until("own join", own_join("bob")).await;
    assert_eq!(again["offset"], 0, "{again}");
    assert_ne!(again["epoch"], first["epoch"], "{again}");
}
