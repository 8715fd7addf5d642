//! The chat over a Sentinel-monitored Redis (`[cluster] sentinels`, spec §13):
//! one master, one replica, three sentinels, two wsgate nodes; the master is
//! SIGKILLed, the sentinels promote the replica, the nodes follow it and
//! cross-node delivery resumes. Waits poll against deadlines.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;

use common::chat::{is_msg, is_presence, Client};
use common::redis_sentinel::{Sentinels, MASTER};
use common::{eventually, get, Cfg, Listener, TestGateway, WAIT};

const BEAT: Duration = Duration::from_millis(200);

async fn node(id: &str, s: &Sentinels) -> TestGateway {
    let cfg = Cfg::new()
        .set("server.node_id", id)
        .set("server.shutdown_grace", "1s")
        .set("log.access_log", false)
        .set("admin.addr", "127.0.0.1:0")
        .listener(Listener::at("127.0.0.1:0"))
        .route_app("/chat", "chat")
        .set("app.chat.history", 100)
        .set("app.chat.ping_interval", "30s")
        .set("cluster.sentinels", s.urls())
        .set("cluster.sentinel_master", MASTER)
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

/// Nodes `ids`, alice on the first and bob on the second, both in `lobby`,
/// alice having seen bob join.
async fn two_nodes(s: &Sentinels, ids: [&str; 2]) -> (TestGateway, TestGateway, Client, Client) {
    let a = node(ids[0], s).await;
    let b = node(ids[1], s).await;
    let mut alice = Client::new(a.http(), "alice").await;
    alice.join("lobby").await;
    let mut bob = Client::new(b.http(), "bob").await;
    bob.join("lobby").await;
    alice
        .recv_until("bob joins", |v| is_presence(v, "bob", "join"))
        .await;
    (a, b, alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_the_master_across_a_sentinel_failover() {
    let mut s = Sentinels::start().await;
    let (a, b, mut alice, mut bob) = two_nodes(&s, ["na", "nb"]).await;
    alice.msg("lobby", "before").await;
    bob.recv_until("before", |v| is_msg(v, "before")).await;

    let old = s.master;
    s.kill(old);
    let killed = Instant::now();
    let sref = &s;
    assert!(
        eventually(WAIT * 2, || async move {
            sref.master_port().await.is_some_and(|p| p != old)
        })
        .await,
        "the sentinels never promoted the replica"
    );
    let promoted = killed.elapsed();
    assert_eq!(s.master_port().await, Some(s.replica));

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
        assert!(
            killed.elapsed() < WAIT * 2,
            "cross-node delivery never resumed"
        );
    };
    eprintln!(
        "sentinel failover (down-after 1000 ms): replica promoted {promoted:?} after SIGKILL, \
         cross-node delivery resumed after {resumed:?}"
    );
    wait_ready(a.admin()).await;
    wait_ready(b.admin()).await;
    alice.msg("lobby", "settled").await;
    bob.recv_until("settled", |v| is_msg(v, "settled")).await;
}

/// `SENTINEL FAILOVER`, asked of the first sentinel.
async fn failover(s: &Sentinels) {
    let mut c = common::redis_sentinel::connect(s.sentinels[0])
        .await
        .expect("a sentinel");
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(MASTER)
        .query_async(&mut c)
        .await
        .expect("SENTINEL FAILOVER");
}

/// The role (`master`, `slave`) of the server on `port`.
async fn role(port: u16) -> String {
    let Some(mut c) = common::redis_sentinel::connect(port).await else {
        return String::new();
    };
    let v: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    match v.first() {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

/// A graceful `SENTINEL FAILOVER` (no process dies): once the old master is
/// a replica, the nodes ask the sentinels again and write to the new one.
/// Before, the connection to the old master stayed healthy, every write on
/// it failed with READONLY (a reply, which the reconnect check never saw),
/// and the nodes stayed degraded until restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_graceful_sentinel_failover() {
    let s = Sentinels::start().await;
    let (a, b, mut alice, mut bob) = two_nodes(&s, ["ga", "gb"]).await;
    let old = s.master;
    failover(&s).await;
    assert!(
        eventually(WAIT * 3, || async move { role(old).await == "slave" }).await,
        "the old master never became a replica"
    );
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        alice.msg("lobby", &format!("after {n}")).await;
        if let Some(v) = bob.try_recv(BEAT).await {
            if v["type"] == "msg" && v["text"].as_str().unwrap_or("").starts_with("after") {
                break;
            }
        }
        assert!(started.elapsed() < WAIT * 2, "delivery never resumed");
    }
    wait_ready(a.admin()).await;
    wait_ready(b.admin()).await;
}

/// The room counter on the server at `port` (0 when it is not there).
async fn room_id(port: u16) -> u64 {
    let Some(mut c) = common::redis_sentinel::connect(port).await else {
        return 0;
    };
    redis::cmd("GET")
        .arg("wsgate:room:{lobby}:id")
        .query_async::<Option<u64>>(&mut c)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// A master the sentinels cannot demote (its `REPLICAOF` renamed away, as a
/// master cut off from them stays a master): after `SENTINEL FAILOVER` the
/// nodes follow the `+switch-master` announcement and write to the promoted
/// replica. Before, they kept writing to the old master, which never
/// answered `READONLY`, and the new one saw none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_switch_master_announcement() {
    let pinned = [
        "--rename-command",
        "REPLICAOF",
        "",
        "--rename-command",
        "SLAVEOF",
        "",
    ];
    let s = Sentinels::start_with_master_args(&pinned).await;
    let (_a, _b, mut alice, mut bob) = two_nodes(&s, ["sa", "sb"]).await;
    // Both nodes listen to the first sentinel before the switch is made.
    let first = s.sentinels[0];
    assert!(
        eventually(WAIT, || async move {
            let Some(mut c) = common::redis_sentinel::connect(first).await else {
                return false;
            };
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            list.lines().filter(|l| l.contains(" sub=1 ")).count() >= 2
        })
        .await,
        "the nodes never subscribed to +switch-master"
    );
    let new = s.replica;
    failover(&s).await;
    let s = &s;
    assert!(
        eventually(
            WAIT * 3,
            || async move { s.master_port().await == Some(new) }
        )
        .await,
        "the sentinels never switched to the replica"
    );
    assert_eq!(role(s.master).await, "master", "the old master was demoted");
    let before = room_id(new).await;
    let started = Instant::now();
    let mut n = 0;
    while room_id(new).await <= before {
        n += 1;
        alice.msg("lobby", &format!("after {n}")).await;
        assert!(
            started.elapsed() < WAIT * 2,
            "no message reached the new master ({n} sent, all to the old one)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(role(s.master).await, "master", "the old master was demoted");
    // Bob's node moved too: it resubscribed on the new master.
    loop {
        n += 1;
        alice.msg("lobby", &format!("later {n}")).await;
        if let Some(v) = bob.try_recv(BEAT).await {
            if v["type"] == "msg" && v["text"].as_str().unwrap_or("").starts_with("later") {
                break;
            }
        }
        assert!(started.elapsed() < WAIT * 3, "delivery never resumed");
    }
}
