//! Hardening, round 5 (a fourth black-box probe: chat recovery and its
//! fallbacks in a cluster, HTTP/2 upstreams against clients that stop
//! reading). Every wait is bounded.

use crate::common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::redis::Redis;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

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

/// An HTTP/2 (cleartext) server: `/big` streams [`BIG`] bytes in 64 KiB
/// chunks as flow control lets it, counting them in `sent`; `/hold` answers
/// once `open` says so, counting the held requests; anything else is `ok`.
struct H2cServer {
    addr: std::net::SocketAddr,
    sent: Arc<AtomicU64>,
    /// `/big` bodies dropped.
    dropped: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    open: tokio::sync::watch::Sender<bool>,
}

const BIG: u64 = 64 << 20;
const CHUNK: usize = 64 << 10;

type Reply = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

impl H2cServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (open, opened) = tokio::sync::watch::channel(false);
        let server = H2cServer {
            addr: listener.local_addr().expect("addr"),
            sent: Arc::default(),
            dropped: Arc::default(),
            held: Arc::default(),
            connections: Arc::default(),
            open,
        };
        let (sent, dropped, held, conns) = (
            server.sent.clone(),
            server.dropped.clone(),
            server.held.clone(),
            server.connections.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (sent, dropped) = (sent.clone(), dropped.clone());
                let (held, opened) = (held.clone(), opened.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (sent, dropped) = (sent.clone(), dropped.clone());
                    let (held, mut opened) = (held.clone(), opened.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(match req.uri().path() {
                            "/big" => Response::new(big_body(sent, dropped)),
                            "/hold" => {
                                held.fetch_add(1, Ordering::SeqCst);
                                let _ = opened.wait_for(|o| *o).await;
                                Response::new(Full::new(Bytes::from_static(b"held")).boxed())
                            }
                            "/fat" => fat_head(),
                            _ => Response::new(Full::new(Bytes::from_static(b"ok")).boxed()),
                        })
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(1000)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        server
    }
}

/// A response whose head is ~21 KiB as HTTP/2 counts it (90 fields of
/// 200 bytes, plus 32 each): past hyper's default 16 KiB, within the 64 KiB
/// an HTTP/1.1 server's head may take.
fn fat_head() -> Response<Reply> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"fat")).boxed());
    let value = http::HeaderValue::from_str(&"v".repeat(200)).expect("value");
    for i in 0..90 {
        let name = http::HeaderName::try_from(format!("x-fat-{i}")).expect("name");
        r.headers_mut().insert(name, value.clone());
    }
    r
}

