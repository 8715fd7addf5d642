//! The fallbacks: SSE (with Last-Event-ID resumption), long poll by cursor,
//! and POST /chat/send validated like the WebSocket path.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::{config, gateway};
use crate::common::chat::{is_presence, online_users, Client, Sse};
use crate::common::{self, eventually, get, json_of, post, send, WAIT};

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
    // Garbage, and bytes that are not text (taken as no cursor before: the
    // stream started live, past any gap; the ninth probe).
    for id in [&b"garbage"[..], b"r1:\xff"] {
        let req = Request::get("/chat/sse?user=a&rooms=x")
            .header("host", "localhost")
            .header(
                "last-event-id",
                http::HeaderValue::from_bytes(id).expect("a header value"),
            )
            .body(Full::new(Bytes::new()))
            .expect("request");
        // A stream never ends: a deadline, not a hung test.
        let r = tokio::time::timeout(WAIT, send(gw.http(), req))
            .await
            .expect("answered, not streamed");
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{id:?}");
        assert_eq!(json_of(&r)["code"], "bad_cursor");
    }
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
    // A body past the frame's limit is not read to its end: the answer says
    // what the limit is, not a length nobody measured.
    let huge = json!({"type":"msg","room":"lobby","text":"x".repeat(20_000)}).to_string();
    let r = post(addr, "/chat/send?user=alice", &huge, None).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        json_of(&r)["message"]
            .as_str()
            .is_some_and(|m| m.contains("over 5120 bytes")),
        "{}",
        r.text()
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

/// Long-poll sessions outlive their requests, so the connection caps do not
/// bound them: a client making sessions for new users is held to
/// `max_poll_sessions_per_ip`, and the node to `max_poll_sessions`.
#[tokio::test]
async fn long_poll_sessions_are_capped_per_address_and_per_node() {
    let gw = gateway(config().set("app.chat.max_poll_sessions_per_ip", 2)).await;
    let addr = gw.http();
    for user in ["p1", "p2"] {
        let r = get(addr, &format!("/chat/poll?user={user}&rooms=lobby")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let r = get(addr, "/chat/poll?user=p3&rooms=lobby").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(json_of(&r)["code"], "too_many_connections");
    assert!(r.headers.contains_key("retry-after"));
    // A session already held is polled as before.
    let r = get(addr, "/chat/poll?user=p1&rooms=lobby&timeout=0").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Once sessions are reaped (poll_idle_timeout, 1 s), the address may open more.
    let again = eventually(WAIT, || async {
        get(addr, "/chat/poll?user=p3&rooms=lobby").await.status == StatusCode::OK
    })
    .await;
    assert!(again, "the address's count was not given back");

    let gw = gateway(
        config()
            .set("app.chat.max_poll_sessions", 1)
            .set("app.chat.max_poll_sessions_per_ip", 0),
    )
    .await;
    let addr = gw.http();
    let r = get(addr, "/chat/poll?user=q1&rooms=lobby").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = get(addr, "/chat/poll?user=q2&rooms=lobby").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(json_of(&r)["code"], "server_full");
}
