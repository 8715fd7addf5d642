//! Backpressure: a stalled reader is closed with 1008 while consumers that
//! keep up are never kicked, and one client cannot make the others' queues
//! overflow by churning its rooms.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::{config, gateway};
use crate::common::chat::{is_presence, Client};
use crate::common::{eventually, get, json_of, WAIT};
use http::StatusCode;

#[tokio::test]
async fn stalled_reader_is_closed_with_1008_and_others_are_unaffected() {
    let gw = gateway(
        config()
            .set("app.chat.send_queue", 8)
            .set("app.chat.max_message_size", "64KiB"),
    )
    .await;
    let addr = gw.http();
    let mut watcher = Client::new(addr, "watcher").await;
    watcher.join("flood").await;
    let mut slow = Client::new(addr, "slow").await;
    slow.join("flood").await;
    watcher
        .recv_until("slow joins", |v| is_presence(v, "slow", "join"))
        .await;
    let mut fast = Client::new(addr, "fast").await;
    fast.join("flood").await;
    watcher
        .recv_until("fast joins", |v| is_presence(v, "fast", "join"))
        .await;

    // The slow client now stops reading. Fast floods the room with 32 KiB
    // messages (far more than the socket buffers hold), reading its own
    // copies; it keeps at most WINDOW messages ahead of the watcher, who reads
    // everything: consumers that keep up are never kicked, the stalled one is.
    let text = "x".repeat(32 * 1024);
    const N: usize = 1000;
    const WINDOW: usize = 4;
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(0usize);
    let (mut fast_tx, mut fast_rx) = fast.ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            seen_rx
                .wait_for(|seen| seen + WINDOW >= i)
                .await
                .expect("watcher alive");
            let frame =
                json!({"type":"msg","room":"flood","text":format!("{i}:{text}")}).to_string();
            fast_tx
                .send(Message::text(frame))
                .await
                .expect("flood send");
        }
        fast_tx
    });
    let fast_reader = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            match fast_rx.next().await {
                Some(Ok(Message::Text(_))) => n += 1,
                Some(Ok(_)) => {}
                other => panic!("fast reader ended early: {other:?}"),
            }
        }
        n
    });
    let chat = gw.handle.chat();
    let mut got = 0;
    let mut saw_leave = false;
    let mut max_queued = 0;
    while got < N {
        let v = watcher.recv().await;
        max_queued = max_queued.max(chat.stats().max_queued);
        if v["type"] == "msg" {
            let t = v["text"].as_str().expect("text");
            let i: usize = t
                .split(':')
                .next()
                .and_then(|i| i.parse().ok())
                .expect("index");
            assert_eq!(i, got, "watcher gets every message in order");
            got += 1;
            let _ = seen_tx.send(got);
        } else if is_presence(&v, "slow", "leave") {
            saw_leave = true;
        }
    }
    let _ = writer.await.expect("writer");
    assert_eq!(
        fast_reader.await.expect("reader"),
        N,
        "the sender is not slowed into a kick either"
    );
    if !saw_leave {
        watcher
            .recv_until("slow is closed", |v| is_presence(v, "slow", "leave"))
            .await;
    }
    assert!(
        max_queued <= 8,
        "queues never exceed send_queue: saw {max_queued}"
    );
    assert!(chat.stats().overflows >= 1);
    assert_eq!(chat.stats().connections, 2, "only watcher and fast remain");
    // The stalled client resumes reading: what was buffered, then close 1008.
    assert_eq!(slow.close_code().await, Some(CloseCode::Policy));
}

/// Each join or leave is a presence event to every member: a client is held
/// to an allowance of them (128 at once, then 10 a second), and to
/// `max_rooms_per_connection`. The frames are sent at once, as a looping
/// client sends them, and each gets exactly one answer: a leave of a room
/// not joined is `not_joined` when allowed, `rate_limited` when not.
#[tokio::test]
async fn a_client_is_held_to_its_join_and_leave_allowance() {
    let gw = gateway(config().set("app.chat.max_rooms_per_connection", 3)).await;
    let addr = gw.http();
    let churn = Client::new(addr, "churn").await;
    const N: usize = 200;
    let (mut tx, mut rx) = churn.ws.split();
    let reader = tokio::spawn(async move {
        let (mut limited, mut allowed) = (0, 0);
        while limited + allowed < N {
            let Some(Ok(Message::Text(t))) = rx.next().await else {
                panic!("the connection ended after {limited} refusals");
            };
            let v: serde_json::Value = serde_json::from_str(&t).expect("json");
            match v["code"].as_str() {
                Some("rate_limited") => limited += 1,
                Some("not_joined") => allowed += 1,
                _ => panic!("unexpected {v}"),
            }
        }
        (limited, allowed)
    });
    for _ in 0..N {
        let frame = json!({"type":"leave","room":"plaza"}).to_string();
        tx.send(Message::text(frame)).await.expect("send");
    }
    let (limited, allowed) = tokio::time::timeout(crate::common::WAIT, reader)
        .await
        .expect("every frame answered in time")
        .expect("reader");
    // 128 at once, and at 10 a second at most a few more while they ran.
    assert!(
        allowed >= 128 && limited > 0,
        "{allowed} allowed, {limited} refused"
    );

    // A connection's rooms are capped.
    let mut fresh = Client::new(addr, "fresh").await;
    for room in ["a1", "a2", "a3"] {
        fresh.join(room).await;
    }
    fresh.send(json!({"type":"join","room":"a4"})).await;
    let v = fresh.expect_error("too_many_rooms").await;
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 3 rooms")),
        "{v}"
    );
}

/// A node never forgets a room with members, so one address opening many
/// connections could hold every room it may keep: the connections of one
/// client address are held to `max_rooms_per_ip` distinct rooms, over
/// WebSocket (an `error` frame) and the fallbacks (429), and a room one of
/// them leaves is free for the others.
#[tokio::test]
async fn one_address_is_held_to_its_rooms() {
    let gw = gateway(config().set("app.chat.max_rooms_per_ip", 2)).await;
    let addr = gw.http();
    let mut a = Client::new(addr, "ann").await;
    let mut b = Client::new(addr, "bob").await;
    a.join("r1").await;
    a.join("r2").await;
    // A room the address already holds costs nothing more.
    b.join("r1").await;
    b.send(json!({"type":"join","room":"r3"})).await;
    let v = b.expect_error("too_many_rooms").await;
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("from this address") && m.contains("at most 2 rooms")),
        "{v}"
    );
    let r = get(addr, "/chat/sse?user=cy&rooms=r4").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(json_of(&r)["code"], "too_many_rooms");
    assert!(r.headers.contains_key("retry-after"));

    a.send(json!({"type":"leave","room":"r2"})).await;
    a.recv_until("ann's leave", |v| is_presence(v, "ann", "leave"))
        .await;
    b.join("r3").await;
    // A connection's end gives its rooms back.
    drop(a);
    b.send(json!({"type":"leave","room":"r1"})).await;
    b.recv_until("bob's leave", |v| is_presence(v, "bob", "leave"))
        .await;
    let given_back = eventually(WAIT, || async {
        get(addr, "/chat/poll?user=dee&rooms=r5").await.status == StatusCode::OK
    })
    .await;
    assert!(given_back, "ann's rooms were given back when she left");
}
