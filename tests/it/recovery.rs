//! Recovery (docs/chat-protocol.md, "Recovery"): a client that reconnects
//! with `since` and `epoch` gets exactly the messages it missed, in order,
//! then `recovered: true`; a new history stream (a restarted node, a Redis
//! that lost its keys) or messages aged out by `history_ttl` give
//! `recovered: false`. SSE `Last-Event-ID` and long-poll cursors carry the
//! epoch too. Real gateways, real WebSocket and HTTP clients, a real
//! `redis-server`.

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::{json, Value};

use crate::common;
use common::chat::{is_msg, Client, Sse};
use common::redis::Redis;
use common::{eventually, get, json_of, Cfg, TestGateway, WAIT};

fn config() -> Cfg {
    Cfg::new()
        .set("server.node_id", "r1")
        .set("log.access_log", false)
        .listener_plain()
        .admin()
        .route_app("/chat", "chat")
        .set("app.chat.history", 500)
        .set("app.chat.send_queue", 1024)
        .set("app.chat.ping_interval", "30s")
}

/// Joins `room` (with `since`/`epoch` when given) and reads up to its own
/// acknowledgement: the messages before it, and the ack.
async fn join(c: &mut Client, room: &str, since: Option<(u64, &str)>) -> (Vec<Value>, Value) {
    let mut frame = json!({"type":"join","room":room});
    if let Some((offset, epoch)) = since {
        frame["since"] = json!(offset);
        frame["epoch"] = json!(epoch);
    }
    c.send(frame).await;
    let me = c.user.clone();
    let mut before = Vec::new();
    loop {
        let v = c.recv().await;
        if v["type"] == "presence" && v["user"] == me.as_str() && v["state"] == "join" {
            return (before, v);
        }
        before.push(v);
    }
}

fn ids(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|v| v["type"] == "msg")
        .map(|v| v["id"].as_u64().expect("id"))
        .collect()
}

#[tokio::test]
async fn a_client_reconnecting_while_messages_flow_gets_each_missed_one_once() {
    let gw = TestGateway::start(&config().build()).await;
    let addr = gw.http();
    const TOTAL: u64 = 200;
    let mut alice = Client::new(addr, "alice").await;
    join(&mut alice, "lobby", None).await;
    let mut bob = Client::new(addr, "bob").await;
    let (_, ack) = join(&mut bob, "lobby", None).await;
    let epoch = ack["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(ack["offset"], 0, "{ack}");
    assert!(ack.get("recovered").is_none(), "{ack}");

    // Alice sends without pause, reading her own copies as she goes.
    let writer = tokio::spawn(async move {
        for i in 1..=TOTAL {
            alice.drain_to("lobby", &format!("m{i}")).await;
        }
        alice
    });
    // Bob reads a while, then goes away mid-flow.
    let mut seen = 0;
    while seen < 40 {
        let v = bob.recv().await;
        if v["type"] == "msg" {
            seen = v["id"].as_u64().expect("id");
        }
    }
    drop(bob);

    let mut bob = Client::new(addr, "bob").await;
    let (replayed, ack) = join(&mut bob, "lobby", Some((seen, &epoch))).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["epoch"], epoch.as_str());
    let upto = ack["offset"].as_u64().expect("offset");
    let replayed = ids(&replayed);
    assert_eq!(replayed, (seen + 1..=upto).collect::<Vec<_>>());
    // Then live, from where the replay stopped, each message once.
    let mut live = Vec::new();
    let mut last = upto;
    while last < TOTAL {
        let v = bob.recv().await;
        if v["type"] == "msg" {
            last = v["id"].as_u64().expect("id");
            live.push(last);
        }
    }
    assert_eq!(live, (upto + 1..=TOTAL).collect::<Vec<_>>());
    tokio::time::timeout(WAIT, writer)
        .await
        .expect("writer finishes")
        .expect("writer");
}