/// Counts a response body dropped (its stream ended, read or not).
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// [`BIG`] bytes, each chunk counted in `sent` when it is taken.
fn big_body(sent: Arc<AtomicU64>, dropped: Arc<AtomicUsize>) -> Reply {
    let guard = Dropped(dropped);
    let chunks = (0..BIG / CHUNK as u64).map(move |_| {
        let _ = &guard;
        sent.fetch_add(CHUNK as u64, Ordering::SeqCst);
        Ok(Frame::data(Bytes::from(vec![b'x'; CHUNK])))
    });
    StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

/// A gateway proxying `/` to `up` over cleartext HTTP/2.
async fn h2c_gateway(up: &H2cServer) -> TestGateway {
    h2c_gateway_with(up, |c| c).await
}

/// [`h2c_gateway`], with more settings.
async fn h2c_gateway_with(up: &H2cServer, f: impl FnOnce(Cfg) -> Cfg) -> TestGateway {
    let cfg = f(Cfg::new())
        .set("log.access_log", false)
        .listener_plain()
        .route(Route::upstream("/", "api"))
        .upstream("api", &[up.addr])
        .set("upstream.api.protocol", "h2c")
        .build();
    TestGateway::start(&cfg).await
}

/// Clients that stop reading large responses from an HTTP/2 upstream held
/// the connection's whole receive window (three did, with hyper's 2 MiB a
/// stream and 5 MiB a connection), and every other request to that server
/// got its head and then no body until `response_timeout` (high). Now a
/// connection's window is room for every stream it carries: the stalled
/// streams hold their own windows and the others go on.
#[tokio::test]
async fn clients_that_stop_reading_do_not_stall_an_h2_upstream() {
    let up = H2cServer::start().await;
    let gw = h2c_gateway(&up).await;
    // An HTTP/2 client that takes the responses' heads and never reads their
    // bodies (its windows small, so the gateway holds what it cannot send).
    let tcp = tokio::net::TcpStream::connect(gw.http())
        .await
        .expect("connect");
    let (mut tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(4 * 65_535)
        .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let req = Request::get("http://localhost/big")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = tokio::time::timeout(WAIT, tx.send_request(req))
            .await
            .expect("head in time")
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        stalled.push(resp);
    }
    // The upstream has sent what the gateway's windows let through: more
    // than hyper's old connection window held (the four stalled streams'
    // windows and what the client took).
    let filled = eventually(WAIT, || async { up.sent.load(Ordering::SeqCst) >= 4 << 20 }).await;
    assert!(filled, "{} bytes sent", up.sent.load(Ordering::SeqCst));
    // A large response head (not flow-controlled) is taken as from an
    // HTTP/1.1 server: hyper's default limit answered 502 and ended the
    // connection, cutting every stream on it.
    let r = tokio::time::timeout(WAIT, get(gw.http(), "/fat"))
        .await
        .expect("in time");
    assert_eq!((r.status, r.headers.len() >= 90), (StatusCode::OK, true));
    for _ in 0..3 {
        let r = tokio::time::timeout(WAIT, get(gw.http(), "/ok"))
            .await
            .expect("a whole answer while others stall");
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    }
    drop(stalled);
}

/// A connection carries at most 100 of the gateway's streams: the 101st
/// request in flight opens a second connection, so no one connection's
/// window is ever shared by more streams than it has room for.
#[tokio::test]
async fn an_h2_upstream_gets_another_connection_past_100_streams() {
    let up = H2cServer::start().await;
    let gw = h2c_gateway(&up).await;
    let addr = gw.http();
    let calls: Vec<_> = (0..101)
        .map(|_| tokio::spawn(async move { get(addr, "/hold").await }))
        .collect();
    let all_held = eventually(WAIT, || async { up.held.load(Ordering::SeqCst) == 101 }).await;
    assert!(all_held, "{} held", up.held.load(Ordering::SeqCst));
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    up.open.send_replace(true);
    for call in calls {
        let r = tokio::time::timeout(WAIT, call)
            .await
            .expect("answered in time")
            .expect("task");
        assert_eq!(r.text(), "held");
    }
}

/// A client that stops reading a response held its connection, and the
/// upstream stream behind it, for as long as it liked (the probe's stalled
/// clients were never dropped). `server.send_timeout` (nginx's) closes it
/// once a write has waited that long, over the HTTP/1.1 fast path and over
/// hyper's connections alike; the upstream's stream ends with it.
#[tokio::test]
async fn a_client_that_takes_nothing_for_send_timeout_is_closed() {
    let up = H2cServer::start().await;
    let gw = h2c_gateway_with(&up, |c| c.set("server.send_timeout", "300ms")).await;
    // The fast path (a GET), and hyper (a request with a body is its).
    let requests: [&[u8]; 2] = [
        b"GET /big HTTP/1.1\r\nhost: localhost\r\n\r\n",
        b"POST /big HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1\r\n\r\nx",
    ];
    let mut stalled = Vec::new();
    for (i, req) in requests.into_iter().enumerate() {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("small buffer");
        let mut tcp = sock.connect(gw.http()).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut tcp, req)
            .await
            .expect("request");
        stalled.push(tcp);
        let closed = eventually(WAIT, || async {
            up.dropped.load(Ordering::SeqCst) == i + 1
        })
        .await;
        assert!(closed, "request {i}: the upstream stream never ended");
    }
}

/// A GET of `path` over a raw HTTP/2 connection whose streams' windows start
/// at `window`: the response body (its head was a 200), the connection's
/// request and PING handles (held, the connection stays open), and the task
/// reading its socket (PINGs answered, SETTINGS taken) all along.
async fn h2_get(
    gw: &TestGateway,
    path: &str,
    window: u32,
) -> (
    ::h2::RecvStream,
    (::h2::client::SendRequest<Bytes>, ::h2::PingPong),
    tokio::task::JoinHandle<Result<(), ::h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(gw.http())
        .await
        .expect("connect");
    let (mut send, mut conn) = ::h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let ping = conn.ping_pong().expect("ping handle");
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://localhost{path}"))
        .body(())
        .expect("request");
    let (resp, _body) = send.send_request(req, true).expect("request sent");
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("head in time")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    (resp.into_body(), (send, ping), conn)
}

/// An HTTP/2 client that reads its socket but keeps a stream's window shut
/// held that stream, and the upstream stream behind it, for as long as it
/// liked: the socket took every write, so its timer never ran, and hyper
/// waits for window with none. `send_timeout` now covers the stream, as
/// nginx's does: the stream is reset, its upstream stream ends, and the
/// connection goes on.
#[tokio::test]
async fn an_h2_stream_whose_window_stays_shut_is_reset_after_send_timeout() {
    let up = H2cServer::start().await;
    let gw = h2c_gateway_with(&up, |c| c.set("server.send_timeout", "300ms")).await;
    let (mut body, (_send, mut ping), conn) = h2_get(&gw, "/big", 0).await;
    let reset = tokio::time::timeout(WAIT, body.data())
        .await
        .expect("the stream ends in time");
    match reset {
        Some(Err(e)) => assert_eq!(e.reason(), Some(::h2::Reason::CANCEL), "{e}"),
        other => panic!("expected a reset, got {other:?}"),
    }
    let dropped = eventually(WAIT, || async { up.dropped.load(Ordering::SeqCst) == 1 }).await;
    assert!(dropped, "the upstream stream never ended");
    tokio::time::timeout(WAIT, ping.ping(::h2::Ping::opaque()))
        .await
        .expect("PONG in time")
        .expect("the connection is still open");
    assert!(!conn.is_finished(), "the connection was closed");
}

