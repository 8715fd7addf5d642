//! The chat app over real sockets: the WebSocket protocol, ordering, presence,
//! tabs, the SSE / long-poll / send fallbacks, the HTTP API, backpressure and
//! keepalive. Nothing sleeps to synchronise: tests wait for the events they
//! expect (with a deadline) or poll state with `common::eventually`.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use common::chat::{is_presence, online_users, Client, Sse};
use common::raw::ws_request;
use common::{eventually, get, json_of, post, raw, send, Cfg, TestGateway, WAIT};

/// One node with the chat app at `/chat`, a short history and poll timeout.
fn config() -> Cfg {
    Cfg::new()
        .set("server.node_id", "t1")
        .set("server.shutdown_grace", "5s")
        .set("log.access_log", false)
        .listener_plain()
        .route_app("/chat", "chat")
        .set("app.chat.history", 20)
        .set("app.chat.max_message_size", "1KiB")
        .set("app.chat.ping_interval", "30s")
        .set("app.chat.send_queue", 64)
        .set("app.chat.poll_idle_timeout", "1s")
}

async fn gateway(cfg: Cfg) -> TestGateway {
    TestGateway::start(&cfg.build()).await
}

// ---- protocol -------------------------------------------------------------------

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
async fn shutdown_closes_sessions_with_1001() {
    let gw = gateway(config()).await;
    let mut a = Client::new(gw.http(), "alice").await;
    let TestGateway { handle, dir: _dir } = gw;
    let drained = tokio::spawn(async move { handle.shutdown().await });
    assert_eq!(a.close_code().await, Some(CloseCode::Away));
    assert!(
        drained.await.expect("join"),
        "drained within the grace period"
    );
}

// ---- backpressure -----------------------------------------------------------------

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

// ---- fallbacks --------------------------------------------------------------------

#[tokio::test]
async fn sse_streams_events_and_resumes_with_last_event_id() {
    let gw = gateway(config()).await;
    let addr = gw.http();
    let mut alice = Client::new(addr, "alice").await;
    alice.join("lobby").await;

    let (mut sse, parts) = Sse::open(addr, "/chat/sse?user=carol&rooms=lobby", None).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(parts.headers["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/event-stream"));
    let (id0, welcome) = sse.next().await;
    let lobby = &welcome["rooms"]["lobby"];
    assert!(
        lobby["epoch"].is_string() && lobby["offset"] == 0,
        "{welcome}"
    );
    assert_eq!(
        welcome,
        json!({"type":"welcome","user":"carol","node":"t1","rooms":{"lobby":lobby}})
    );
    let ep = lobby["epoch"].as_str().expect("epoch").to_string();
    let at = |n: u64| format!("lobby:{n}:{ep}");
    assert_eq!(id0, at(0));
    let (_, v) = sse.next().await;
    assert!(is_presence(&v, "carol", "join"), "{v}");
    alice
        .recv_until("carol joins", |v| is_presence(v, "carol", "join"))
        .await;

    alice
        .send(json!({"type":"msg","room":"lobby","text":"hi carol"}))
        .await;
    let (id1, m) = sse.next_until("msg", |v| v["type"] == "msg").await;
    assert_eq!(m["text"], "hi carol");
    assert_eq!(id1, at(1));

    // Carol answers over POST /chat/send; alice gets it, and so does carol's stream.
    let r = post(
        addr,
        "/chat/send?user=carol",
        &json!({"type":"msg","room":"lobby","text":"hi alice"}).to_string(),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(json_of(&r)["id"], 2);
    alice
        .recv_until("carol's msg", |v| {
            v["type"] == "msg" && v["from"] == "carol"
        })
        .await;
    let (id2, _) = sse.next_until("own msg", |v| v["type"] == "msg").await;
    assert_eq!(id2, at(2));

    // Carol goes away: presence leave, and she is offline.
    sse.close();
    alice
        .recv_until("carol leaves", |v| is_presence(v, "carol", "leave"))
        .await;
    assert_eq!(online_users(addr).await, vec!["alice"]);

    // Two messages while she is away; she resumes from id 1.
    alice.sentinel("lobby", "missed 1").await;
    alice.sentinel("lobby", "missed 2").await;
    let (mut sse, _) = Sse::open(addr, "/chat/sse?user=carol&rooms=lobby", Some(&id1)).await;
    let (id, w) = sse.next().await;
    assert_eq!((id, w["type"].as_str()), (at(1), Some("welcome")));
    // Same epoch, nothing aged out: recovered.
    assert_eq!(w["rooms"]["lobby"]["recovered"], true, "{w}");
    let mut texts = Vec::new();
    let mut last = String::new();
    while texts.len() < 3 {
        let (id, v) = sse.next().await;
        if v["type"] == "msg" {
            texts.push(v["text"].as_str().expect("text").to_string());
            last = id;
        }
    }
    assert_eq!(texts, vec!["hi alice", "missed 1", "missed 2"]);
    assert_eq!(last, at(4));
    // Live again after the replay, without duplicates.
    alice.drain_to("lobby", "live").await;
    let (id, v) = sse.next_until("live", |v| v["type"] == "msg").await;
    assert_eq!((id, v["text"].as_str()), (at(5), Some("live")));
    sse.close();
}

#[tokio::test]
async fn sse_rejects_bad_input() {
    let gw = gateway(config()).await;
    assert_eq!(
        get(gw.http(), "/chat/sse?user=bad%20name").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(gw.http(), "/chat/sse?user=a&rooms=a%20b").await.status,
        StatusCode::BAD_REQUEST
    );
    let req = Request::get("/chat/sse?user=a&rooms=x")
        .header("host", "localhost")
        .header("last-event-id", "garbage")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = send(gw.http(), req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&r)["code"], "bad_cursor");
}

