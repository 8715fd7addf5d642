//! The WebSocket protocol: welcome, join, messages, history and who; bad
//! frames and users; ordering across senders; presence over tabs; DMs;
//! keepalive dropping silent clients; shutdown closing with 1012.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::{config, gateway};
use crate::common::chat::{is_presence, online_users, Client};
use crate::common::raw::ws_request;
use crate::common::{eventually, raw, TestGateway, WAIT};

#[tokio::test]
async fn welcome_join_msg_history_who() {
    let gw = gateway(config()).await;
    let (mut alice, welcome) = Client::connect(gw.http(), Some("alice")).await;
    assert_eq!(
        welcome,
        json!({"type":"welcome","user":"alice","node":"t1"})
    );
    alice.join("lobby").await;

    let before = now_ms();
    alice
        .send(json!({"type":"msg","room":"lobby","text":"hello"}))
        .await;
    let m = alice.recv().await;
    assert_eq!(m["type"], "msg");
    assert_eq!(
        (m["room"].as_str(), m["from"].as_str(), m["text"].as_str()),
        (Some("lobby"), Some("alice"), Some("hello"))
    );
    assert_eq!(m["id"], 1);
    let ts = m["ts"].as_u64().expect("ts");
    assert!(ts >= before && ts <= now_ms(), "ts is the time in ms: {ts}");

    alice
        .send(json!({"type":"msg","room":"lobby","text":"again"}))
        .await;
    assert_eq!(alice.recv().await["id"], 2);

    alice
        .send(json!({"type":"history","room":"lobby","limit":1}))
        .await;
    let h = alice.recv().await;
    assert_eq!(h["type"], "history");
    assert_eq!(h["room"], "lobby");
    let msgs = h["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["text"], "again");

    alice.send(json!({"type":"who","room":"lobby"})).await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"who","room":"lobby","users":["alice"]})
    );

    alice.send(json!({"type":"leave","room":"lobby"})).await;
    assert!(is_presence(&alice.recv().await, "alice", "leave"));
    alice.send(json!({"type":"who","room":"lobby"})).await;
    assert_eq!(alice.recv().await["users"], json!([]));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_open() {
    let gw = gateway(config()).await;
    let mut a = Client::new(gw.http(), "alice").await;
    a.send_raw(Message::text("not json")).await;
    a.expect_error("bad_json").await;
    a.send(json!({"type":"shout"})).await;
    a.expect_error("unknown_type").await;
    a.send(json!({"room":"lobby"})).await;
    a.expect_error("missing_type").await;
    a.send(json!({"type":"join"})).await;
    a.expect_error("missing_field").await;
    a.send(json!({"type":"msg","room":"lobby"})).await;
    a.expect_error("missing_field").await;
    a.send(json!({"type":"msg","room":"lobby","text":7})).await;
    a.expect_error("bad_field").await;
    a.send(json!({"type":"join","room":"no spaces"})).await;
    a.expect_error("invalid_room").await;
    a.send(json!({"type":"leave","room":"lobby"})).await;
    a.expect_error("not_joined").await;
    a.send(json!({"type":"msg","room":"lobby","text":"x"}))
        .await;
    a.expect_error("not_joined").await;
    a.send(json!({"type":"dm","to":"nobody","text":"x"})).await;
    a.expect_error("user_offline").await;
    a.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    a.expect_error("binary_frame").await;
    // max_message_size is 1 KiB: a longer text is refused, the connection stays.
    a.join("lobby").await;
    a.send(json!({"type":"msg","room":"lobby","text":"x".repeat(1025)}))
        .await;
    let e = a.expect_error("too_large").await;
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("1024")),
        "{e}"
    );
    a.send(json!({"type":"msg","room":"lobby","text":"x".repeat(1024)}))
        .await;
    assert_eq!(
        a.recv().await["type"],
        "msg",
        "a text of exactly the limit is fine"
    );
    a.sentinel("lobby", "still here").await;
    // Far over the limit (beyond the codec's hard limit): close 1009.
    a.send(json!({"type":"msg","room":"lobby","text":"x".repeat(10_000)}))
        .await;
    assert_eq!(a.close_code().await, Some(CloseCode::Size));
}

#[tokio::test]
async fn invalid_user_is_refused_at_the_handshake() {
    let gw = gateway(config()).await;
    for q in [
        "user=bad%20name",
        "user=",
        &format!("user={}", "a".repeat(33)),
        "user=%C3%A9",
    ] {
        let req = ws_request(&format!("/chat/ws?{q}"));
        let resp = raw(gw.http(), req.as_bytes(), Duration::from_millis(500))
            .await
            .answer();
        assert!(resp.starts_with("HTTP/1.1 400"), "{q}: {resp}");
        assert!(resp.contains("invalid user name"), "{q}: {resp}");
    }
    // Absent: a guest name.
    let (_g, welcome) = Client::connect(gw.http(), None).await;
    let name = welcome["user"].as_str().expect("user");
    assert!(name.starts_with("guest-") && name.len() <= 32, "{name}");
    // Not a chat WebSocket path.
    let req = ws_request("/chat/elsewhere");
    let resp = raw(gw.http(), req.as_bytes(), Duration::from_millis(500))
        .await
        .answer();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

#[tokio::test]
async fn fifty_messages_from_two_senders_arrive_once_in_order() {
    let gw = gateway(config()).await;
    let mut alice = Client::new(gw.http(), "alice").await;
    let mut bob = Client::new(gw.http(), "bob").await;
    let mut carol = Client::new(gw.http(), "carol").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.join("lobby").await;
    }
    // Everyone's view is now settled: drain to the sentinel.
    alice.drain_to("lobby", "start").await;
    bob.recv_until("start", |v| v["text"] == "start").await;
    carol.recv_until("start", |v| v["text"] == "start").await;

    for i in 0..50 {
        alice
            .send(json!({"type":"msg","room":"lobby","text":format!("a{i}")}))
            .await;
        bob.send(json!({"type":"msg","room":"lobby","text":format!("b{i}")}))
            .await;
    }
    let mut views = Vec::new();
    for c in [&mut alice, &mut bob, &mut carol] {
        let mut got = Vec::new();
        while got.len() < 100 {
            let v = c.recv().await;
            if v["type"] == "msg" {
                got.push((
                    v["id"].as_u64().expect("id"),
                    v["text"].as_str().expect("text").to_string(),
                ));
            }
        }
        views.push(got);
    }
    for got in &views {
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "ids increase by one: {ids:?}"
        );
        for who in ["a", "b"] {
            let mine: Vec<&str> = got
                .iter()
                .map(|(_, t)| t.as_str())
                .filter(|t| t.starts_with(who))
                .collect();
            let expected: Vec<String> = (0..50).map(|i| format!("{who}{i}")).collect();
            assert_eq!(mine, expected, "each sender's messages once, in order");
        }
    }
    assert_eq!(views[0], views[1], "every member sees the same order");
    assert_eq!(views[1], views[2]);
}

