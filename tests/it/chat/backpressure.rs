//! Backpressure: a stalled reader is closed with 1008 while consumers that
//! keep up are never kicked, and one client cannot make the others' queues
//! overflow by churning its rooms.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::{config, gateway};
use crate::common::chat::{is_presence, Client};

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

/// Each join or leave is a presence event to every member: a client looping
/// them is held to its allowance (128 at once, then 10 a second), and to
/// `max_rooms_per_connection`, so a member reading at its own pace (here,
/// not at all until the end) is not cut for falling behind.
#[tokio::test]
async fn a_client_churning_rooms_is_held_to_its_allowance() {
    let gw = gateway(
        config()
            .set("app.chat.send_queue", 300)
            .set("app.chat.max_rooms_per_connection", 3),
    )
    .await;
    let addr = gw.http();
    let mut victim = Client::new(addr, "victim").await;
    victim.join("plaza").await;
    let mut churn = Client::new(addr, "churn").await;
    let (mut limited, mut changes, mut joined) = (0, 0, false);
    for _ in 0..200 {
        let state = if joined { "leave" } else { "join" };
        churn.send(json!({"type":state,"room":"plaza"})).await;
        let v = churn
            .recv_until("an answer", |v| {
                v["type"] == "error" || is_presence(v, "churn", state)
            })
            .await;
        if v["type"] == "error" {
            assert_eq!(v["code"], "rate_limited", "{v}");
            limited += 1;
        } else {
            changes += 1;
            joined = !joined;
        }
    }
    assert!(limited > 0, "200 joins and leaves in a row were all taken");
    assert!(changes < 200, "{changes}");
    // The victim is still connected: its queue held every presence event.
    let v = victim.drain_to("plaza", "still here").await;
    assert_eq!(v["text"], "still here");

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