#[tokio::test]
async fn long_poll_delivers_by_cursor_and_times_out_idle_users() {
    let gw = gateway(config()).await;
    let addr = gw.http();
    let mut alice = Client::new(addr, "alice").await;
    alice.join("lobby").await;
    alice.sentinel("lobby", "before").await;

    // First poll: answers at once with the welcome and a cursor at the head.
    let r = get(addr, "/chat/poll?user=dave&rooms=lobby").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let first = json_of(&r);
    let lobby = &first["events"][0]["rooms"]["lobby"];
    assert!(
        lobby["epoch"].is_string() && lobby["offset"] == 1,
        "{first}"
    );
    assert_eq!(
        first["events"][0],
        json!({"type":"welcome","user":"dave","node":"t1","rooms":{"lobby":lobby}})
    );
    assert!(first["events"]
        .as_array()
        .expect("events")
        .iter()
        .any(|e| is_presence(e, "dave", "join")));
    let cursor = first["cursor"].as_str().expect("cursor").to_string();
    assert!(cursor.starts_with("lobby:1:"), "{cursor}");
    alice
        .recv_until("dave joins", |v| is_presence(v, "dave", "join"))
        .await;

    // A waiting poll gets the next message.
    let path = format!("/chat/poll?user=dave&rooms=lobby&cursor={cursor}");
    let waiting = tokio::spawn(async move { get(addr, &path).await });
    alice.sentinel("lobby", "for dave").await;
    let r = waiting.await.expect("poll");
    let body = json_of(&r);
    let events = body["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["text"], "for dave");
    let cursor = body["cursor"].as_str().expect("cursor").to_string();
    assert!(cursor.starts_with("lobby:2:"), "{cursor}");

    // DMs reach poll sessions too (as live events).
    alice
        .send(json!({"type":"dm","to":"dave","text":"secret"}))
        .await;
    alice.recv_until("dm echo", |v| v["type"] == "dm").await;
    let r = get(
        addr,
        &format!("/chat/poll?user=dave&rooms=lobby&cursor={cursor}"),
    )
    .await;
    let body = json_of(&r);
    assert_eq!(body["events"][0]["type"], "dm", "{body}");
    let cursor = body["cursor"].as_str().expect("cursor").to_string();

    // Nothing new: the poll waits for `timeout` seconds, then answers empty.
    let r = get(
        addr,
        &format!("/chat/poll?user=dave&rooms=lobby&cursor={cursor}&timeout=1"),
    )
    .await;
    let body = json_of(&r);
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["cursor"], cursor.as_str());

    // A cursor from an older point replays from history (any node could answer it).
    let r = get(addr, "/chat/poll?user=erin&rooms=lobby&cursor=lobby:0").await;
    let replay = json_of(&r);
    let texts: Vec<&str> = replay["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "msg")
        .map(|e| e["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(texts, vec!["before", "for dave"]);

    // No poll for poll_idle_timeout (1s): dave (and erin) leave.
    alice
        .recv_until("dave leaves", |v| is_presence(v, "dave", "leave"))
        .await;
    assert!(eventually(WAIT, || async { online_users(addr).await == vec!["alice"] }).await);
    assert_eq!(
        get(addr, "/chat/poll?user=dave&cursor=nonsense")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn send_validates_like_the_websocket_path() {
    let gw = gateway(config()).await;
    let addr = gw.http();
    let mut alice = Client::new(addr, "alice").await;
    alice.join("lobby").await;
    let code = |r: &common::Reply| json_of(r)["code"].as_str().unwrap_or("").to_string();

    let r = post(addr, "/chat/send", r#"{"type":"who","room":"lobby"}"#, None).await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (StatusCode::BAD_REQUEST, "missing_field")
    );
    let r = post(
        addr,
        "/chat/send?user=bad%20name",
        r#"{"type":"who","room":"lobby"}"#,
        None,
    )
    .await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_user")
    );
    let r = post(addr, "/chat/send?user=zed", "nope", None).await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (StatusCode::BAD_REQUEST, "bad_json")
    );
    let r = post(
        addr,
        "/chat/send?user=zed",
        r#"{"type":"msg","room":"lobby","text":"x"}"#,
        None,
    )
    .await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (StatusCode::FORBIDDEN, "not_joined")
    );
    let big = json!({"type":"msg","room":"lobby","text":"x".repeat(2000)}).to_string();
    let r = post(addr, "/chat/send?user=alice", &big, None).await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    let r = post(
        addr,
        "/chat/send?user=zed",
        r#"{"type":"join","room":"lobby"}"#,
        None,
    )
    .await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (StatusCode::CONFLICT, "no_stream")
    );
    let r = get(addr, "/chat/send?user=zed").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // Alice is a member (over WebSocket): she may send over HTTP too.
    let r = post(
        addr,
        "/chat/send?user=alice",
        r#"{"type":"msg","room":"lobby","text":"via http"}"#,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(alice.recv().await["text"], "via http");
    let r = post(
        addr,
        "/chat/send?user=zed",
        r#"{"type":"who","room":"lobby"}"#,
        None,
    )
    .await;
    assert_eq!(
        json_of(&r),
        json!({"type":"who","room":"lobby","users":["alice"]})
    );
    let r = post(
        addr,
        "/chat/send?user=zed",
        r#"{"type":"dm","to":"alice","text":"hey"}"#,
        None,
    )
    .await;
    assert_eq!(json_of(&r)["type"], "dm");
    assert_eq!(alice.recv().await["from"], "zed");
}

// ---- API --------------------------------------------------------------------------

#[tokio::test]
async fn push_checks_the_token_and_counts_deliveries() {
    let gw = gateway(config().set("app.chat.push_token", "s3cret")).await;
    let addr = gw.http();
    let body = r#"{"room":"lobby","text":"announcement"}"#;
    let r = post(addr, "/chat/api/push", body, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.contains_key("www-authenticate"));
    let r = post(addr, "/chat/api/push", body, Some("Basic czNjcmV0")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = post(addr, "/chat/api/push", body, Some("Bearer wrong")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post(addr, "/chat/api/push", body, Some("Bearer s3cre")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let mut a1 = Client::new(addr, "alice").await;
    let mut a2 = Client::new(addr, "alice").await;
    let mut bob = Client::new(addr, "bob").await;
    for c in [&mut a1, &mut a2, &mut bob] {
        c.join("lobby").await;
    }
    let (mut sse, _) = Sse::open(addr, "/chat/sse?user=carol&rooms=lobby", None).await;
    sse.next_until("own join", |v| is_presence(v, "carol", "join"))
        .await;
    let r = post(addr, "/chat/api/push", body, Some("Bearer s3cret")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(json_of(&r), json!({"delivered":4}));
    for c in [&mut a1, &mut a2, &mut bob] {
        let v = c.recv_until("push", |v| v["type"] == "msg").await;
        assert_eq!(
            (v["from"].as_str(), v["text"].as_str()),
            (Some("system"), Some("announcement"))
        );
    }
    sse.next_until("push", |v| v["type"] == "msg").await;

    let r = post(
        addr,
        "/chat/api/push",
        r#"{"user":"alice","text":"just you","from":"ops"}"#,
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(json_of(&r), json!({"delivered":2}));
    for c in [&mut a1, &mut a2] {
        let v = c.recv().await;
        assert_eq!(
            (v["type"].as_str(), v["from"].as_str(), v["to"].as_str()),
            (Some("dm"), Some("ops"), Some("alice"))
        );
    }
    let r = post(
        addr,
        "/chat/api/push",
        r#"{"user":"nobody","text":"x"}"#,
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(json_of(&r), json!({"delivered":0}));
    let r = post(
        addr,
        "/chat/api/push",
        r#"{"text":"x"}"#,
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    sse.close();
}

#[tokio::test]
async fn push_is_forbidden_when_disabled() {
    let gw = gateway(config()).await;
    let r = post(
        gw.http(),
        "/chat/api/push",
        r#"{"room":"lobby","text":"x"}"#,
        Some("Bearer anything"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(json_of(&r)["code"], "push_disabled");
    let r = post(
        gw.http(),
        "/chat/api/push",
        r#"{"room":"lobby","text":"x"}"#,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn online_and_history_endpoints() {
    let gw = gateway(config()).await;
    let addr = gw.http();
    let r = get(addr, "/chat/api/online").await;
    assert_eq!(json_of(&r), json!({"users":[]}));
    let mut bob = Client::new(addr, "bob").await;
    let _alice = Client::new(addr, "alice").await;
    let r = get(addr, "/chat/api/online").await;
    assert_eq!(
        json_of(&r),
        json!({"users":[{"user":"alice","node":"t1"},{"user":"bob","node":"t1"}]})
    );

    bob.join("lobby").await;
    for i in 0..25 {
        bob.sentinel("lobby", &format!("m{i}")).await;
    }
    // The ring keeps the last 20 (history = 20).
    let r = get(addr, "/chat/api/history?room=lobby&limit=100").await;
    let h = json_of(&r);
    assert_eq!(h["type"], "history");
    let ids: Vec<u64> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(ids, (6..=25).collect::<Vec<_>>());
    let r = get(addr, "/chat/api/history?room=lobby&limit=2").await;
    let texts: Vec<String> = json_of(&r)["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").into())
        .collect();
    assert_eq!(texts, vec!["m23", "m24"]);
    assert_eq!(
        json_of(&get(addr, "/chat/api/history?room=empty").await)["messages"],
        json!([])
    );
    assert_eq!(
        get(addr, "/chat/api/history").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(addr, "/chat/api/history?room=lobby&limit=x")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(addr, "/chat/api/nope").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn demo_page_is_served() {
    let gw = gateway(config()).await;
    let r = get(gw.http(), "/chat?user=alice").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers["location"], "/chat/?user=alice");
    let r = get(gw.http(), "/chat/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/html"));
    let page = r.text();
    for id in [
        "id=\"status\"",
        "id=\"log\"",
        "id=\"text\"",
        "id=\"send\"",
        "id=\"users\"",
        "name=\"viewport\"",
    ] {
        assert!(page.contains(id), "page has {id}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "self-contained: no external URLs"
    );
}
