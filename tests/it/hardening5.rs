//! Hardening, round 5 (a fourth black-box probe: chat recovery and its
//! fallbacks in a cluster, HTTP/2 upstreams against clients that stop
//! reading). Every wait is bounded.

use crate::common;

use common::redis::Redis;
use common::*;
use http::StatusCode;

/// A chat node on one Redis, `max_rooms_per_connection` small.
async fn cluster_node(redis: &Redis) -> TestGateway {
    let cfg = Cfg::new()
        .set("server.node_id", "n1")
        .set("log.access_log", false)
        .listener_plain()
        .route_app("/chat", "chat")
        .set("app.chat.max_rooms_per_connection", 4)
        .set("cluster.redis", redis.url())
        .build();
    TestGateway::start(&cfg).await
}

/// A fallback request naming more rooms than a connection may hold was
/// refused only after each room's head had been read from Redis, which made
/// each room's epoch key (for days): one 64 KiB request line made thousands
/// of keys and seconds of Redis work, slowing every node's chat. The list is
/// now refused as it is read.
#[tokio::test]
async fn a_room_list_past_the_cap_is_refused_before_redis_is_asked() {
    let redis = Redis::start().await;
    let gw = cluster_node(&redis).await;
    let rooms: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let list = rooms.join(",");
    for path in ["poll", "sse"] {
        let r = get(gw.http(), &format!("/chat/{path}?user=amp&rooms={list}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
        assert_eq!(json_of(&r)["code"], "too_many_rooms", "{path}");
    }
    let keys: Vec<String> = rooms
        .iter()
        .map(|r| format!("wsgate:room:{{{r}}}:epoch"))
        .collect();
    assert_eq!(
        redis.command(&format!("EXISTS {}", keys.join(" "))).await,
        ":0"
    );
    // A list within the cap reads its heads (and so makes the epoch).
    let r = get(gw.http(), "/chat/poll?user=amp&rooms=r0").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(redis.command(&format!("EXISTS {}", keys[0])).await, ":1");
}

/// A new SSE stream (no `Last-Event-ID`) read the rooms' heads, then joined:
/// a message published in between reached neither, and the stream's cursor
/// skipped it, so even a reconnect could not get it back (the probe: 132 of
/// 150 new streams on a busy room with Redis). The window is now read from
/// history after the join. A sender publishes as fast as its own copies come
/// back while new streams open; each stream's messages follow its welcome's
/// offset without a gap.
#[tokio::test]
async fn a_new_sse_stream_misses_nothing_published_while_it_joins() {
    let redis = Redis::start().await;
    let gw = cluster_node(&redis).await;
    let addr = gw.http();
    let mut sender = chat::Client::new(addr, "pub").await;
    sender.join("busy").await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let publishing = tokio::spawn(async move {
        for n in 0.. {
            if stopped.try_recv().is_ok() {
                return n;
            }
            // Its own copy read back before the next: it reads as it sends.
            sender.drain_to("busy", &format!("m{n}")).await;
        }
        unreachable!()
    });
    for i in 0..20 {
        let path = format!("/chat/sse?user=s{i}&rooms=busy");
        let (mut sse, _) = chat::Sse::open(addr, &path, None).await;
        let (_, welcome) = sse.next_until("welcome", |v| v["type"] == "welcome").await;
        let offset = &welcome["rooms"]["busy"]["offset"];
        let first = offset.as_u64().expect("an offset") + 1;
        for expect in first..first + 3 {
            let (_, m) = sse.next_until("a message", |v| v["type"] == "msg").await;
            assert_eq!(m["id"], expect, "stream {i}: {m}");
        }
        sse.close();
    }
    let _ = stop.send(());
    let sent = tokio::time::timeout(WAIT, publishing)
        .await
        .expect("the sender stops")
        .expect("sender");
    assert!(sent >= 60, "{sent} messages");
}
