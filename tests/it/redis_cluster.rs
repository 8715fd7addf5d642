//! The chat over a real Redis Cluster (docs/cluster.md, spec §13): six
//! `redis-server` children (3 masters, 3 replicas) started by the test, three
//! wsgate nodes with `[cluster] redis_cluster`. Rooms use sharded pub/sub and
//! one hash tag per room; a killed master is failed over and delivery resumes.
//! Waits poll against deadlines; nothing sleeps to synchronise.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use common::chat::{is_msg, is_presence, online, Client};
use common::redis::stats_delta;
use common::redis_cluster::{RedisCluster, NODE_TIMEOUT_MS};
use common::{eventually, get, json_of, post, Cfg, Listener, TestGateway, WAIT};

const BEAT: Duration = Duration::from_millis(200);

async fn node(id: &str, cluster: &RedisCluster) -> TestGateway {
    let cfg = Cfg::new()
        .set("server.node_id", id)
        .set("server.shutdown_grace", "1s")
        .set("log.access_log", false)
        .set("admin.addr", "127.0.0.1:0")
        .listener(Listener::at("127.0.0.1:0"))
        .route_app("/chat", "chat")
        .set("app.chat.history", 100)
        .set("app.chat.send_queue", 256)
        .set("app.chat.ping_interval", "30s")
        .set("app.chat.push_token", "s3cret")
        .set("cluster.redis_cluster", cluster.seeds())
        .set("cluster.heartbeat", format!("{}ms", BEAT.as_millis()))
        .build();
    let gw = TestGateway::start(&cfg).await;
    wait_ready(gw.admin()).await;
    gw
}

async fn wait_ready(admin: SocketAddr) {
    assert!(
        eventually(WAIT, || async move {
            get(admin, "/readyz").await.status == StatusCode::OK
        })
        .await,
        "node never ready: {}",
        get(admin, "/readyz").await.text()
    );
}

/// Three nodes; alice, bob and carol (one per node) in `lobby`, each having
/// seen the others join.
async fn three(cluster: &RedisCluster) -> ([TestGateway; 3], [Client; 3]) {
    let gws = [
        node("na", cluster).await,
        node("nb", cluster).await,
        node("nc", cluster).await,
    ];
    let mut clients = Vec::new();
    for (gw, user) in gws.iter().zip(["alice", "bob", "carol"]) {
        let mut c = Client::new(gw.http(), user).await;
        c.join("lobby").await;
        clients.push(c);
    }
    let [mut alice, mut bob, carol] = <[Client; 3]>::try_from(clients).ok().expect("3");
    for c in [&mut alice, &mut bob] {
        c.recv_until("carol joins", |v| is_presence(v, "carol", "join"))
            .await;
    }
    (gws, [alice, bob, carol])
}

/// Reads `n` messages from `who` (skipping other frames) and checks they are
/// `prefix0..prefix{n-1}`, once each, in order, and that no duplicate trails.
async fn expect_in_order(who: &mut Client, prefix: &str, n: usize) {
    let mut got = Vec::new();
    while got.len() < n {
        let v = who.recv().await;
        if v["type"] == "msg" && v["text"].as_str().unwrap_or("").starts_with(prefix) {
            got.push(v["text"].as_str().unwrap_or("").to_string());
        }
    }
    let want: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    assert_eq!(got, want, "{}", who.user);
    if let Some(v) = who.try_recv(BEAT * 2).await {
        let dup = v["type"] == "msg" && v["text"].as_str().unwrap_or("").starts_with(prefix);
        assert!(!dup, "{}: extra frame {v}", who.user);
    }
}