/// A client that reads an HTTP/2 stream slowly but steadily is not reset:
/// the watch counts progress every 16 KiB, where it first counted it per
/// body chunk (64 KiB from a static file), which such a client took longer
/// than `send_timeout` to drain (the seventh probe's false positive).
#[tokio::test]
async fn a_slow_but_steady_h2_reader_is_not_reset() {
    let up = H2cServer::start().await;
    let files = tempfile::tempdir().expect("tempdir");
    std::fs::write(files.path().join("big"), vec![b'x'; 1 << 20]).expect("file");
    let root = files.path().display().to_string();
    let gw = h2c_gateway_with(&up, |c| {
        c.set("server.send_timeout", "600ms")
            .route_root("/files/", root)
    })
    .await;
    let (mut body, _handles, _conn) = h2_get(&gw, "/files/big", 16 * 1024).await;
    let mut read = 0;
    // 16 KiB every 200 ms: a 64 KiB chunk took 800 ms to drain.
    while read < 192 * 1024 {
        let chunk = tokio::time::timeout(WAIT, body.data())
            .await
            .expect("data in time")
            .expect("more data")
            .expect("not reset");
        read += chunk.len();
        // Pacing the reader is the behaviour under test, not a synchronisation.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        body.flow_control()
            .release_capacity(chunk.len())
            .expect("window");
    }
}

/// Sends a DM from `from` to bob and returns its id (from its echo).
async fn dm_id(from: &mut chat::Client, text: &str) -> u64 {
    from.send(serde_json::json!({"type":"dm","to":"bob","text":text}))
        .await;
    let v = from
        .recv_until("the dm's echo", |v| v["type"] == "dm" && v["text"] == text)
        .await;
    v["id"].as_u64().expect("an id")
}

/// Room ids started again at 1 when Redis lost the room's counter but not
/// its epoch (the counter deleted here; a counter that never saw the ids a
/// node gave out alone during an outage is the same): the node's members
/// saw ids they had seen already, in the same epoch. Within the epoch the
/// node knows, the publish script now counts above the highest id the node
/// has given out or seen; a new epoch still counts from 1.
#[tokio::test]
async fn room_ids_keep_increasing_when_redis_loses_the_counter() {
    let redis = Redis::start().await;
    let gw = cluster_node(&redis).await;
    let mut ann = chat::Client::new(gw.http(), "ann").await;
    ann.join("lobby").await;
    let mut last = 0;
    for text in ["one", "two", "three"] {
        last = ann.drain_to("lobby", text).await["id"]
            .as_u64()
            .expect("an id");
    }
    assert_eq!(redis.command("DEL wsgate:room:{lobby}:id").await, ":1");
    let after = ann.drain_to("lobby", "after the loss").await["id"]
        .as_u64()
        .expect("an id");
    assert_eq!(after, last + 1, "{after} after {last}");
    // A new epoch (the room's keys gone) counts from its start.
    assert_eq!(
        redis
            .command("DEL wsgate:room:{lobby}:id wsgate:room:{lobby}:epoch")
            .await,
        ":2"
    );
    let fresh = ann.drain_to("lobby", "in a new epoch").await["id"]
        .as_u64()
        .expect("an id");
    assert_eq!(fresh, 1);
}

/// DM ids restarted at 1 when Redis came back empty, where room ids go on
/// from the highest a node has seen (the probe: `[1,2,3]`, then `[1,2,3]`
/// again). Now they go on too, whether the node has noticed the restart yet
/// or not.
#[tokio::test]
async fn dm_ids_keep_increasing_after_redis_restarts_empty() {
    let mut redis = Redis::start().await;
    let gw = cluster_node(&redis).await;
    let mut ann = chat::Client::new(gw.http(), "ann").await;
    let _bob = chat::Client::new(gw.http(), "bob").await;
    let mut last = 0;
    for text in ["one", "two", "three"] {
        last = dm_id(&mut ann, text).await;
    }
    // Emptied under a live connection: the next id comes from Redis at once.
    assert_eq!(redis.command("FLUSHALL").await, "+OK");
    let flushed = dm_id(&mut ann, "after the flush").await;
    assert!(flushed > last, "{flushed} after {last}");
    // Restarted empty, and the node registered again (its heartbeat).
    redis.kill();
    redis.spawn().await;
    // The node is `n1#pid` in Redis, and in-process here: this pid.
    let alive = format!("EXISTS wsgate:node:{{n1#{}}}:alive", std::process::id());
    let back = eventually(WAIT, || async { redis.command(&alive).await == ":1" }).await;
    assert!(back, "the node never registered again");
    let restarted = dm_id(&mut ann, "after the restart").await;
    assert!(restarted > flushed, "{restarted} after {flushed}");
}
