//! The Redis registry agreeing with a node's own state (docs/cluster.md,
//! "Liveness and dead nodes"): memberships changed while the node had Redis
//! marked down are written once it is back, and a room's first member on a
//! node is not handed messages from before its join. A real `redis-server`,
//! in-process nodes; `redis-server` must be installed (`scripts/test.sh`).

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use common::chat::{is_msg, Client};
use common::redis::Redis;
use common::{eventually, get, post, Cfg, TestGateway, WAIT};

/// A chat node joined to `redis` with heartbeat `beat`.
async fn node(id: &str, redis: &Redis, beat: &str) -> TestGateway {
    node_with(id, redis, beat, |c| c).await
}

async fn node_with(
    id: &str,
    redis: &Redis,
    beat: &str,
    more: impl FnOnce(Cfg) -> Cfg,
) -> TestGateway {
    // The cluster tests' node, with this test's beat.
    let cfg = more(
        crate::cluster::node_cfg(id, &redis.url(), "127.0.0.1:0", "127.0.0.1:0")
            .set("cluster.heartbeat", beat),
    )
    .build();
    let gw = TestGateway::start(&cfg).await;
    assert!(ready_is(gw.admin(), true, WAIT).await, "node never ready");
    gw
}

async fn ready_is(admin: SocketAddr, ready: bool, within: Duration) -> bool {
    eventually(within, || async move {
        (get(admin, "/readyz").await.status == StatusCode::OK) == ready
    })
    .await
}

/// Whether Redis has `user` among the members of `room` (any node).
async fn member_in_redis(redis: &Redis, room: &str, user: &str) -> bool {
    let n = redis
        .command(&format!(
            "ZLEXCOUNT wsgate:room:{{{room}}}:members \"[{user}\\t\" \"({user}\\n\""
        ))
        .await;
    n != ":0"
}

#[tokio::test]
async fn memberships_changed_while_redis_was_marked_down_reach_redis() {
    let redis = Redis::start().await;
    // A long beat: the down window after a dropped connection lasts until
    // the next tick (half a beat), time enough to join and leave in it.
    let gw = node("A", &redis, "2s").await;
    let (addr, admin) = (gw.http(), gw.admin());
    let mut keep = Vec::new();
    for attempt in 0..5 {
        let (stay, left, came) = (
            format!("stay{attempt}"),
            format!("left{attempt}"),
            format!("came{attempt}"),
        );
        let mut stayer = Client::new(addr, &stay).await;
        stayer.join("r").await;
        let mut leaver = Client::new(addr, &left).await;
        leaver.join("r").await;
        let settled = eventually(WAIT, || member_in_redis(&redis, "r", &left)).await;
        assert!(settled, "{left}'s join never reached Redis");
        // Dropping the node's connections marks Redis down at once (the
        // client's disconnection push); the next beat reconnects.
        let killed = redis
            .command(&format!("CLIENT KILL LADDR 127.0.0.1:{}", redis.port))
            .await;
        assert!(killed.starts_with(':'), "CLIENT KILL: {killed}");
        if !ready_is(admin, false, Duration::from_secs(1)).await {
            continue;
        }
        leaver.send(json!({"type":"leave","room":"r"})).await;
        let me = left.clone();
        leaver
            .recv_until("own leave", |v| {
                v["type"] == "presence" && v["user"] == me.as_str() && v["state"] == "leave"
            })
            .await;
        let mut comer = Client::new(addr, &came).await;
        comer.join("r").await;
        if get(admin, "/readyz").await.status == StatusCode::OK {
            // Redis was back before both changes were made: try again.
            keep.extend([stayer, leaver, comer]);
            continue;
        }
        assert!(ready_is(admin, true, WAIT).await, "Redis never back");
        let synced = eventually(WAIT, || async {
            member_in_redis(&redis, "r", &came).await
                && !member_in_redis(&redis, "r", &left).await
                && member_in_redis(&redis, "r", &stay).await
        })
        .await;
        assert!(
            synced,
            "Redis never learned that {left} left and {came} joined while it was marked down"
        );
        // A node's registry sets last until it is swept (a dead node's
        // users must be found whenever a sweeper comes).
        let pid = std::process::id();
        for key in ["rooms", "users"] {
            let ttl = redis
                .command(&format!("PTTL wsgate:node:{{A#{pid}}}:{key}"))
                .await;
            assert_eq!(ttl, ":-1", "the node's {key} set expires");
        }
        return;
    }
    panic!("no attempt caught the node with Redis marked down");
}