/// Per master: calls of the per-message commands during `f`'s messages.
fn per_message(
    before: &BTreeMap<u16, BTreeMap<String, u64>>,
    after: &BTreeMap<u16, BTreeMap<String, u64>>,
) -> BTreeMap<u16, BTreeMap<String, u64>> {
    after
        .iter()
        .map(|(p, a)| {
            let d = stats_delta(before.get(p).unwrap_or(&BTreeMap::new()), a);
            let d = d
                .into_iter()
                .filter(|(k, _)| {
                    ["evalsha", "incr", "rpush", "ltrim", "spublish"].contains(&k.as_str())
                })
                .collect();
            (*p, d)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_rooms_dms_presence_history_and_push_over_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let (gws, [mut alice, mut bob, mut carol]) = three(&cluster).await;

    // Warm up (the first EVALSHA per shard answers NOSCRIPT), then measure.
    alice.msg("lobby", "warm-up").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.recv_until("warm-up", |v| is_msg(v, "warm-up")).await;
    }
    const N: usize = 30;
    let before = cluster.commandstats().await;
    for i in 0..N {
        alice.msg("lobby", &format!("m{i}")).await;
    }
    for c in [&mut alice, &mut bob, &mut carol] {
        expect_in_order(c, "m", N).await;
    }
    let after = cluster.commandstats().await;
    let stats = per_message(&before, &after);
    let shard = cluster.master_of("wsgate:room:{lobby}:id").await;
    let usec = stats_delta(
        before.get(&shard).unwrap_or(&BTreeMap::new()),
        &after[&shard],
    );
    eprintln!(
        "redis cluster: EVALSHA CPU on the room's shard {:.1} µs per message",
        *usec.get("evalsha.usec").unwrap_or(&0) as f64 / N as f64
    );
    eprintln!("redis cluster: commands during {N} room messages, per master: {stats:?} (lobby on {shard})");
    for (port, d) in &stats {
        for k in ["evalsha", "incr", "rpush", "ltrim", "spublish"] {
            let want = if *port == shard { N as u64 } else { 0 };
            assert_eq!(
                d.get(k).copied().unwrap_or(0),
                want,
                "{k} on {port}: {stats:?}"
            );
        }
    }

    // DMs across nodes, echoed to the sender.
    bob.send(json!({"type":"dm","to":"carol","text":"psst"}))
        .await;
    let dm = carol
        .recv_until("bob's dm", |v| v["type"] == "dm" && v["text"] == "psst")
        .await;
    assert_eq!(dm["from"], "bob");
    bob.recv_until("dm echo", |v| v["type"] == "dm" && v["text"] == "psst")
        .await;

    // Push to a user on another node and to the room.
    let r = post(
        gws[0].http(),
        "/chat/api/push",
        json!({"user":"carol","text":"pushed"}),
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    carol.recv_until("push", |v| v["text"] == "pushed").await;
    let r = post(
        gws[2].http(),
        "/chat/api/push",
        json!({"room":"lobby","text":"room push"}),
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for c in [&mut alice, &mut bob] {
        c.recv_until("room push", |v| is_msg(v, "room push")).await;
    }

    // Online (global) and who (the room's shard) agree on every node.
    let want = vec![
        ("alice".to_string(), "na".to_string()),
        ("bob".to_string(), "nb".to_string()),
        ("carol".to_string(), "nc".to_string()),
    ];
    for gw in &gws {
        assert_eq!(online(gw.http()).await, want);
    }
    carol.send(json!({"type":"who","room":"lobby"})).await;
    let who = carol.recv_until("who", |v| v["type"] == "who").await;
    assert_eq!(who["users"], json!(["alice", "bob", "carol"]));

    // History from the room's shard, the same on every node.
    let h: Vec<_> = [0, 1, 2].iter().map(|&i| gws[i].http()).collect();
    let ha = json_of(&get(h[0], "/chat/api/history?room=lobby&limit=3").await);
    let hc = json_of(&get(h[2], "/chat/api/history?room=lobby&limit=3").await);
    assert_eq!(ha, hc);
    let last = &ha["messages"][2];
    assert_eq!(last["text"], "room push", "{ha}");
    assert_eq!(last["id"], N as u64 + 2, "{ha}");

    // Carol leaves: the others hear it once; her node unsubscribes.
    carol.send(json!({"type":"leave","room":"lobby"})).await;
    for c in [&mut alice, &mut bob] {
        c.recv_until("carol leaves", |v| is_presence(v, "carol", "leave"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_cross_node_delivery_resumes() {
    let mut cluster = RedisCluster::start().await;
    let (gws, [mut alice, mut bob, _carol]) = three(&cluster).await;
    let victim = cluster.master_of("wsgate:room:{lobby}:id").await;

    cluster.kill(victim);
    let killed = Instant::now();
    // The replica is promoted: the survivors report the cluster ok again
    // with another master for the room's slot.
    let survivors = cluster.alive();
    let c = &cluster;
    assert!(
        eventually(WAIT * 2, || async move {
            let mut ok = true;
            for p in c.alive() {
                ok &= common::redis_cluster::cluster_info(p)
                    .await
                    .contains("cluster_state:ok");
            }
            ok && c.master_of("wsgate:room:{lobby}:id").await != victim
        })
        .await,
        "no replica promoted: {}\n{}",
        common::redis_cluster::cluster_info(survivors[0]).await,
        common::redis_cluster::cluster_nodes(survivors[0]).await
    );
    let promoted = killed.elapsed();
    cluster.wait_ok(&survivors).await;

    // Cross-node delivery resumes: keep sending until one reaches bob.
    let mut n = 0;
    let resumed = loop {
        n += 1;
        alice.msg("lobby", &format!("after failover {n}")).await;
        if let Some(v) = bob.try_recv(BEAT).await {
            if v["type"] == "msg"
                && v["text"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("after failover")
            {
                break killed.elapsed();
            }
        }
        if killed.elapsed() > WAIT * 2 {
            panic!(
                "cross-node delivery never resumed; subscribers per server: {:?}, nodes:\n{}",
                common::redis_cluster::shardnumsub(&cluster, "wsgate:room:{lobby}:events").await,
                common::redis_cluster::cluster_nodes(survivors[0]).await
            );
        }
    };
    eprintln!(
        "redis cluster failover (cluster-node-timeout {NODE_TIMEOUT_MS} ms): replica promoted \
         {promoted:?} after SIGKILL, cross-node delivery resumed after {resumed:?}"
    );
    for gw in &gws {
        wait_ready(gw.admin()).await;
    }
    // From here on, exactly once and in order again.
    alice.msg("lobby", "settled").await;
    alice
        .recv_until("own settled", |v| is_msg(v, "settled"))
        .await;
    bob.recv_until("settled", |v| is_msg(v, "settled")).await;
    for i in 0..10 {
        alice.msg("lobby", &format!("p{i}")).await;
    }
    expect_in_order(&mut bob, "p", 10).await;
}

#[test]
fn redis_and_redis_cluster_are_exclusive_and_errors_name_key_and_line() {
    let base = "[[listener]]\naddr = \"127.0.0.1:0\"\n\n[cluster]\n";
    let parse = |cluster: &str| {
        wsgate::config::parse(std::path::Path::new("t.toml"), &format!("{base}{cluster}"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let e = parse("redis = \"redis://a:1\"\nredis_cluster = [\"redis://b:1\"]\n").unwrap_err();
    assert!(
        e.contains("t.toml:6:17: cluster.redis_cluster: set only one of cluster.redis, cluster.redis_cluster and cluster.sentinels"),
        "{e}"
    );
    let e = parse("redis_cluster = [\"redis://b:1\", \"http://c:1\"]\n").unwrap_err();
    assert!(
        e.contains("t.toml:5:33: cluster.redis_cluster: \"http://c:1\" is not a redis:// URL"),
        "{e}"
    );
    let e = parse("heartbeat = \"1s\"\n").unwrap_err();
    assert!(e.contains("cluster.redis"), "{e}");
    parse("redis_cluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n")
        .expect("seed URLs are valid");
    let e = parse("sentinels = [\"redis://127.0.0.1:26379\"]\n").unwrap_err();
    assert!(
        e.contains("t.toml:5:13: cluster.sentinels: needs cluster.sentinel_master"),
        "{e}"
    );
    parse("sentinels = [\"redis://127.0.0.1:26379\"]\nsentinel_master = \"mymaster\"\n")
        .expect("sentinels with a master name are valid");
}

/// Moves `slot` from master `src` to master `dst` as `redis-cli --cluster
/// reshard` does: IMPORTING and MIGRATING, its keys migrated, then the slot
/// assigned on every master.
async fn move_slot(cluster: &RedisCluster, slot: i64, src: u16, dst: u16) {
    let did = migrate_keys(slot, src, dst).await;
    hand_over(slot, &did, &cluster.masters().await).await;
}

/// The slot of room `lobby`'s keys, the master that holds it, and another.
async fn lobby_slot(cluster: &RedisCluster) -> (i64, u16, u16) {
    let src = cluster.master_of("{lobby}").await;
    let masters = cluster.masters().await;
    let dst = *masters.iter().find(|p| **p != src).expect("another master");
    let mut c = common::redis_cluster::connect(src).await;
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("{lobby}")
        .query_async(&mut c)
        .await
        .expect("KEYSLOT");
    (slot, src, dst)
}

/// The second half: `slot` assigned to node `did` on every master.
async fn hand_over(slot: i64, did: &str, masters: &[u16]) {
    for &port in masters {
        let mut c = common::redis_cluster::connect(port).await;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(did)
            .query_async::<()>(&mut c)
            .await
            .expect("CLUSTER SETSLOT");
    }
}

/// The first half of a slot's move, as `redis-cli --cluster reshard` does
/// it: `slot` importing on `dst`, migrating on `src`, and every key of it
/// moved; the slot still belongs to `src`, which answers `ASK` for it.
/// Returns `dst`'s node id.
async fn migrate_keys(slot: i64, src: u16, dst: u16) -> String {
    let mut s = common::redis_cluster::connect(src).await;
    let mut d = common::redis_cluster::connect(dst).await;
    let id = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async::<String>(&mut c)
                .await
                .expect("CLUSTER MYID")
        }
    };
    let (sid, did) = (id(&mut s).await, id(&mut d).await);
    let setslot = |c: &mut redis::aio::MultiplexedConnection, how: &'static str, node: String| {
        let mut c = c.clone();
        async move {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(how)
                .arg(node)
                .query_async::<()>(&mut c)
                .await
                .expect("CLUSTER SETSLOT");
        }
    };
    setslot(&mut d, "IMPORTING", sid.clone()).await;
    setslot(&mut s, "MIGRATING", did.clone()).await;
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut s)
            .await
            .expect("GETKEYSINSLOT");
        if keys.is_empty() {
            break;
        }
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(dst)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(keys)
            .query_async::<()>(&mut s)
            .await
            .expect("MIGRATE");
    }
    did
}

/// A room whose slot moves to another shard keeps its subscribers: Redis
/// ends shard-channel subscriptions when their slot moves, and the node
/// subscribes again where the slot lives now. Before, carol on the other
/// node got nothing more (0 of 40) for as long as she stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_moved_to_another_shard_keeps_its_subscribers() {
    let cluster = RedisCluster::start().await;
    let (a, b) = (node("ma", &cluster).await, node("mb", &cluster).await);
    let mut alice = Client::new(a.http(), "alice").await;
    alice.join("lobby").await;
    let mut carol = Client::new(b.http(), "carol").await;
    carol.join("lobby").await;
    alice.msg("lobby", "before").await;
    carol
        .recv_until("before the move", |v| is_msg(v, "before"))
        .await;

    let (slot, src, dst) = lobby_slot(&cluster).await;
    move_slot(&cluster, slot, src, dst).await;

    // The node subscribes again within moments: a message sent after that
    // reaches carol (the few sent before it are in history for a resume).
    let deadline = Instant::now() + WAIT;
    let mut i = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "carol got nothing after the move"
        );
        let text = format!("after {i}");
        alice.msg("lobby", &text).await;
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                let v = carol.recv().await;
                if v["type"] == "msg" {
                    return v;
                }
            }
        })
        .await;
        if got.is_ok_and(|v| v["text"].as_str().is_some_and(|t| t.starts_with("after"))) {
            break;
        }
        i += 1;
    }
}