/// Bob's position in `lobby` after a message: `(epoch, offset)`.
async fn position(addr: SocketAddr) -> (String, u64) {
    let mut bob = Client::new(addr, "bob").await;
    join(&mut bob, "lobby", None).await;
    bob.drain_to("lobby", "before").await;
    let (_, ack) = join(&mut bob, "lobby", None).await;
    let epoch = ack["epoch"].as_str().expect("epoch").to_string();
    (epoch, ack["offset"].as_u64().expect("offset"))
}

#[tokio::test]
async fn a_restarted_node_is_a_new_epoch_on_every_transport() {
    let old = TestGateway::start(&config().build()).await;
    let (epoch, offset) = position(old.http()).await;
    let cursor = format!("lobby:{offset}:{epoch}");
    drop(old);

    // The "restarted" node: its history began again.
    let gw = TestGateway::start(&config().build()).await;
    let addr = gw.http();
    let mut bob = Client::new(addr, "bob").await;
    let (replayed, ack) = join(&mut bob, "lobby", Some((offset, &epoch))).await;
    assert!(replayed.is_empty());
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"], epoch.as_str());

    let (mut sse, _) = Sse::open(addr, "/chat/sse?user=carol&rooms=lobby", Some(&cursor)).await;
    let (_, welcome) = sse.next().await;
    assert_eq!(welcome["rooms"]["lobby"]["recovered"], false, "{welcome}");
    sse.close();

    let r = get(
        addr,
        &format!("/chat/poll?user=dave&rooms=lobby&cursor={cursor}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let events = json_of(&r)["events"].to_string();
    assert!(
        events.contains(r#""type":"recovery""#) && events.contains(r#""recovered":false"#),
        "{events}"
    );
}

#[tokio::test]
async fn history_ttl_ages_messages_out_and_then_recovery_fails() {
    let gw = TestGateway::start(&config().set("app.chat.history_ttl", "1s").build()).await;
    let addr = gw.http();
    let (epoch, offset) = position(addr).await;
    let history = || async move {
        json_of(&get(addr, "/chat/api/history?room=lobby").await)["messages"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(history().await, 1);
    assert!(
        eventually(WAIT, || async { history().await == 0 }).await,
        "the message never aged out"
    );
    let mut bob = Client::new(addr, "bob").await;
    let (_, ack) = join(&mut bob, "lobby", Some((offset - 1, &epoch))).await;
    assert_eq!(ack["epoch"], epoch.as_str());
    assert_eq!(
        ack["recovered"], false,
        "the gap is no longer in history: {ack}"
    );
}

/// A chat node clustered through `redis`, once `/readyz` says it reached it.
async fn node(id: &str, redis: &Redis, ttl: &str) -> TestGateway {
    let cfg = config()
        .set("server.node_id", id)
        .set("app.chat.history_ttl", ttl)
        .set("cluster.redis", redis.url())
        .set("cluster.heartbeat", "200ms");
    let gw = TestGateway::start(&cfg.build()).await;
    let admin = gw.admin();
    let ready = eventually(WAIT, || async move {
        get(admin, "/readyz").await.status == StatusCode::OK
    });
    assert!(ready.await, "node {id} never became ready");
    gw
}

#[tokio::test]
async fn in_a_cluster_history_survives_a_node_and_not_a_flushall() {
    let redis = Redis::start().await;
    let a = node("na", &redis, "0").await;
    let (epoch, offset) = position(a.http()).await;
    let mut alice = Client::new(a.http(), "alice").await;
    join(&mut alice, "lobby", None).await;
    alice.drain_to("lobby", "while bob was away").await;

    // Another node recovers from Redis: same stream, the missed message.
    let b = node("nb", &redis, "0").await;
    let mut bob = Client::new(b.http(), "bob").await;
    let (replayed, ack) = join(&mut bob, "lobby", Some((offset, &epoch))).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert!(replayed.iter().any(|v| is_msg(v, "while bob was away")));
    let upto = ack["offset"].as_u64().expect("offset");

    // Redis loses everything: a new stream, and recovery says so.
    assert_eq!(redis.command("FLUSHALL").await, "+OK");
    alice.drain_to("lobby", "after the flush").await;
    let mut carol = Client::new(b.http(), "carol").await;
    let (_, ack) = join(&mut carol, "lobby", Some((upto, &epoch))).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"], epoch.as_str());
}

#[tokio::test]
async fn history_ttl_applies_in_redis_too() {
    let redis = Redis::start().await;
    let a = node("na", &redis, "1s").await;
    let addr = a.http();
    position(addr).await;
    let history = || async move {
        json_of(&get(addr, "/chat/api/history?room=lobby").await)["messages"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(history().await, 1);
    assert!(
        eventually(WAIT, || async { history().await == 0 }).await,
        "the message never aged out of Redis history"
    );
}

/// Two processes with one `server.node_id` (a binary upgrade runs the old and
/// the new side by side) are two members of the cluster: each delivers the
/// other's room messages. Before, each skipped the other's as its own, so
/// messages sent through the draining process never reached clients already
/// on the new one. Clients still see the one name.
#[tokio::test]
async fn two_processes_of_one_node_id_deliver_each_others_messages() {
    use crate::cluster::{ChildNode, Node};
    let redis = Redis::start().await;
    let old = ChildNode::start("n1", &redis).await;
    let new = Node::start("n1", &redis).await;
    let mut alice = Client::new(old.addr, "alice").await;
    alice.join("lobby").await;
    let mut bob = Client::new(new.addr(), "bob").await;
    bob.join("lobby").await;
    alice
        .send(json!({"type": "msg", "room": "lobby", "text": "from the old"}))
        .await;
    bob.recv_until("alice's message through the other process", |v| {
        is_msg(v, "from the old")
    })
    .await;
    bob.send(json!({"type": "msg", "room": "lobby", "text": "from the new"}))
        .await;
    alice
        .recv_until("bob's message through the other process", |v| {
            is_msg(v, "from the new")
        })
        .await;
    let nodes: Vec<String> = common::chat::online(new.addr())
        .await
        .into_iter()
        .map(|(_, node)| node)
        .collect();
    assert_eq!(nodes, ["n1", "n1"]);
}

/// Two nodes, one sender on each, sending at once: every member, on either
/// node, gets the room's messages in id order, and an SSE stream gets every
/// one of them. Before, a node delivered its own sender's messages at once,
/// ahead of the other node's lower ids still on their way through Redis:
/// WebSocket members saw ids go back, and SSE streams (whose cursor drops an
/// id at or below it) lost exactly those messages.
#[tokio::test]
async fn two_nodes_sending_at_once_deliver_in_id_order() {
    use crate::cluster::Node;
    const EACH: usize = 100;
    let redis = Redis::start().await;
    let (a, b) = (
        Node::start("oa", &redis).await,
        Node::start("ob", &redis).await,
    );
    let mut watcher = Client::new(b.addr(), "watcher").await;
    watcher.join("r").await;
    let (mut sse, _) = Sse::open(b.addr(), "/chat/sse?user=sse&rooms=r", None).await;
    let mut senders = Vec::new();
    for (node, user) in [(a.addr(), "alice"), (b.addr(), "bob")] {
        let mut c = Client::new(node, user).await;
        c.join("r").await;
        senders.push(c);
    }
    let sends = senders.into_iter().map(|mut c| {
        tokio::spawn(async move {
            for i in 0..EACH {
                c.msg("r", &format!("{} {i}", c.user)).await;
            }
            // Its acks and the room's messages, read to the end.
            let mut seen = 0;
            while seen < 2 * EACH {
                if c.recv().await["type"] == "msg" {
                    seen += 1;
                }
            }
        })
    });
    let sends: Vec<_> = sends.collect();
    let mut ids = Vec::new();
    while ids.len() < 2 * EACH {
        let v = watcher.recv().await;
        if v["type"] == "msg" {
            ids.push(v["id"].as_u64().expect("id"));
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
    let mut streamed = 0;
    while streamed < 2 * EACH {
        let (_, v) = sse.next().await;
        if v["type"] == "msg" {
            streamed += 1;
        }
    }
    for s in sends {
        s.await.expect("sender");
    }
}