#[tokio::test]
async fn a_rooms_first_member_on_a_node_gets_nothing_from_before_its_join() {
    let redis = Redis::start().await;
    let a = node("A", &redis, "200ms").await;
    let b = node("B", &redis, "200ms").await;
    let mut alice = Client::new(a.http(), "alice").await;
    alice.join("r").await;
    // Pushed through B, which holds no member of the room: delivered to
    // nobody there, so no mark of where B's members left off.
    let r = post(
        b.http(),
        "/chat/api/push",
        json!({"room":"r","text":"pushed via B"}),
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    alice
        .recv_until("the push", |v| is_msg(v, "pushed via B"))
        .await;
    for i in 0..5 {
        alice.msg("r", &format!("m{i}")).await;
    }
    alice.recv_until("its own m4", |v| is_msg(v, "m4")).await;
    let mut bob = Client::new(b.http(), "bob").await;
    bob.send(json!({"type":"join","room":"r"})).await;
    let ack = bob
        .recv_until("own join", |v| {
            v["type"] == "presence" && v["user"] == "bob"
        })
        .await;
    let offset = ack["offset"].as_u64().expect("offset");
    assert_eq!(offset, 6, "{ack}");
    alice.msg("r", "after").await;
    let first = bob.recv_until("a message", |v| v["type"] == "msg").await;
    assert!(
        is_msg(&first, "after"),
        "bob, joined at offset {offset}, was first handed {first}"
    );
    assert_eq!(first["id"].as_u64(), Some(offset + 1), "{first}");
}

/// A long-poll cursor's live part counts on the node that made it: brought
/// to a node started earlier (a balancer moved the client, its node
/// drained), it must not hide that node's events.
#[tokio::test]
async fn a_poll_cursor_from_another_node_still_gets_this_nodes_events() {
    let redis = Redis::start().await;
    let a = node("A", &redis, "200ms").await;
    // Started later: its live numbers run ahead of A's.
    let b = node("B", &redis, "200ms").await;
    let poll = |addr: SocketAddr, cursor: String, timeout: u32| async move {
        let path = format!("/chat/poll?user=dave&rooms=lobby&timeout={timeout}&cursor={cursor}");
        let r = get(addr, &path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        common::json_of(&r)
    };
    // Its join acknowledgement is a live event: the cursor carries B's number.
    let first = poll(b.http(), String::new(), 0).await;
    let mut cursor = first["cursor"].as_str().expect("cursor").to_string();
    assert!(!cursor.ends_with("@0"), "{cursor}");
    // Dave's session on A begins with this poll; bob, on A, then writes.
    let got = poll(a.http(), cursor.clone(), 0).await;
    cursor = got["cursor"].as_str().expect("cursor").to_string();
    let mut bob = Client::new(a.http(), "bob").await;
    bob.send(json!({"type":"dm","to":"dave","text":"on A"}))
        .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let got = poll(a.http(), cursor, 2).await;
        cursor = got["cursor"].as_str().expect("cursor").to_string();
        let events = got["events"].as_array().cloned().unwrap_or_default();
        if events
            .iter()
            .any(|e| e["type"] == "dm" && e["text"] == "on A")
        {
            return;
        }
        seen.extend(events);
    }
    panic!("dave's polls on A never got bob's DM: {seen:?}");
}

/// A stream or poll session refused by the address's room cap leaves
/// nothing in Redis (reading heads makes each room's epoch, kept for
/// `room_ttl`: refused requests would fill Redis).
#[tokio::test]
async fn a_refused_stream_or_poll_makes_no_keys() {
    let redis = Redis::start().await;
    let gw = node_with("A", &redis, "200ms", |c| {
        c.set("app.chat.max_rooms_per_ip", 2)
    })
    .await;
    let addr = gw.http();
    let (_held, parts) = common::chat::Sse::open(addr, "/chat/sse?user=u1&rooms=a,b", None).await;
    assert_eq!(parts.status, StatusCode::OK);
    for path in [
        "/chat/sse?user=u2&rooms=c,d",
        "/chat/poll?user=u3&rooms=e,f",
    ] {
        let r = get(addr, path).await;
        assert_eq!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{path}: {}",
            r.text()
        );
    }
    for room in ["c", "d", "e", "f"] {
        let n = redis
            .command(&format!("EXISTS wsgate:room:{{{room}}}:epoch"))
            .await;
        assert_eq!(n, ":0", "a refused request made room {room}'s epoch");
    }
    let n = redis.command("EXISTS wsgate:room:{a}:epoch").await;
    assert_eq!(n, ":1", "the admitted stream's room has its epoch");
}

/// Room ids past 10^14 are written as integers (Lua's `..` writes `1e+14`,
/// which no node decodes: every later message of the room was lost).
#[tokio::test]
async fn room_ids_past_ten_to_the_fourteenth_stay_integers() {
    let redis = Redis::start().await;
    let gw = node("A", &redis, "200ms").await;
    let set = redis
        .command("SET wsgate:room:{big}:id 99999999999998")
        .await;
    assert_eq!(set, "+OK");
    let mut alice = Client::new(gw.http(), "alice").await;
    alice.join("big").await;
    for (i, want) in [
        99_999_999_999_999u64,
        100_000_000_000_000,
        100_000_000_000_001,
    ]
    .into_iter()
    .enumerate()
    {
        let text = format!("m{i}");
        alice.msg("big", &text).await;
        let got = alice
            .recv_until("its own message", |v| is_msg(v, &text))
            .await;
        assert_eq!(got["id"].as_u64(), Some(want), "{got}");
    }
}