/// While a room's slot is being migrated (every key moved, the slot not
/// yet handed over: the old shard answers `ASK`), sending goes on: each
/// message is stored on the new shard with the next id, nothing is refused
/// and both nodes stay ready. They are published on the new shard, where no
/// node is subscribed until the handover, so carol's node misses them live;
/// at the first message after it (its id skipping ahead) the node fills
/// the gap from history, and carol gets every message, in order. Without
/// the fill she never got the ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_keeps_taking_messages_while_its_slot_migrates() {
    let cluster = RedisCluster::start().await;
    let (a, b) = (node("ka", &cluster).await, node("kb", &cluster).await);
    let mut alice = Client::new(a.http(), "alice").await;
    alice.join("lobby").await;
    let mut carol = Client::new(b.http(), "carol").await;
    carol.join("lobby").await;
    alice.msg("lobby", "before").await;
    carol.recv_until("before", |v| is_msg(v, "before")).await;
    let (slot, src, dst) = lobby_slot(&cluster).await;
    let did = migrate_keys(slot, src, dst).await;
    for i in 0..10 {
        alice.msg("lobby", &format!("during {i}")).await;
        let v = alice
            .recv_until("her message back", |v| {
                v["type"] == "error" || v["text"].as_str().is_some_and(|t| t.starts_with("during"))
            })
            .await;
        assert_eq!(v["text"], format!("during {i}"), "{v}");
        assert_eq!(v["id"], i + 2, "ids go on: {v}");
    }
    for admin in [a.admin(), b.admin()] {
        let r = get(admin, "/readyz").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    hand_over(slot, &did, &cluster.masters().await).await;
    // The node subscribes again where the slot lives now; the first message
    // it receives there brings the ten it missed before it.
    let deadline = Instant::now() + WAIT;
    let mut got: Vec<String> = Vec::new();
    let mut sent = 0;
    while !got.iter().any(|t| t.starts_with("after")) {
        assert!(Instant::now() < deadline, "carol got {got:?}");
        alice.msg("lobby", &format!("after {sent}")).await;
        sent += 1;
        while let Some(v) = carol.try_recv(Duration::from_millis(300)).await {
            if v["type"] == "msg" {
                got.push(v["text"].as_str().unwrap_or("").to_string());
            }
        }
    }
    let want: Vec<String> = (0..10)
        .map(|i| format!("during {i}"))
        .chain((0..got.len().saturating_sub(10)).map(|i| format!("after {i}")))
        .collect();
    assert_eq!(got, want);
}