#[tokio::test]
async fn presence_follows_the_last_tab_and_disconnects() {
    let gw = gateway(config()).await;
    let mut bob = Client::new(gw.http(), "bob").await;
    bob.join("lobby").await;
    let mut tab1 = Client::new(gw.http(), "alice").await;
    let mut tab2 = Client::new(gw.http(), "alice").await;
    tab1.join("lobby").await;
    bob.recv_until("alice joins", |v| is_presence(v, "alice", "join"))
        .await;
    tab2.join("lobby").await;
    // The second tab is no news to bob: his next frame is his own sentinel.
    bob.sentinel("lobby", "s1").await;
    assert_eq!(online_users(gw.http()).await, vec!["alice", "bob"]);

    drop(tab1);
    // Alice still has a tab: still in the room, no leave for bob.
    tab2.recv_until("bob's s2", |v| v["text"] == "s1").await;
    bob.send(json!({"type":"who","room":"lobby"})).await;
    // Tab 1's disconnect is handled asynchronously; wait for it via `who` on
    // tab 2 below, then check bob saw no leave.
    bob.recv_until("who", |v| v["type"] == "who").await;
    assert!(
        eventually(WAIT, || async { gw.handle.chat().stats().connections == 2 }).await,
        "tab 1's connection is gone"
    );
    bob.sentinel("lobby", "s2").await;

    drop(tab2);
    let v = bob
        .recv_until("alice leaves", |v| v["type"] == "presence")
        .await;
    assert!(is_presence(&v, "alice", "leave"), "{v}");
    bob.send(json!({"type":"who","room":"lobby"})).await;
    assert_eq!(bob.recv().await["users"], json!(["bob"]));
    assert!(
        eventually(WAIT, || async {
            online_users(gw.http()).await == vec!["bob"]
        })
        .await
    );
}

#[tokio::test]
async fn dm_reaches_every_tab_of_both_users() {
    let gw = gateway(config()).await;
    let mut a1 = Client::new(gw.http(), "alice").await;
    let mut a2 = Client::new(gw.http(), "alice").await;
    let mut b1 = Client::new(gw.http(), "bob").await;
    let mut b2 = Client::new(gw.http(), "bob").await;
    let mut carol = Client::new(gw.http(), "carol").await;
    b1.send(json!({"type":"dm","to":"alice","text":"psst"}))
        .await;
    for c in [&mut a1, &mut a2, &mut b1, &mut b2] {
        let v = c.recv().await;
        assert_eq!(
            (v["type"].as_str(), v["from"].as_str(), v["to"].as_str()),
            (Some("dm"), Some("bob"), Some("alice"))
        );
        assert_eq!(v["text"], "psst");
        assert!(v["id"].as_u64().is_some() && v["ts"].as_u64().is_some());
    }
    // Carol got nothing: her next frame answers her own request.
    carol.send(json!({"type":"who","room":"x"})).await;
    assert_eq!(carol.recv().await["type"], "who");
}

#[tokio::test]
async fn silent_clients_are_dropped() {
    // Fast pings; alice keeps reading (and so answers pings).
    let gw = gateway(config().set("app.chat.ping_interval", "200ms")).await;
    let mut alice = Client::new(gw.http(), "alice").await;
    alice.join("lobby").await;
    // A client that completes the handshake and then never reads or answers.
    let (mut mute, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat?user=mute", gw.http()))
            .await
            .expect("handshake");
    mute.send(Message::text(
        json!({"type":"join","room":"lobby"}).to_string(),
    ))
    .await
    .expect("join");
    alice
        .recv_until("mute joins", |v| is_presence(v, "mute", "join"))
        .await;
    // Two intervals of silence later it is gone, while alice stays.
    alice
        .recv_until("mute is dropped", |v| is_presence(v, "mute", "leave"))
        .await;
    alice.sentinel("lobby", "alive").await;
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1012() {
    let gw = gateway(config().set("server.drain_window", "500ms")).await;
    let mut a = Client::new(gw.http(), "alice").await;
    let TestGateway { handle, dir: _dir } = gw;
    let drained = tokio::spawn(async move { handle.shutdown().await });
    assert_eq!(a.close_code().await, Some(CloseCode::Restart));
    assert!(
        drained.await.expect("join"),
        "drained within the grace period"
    );
}
