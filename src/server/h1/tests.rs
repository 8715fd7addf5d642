//! The fast path against a raw client over real sockets: the exact bytes it
//! writes, what it hands to hyper, and when it closes.

use std::time::Duration;

use crate::shutdown::Stop;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{serve, End, Settings};
use crate::body::{full, Body, RequestBody};

const SETTINGS: Settings = Settings {
    header_timeout: Duration::from_millis(300),
    max_head: 8192,
    send_timeout: Duration::from_secs(60),
};
const WAIT: Duration = Duration::from_secs(5);

/// Answers with the request's method and path.
async fn echo_path(req: Request<RequestBody>) -> Response<Body> {
    Response::new(full(format!("{} {}", req.method(), req.uri())))
}

/// Serves one accepted connection with `handle`; the task returns how the
/// fast path ended.
async fn server<F, Fut>(handle: F, shutdown: Stop) -> (TcpStream, tokio::task::JoinHandle<End>)
where
    F: FnMut(Request<RequestBody>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send,
{
    serve_one(handle, shutdown, |end, _| end).await
}

/// [`server`], with `finish` given how the fast path ended and the socket.
async fn serve_one<F, Fut, T>(
    handle: F,
    shutdown: Stop,
    finish: impl FnOnce(End, TcpStream) -> T + Send + 'static,
) -> (TcpStream, tokio::task::JoinHandle<T>)
where
    F: FnMut(Request<RequestBody>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send,
    T: Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let end = serve(&mut s, SETTINGS, handle, &shutdown).await;
        finish(end, s)
    });
    let c = TcpStream::connect(addr).await.expect("connect");
    (c, task)
}

/// Reads until what was read contains `needle`, or EOF.
async fn read_until(c: &mut TcpStream, needle: &str) -> String {
    read_while(c, |got| !got.contains(needle)).await
}

/// Reads until the server closes.
async fn read_to_close(c: &mut TcpStream) -> String {
    read_while(c, |_| true).await
}

async fn read_while(c: &mut TcpStream, more: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while more(&String::from_utf8_lossy(&got)) {
            let n = c.read(&mut b).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
    })
    .await
    .expect("answer in time");
    String::from_utf8_lossy(&got).into_owned()
}

async fn ended<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the fast path ended in time")
        .expect("task")
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_then_a_body_goes_to_hyper() {
    let (mut c, task) = server(echo_path, Stop::default()).await;
    c.write_all(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await
    .expect("write");
    let End::Handoff { buffered: rest, .. } = ended(task).await else {
        panic!("the POST must go to hyper");
    };
    assert!(rest.starts_with(b"POST /c HTTP/1.1\r\n") && rest.ends_with(b"\r\n\r\nhi"));
    let got = read_while(&mut c, |g| g.matches("GMT\r\n\r\n").count() < 2).await;
    let (a, b) = got.split_once("GET /a").expect("first answer");
    assert!(
        a.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 6\r\ndate: "),
        "{a}"
    );
    // HEAD: the length of what a GET would get, and no body.
    assert!(
        b.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 7\r\ndate: "),
        "{b}"
    );
    assert!(b.ends_with("GMT\r\n\r\n"), "{b}");
}

#[tokio::test]
async fn heads_the_fast_path_does_not_serve_go_to_hyper_untouched() {
    for head in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\nUpgrade: websocket\r\n\r\n",
        b"OPTIONS /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
        b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
    ] {
        let (mut c, task) = server(echo_path, Stop::default()).await;
        c.write_all(head).await.expect("write");
        match ended(task).await {
            End::Handoff { buffered, .. } => assert_eq!(&buffered[..], head),
            _ => panic!("{} was not handed over", String::from_utf8_lossy(head)),
        }
    }
}

/// A WebSocket handshake is served here: refused, the connection stays; answered
/// 101, the connection (with the bytes the client sent behind its head) goes
/// to the session the handler started.
#[tokio::test]
async fn a_handshake_answered_101_hands_the_connection_to_its_session() {
    let handle = |mut req: Request<RequestBody>| {
        let on = crate::upgraded::on(&mut req);
        async move {
            let mut r = Response::new(crate::body::empty());
            if req.uri() == "/refused" {
                *r.status_mut() = StatusCode::FORBIDDEN;
                return r;
            }
            tokio::spawn(async move {
                let mut io = on.await.expect("the connection is handed over");
                let mut early = [0u8; 5];
                io.read_exact(&mut early).await.expect("read");
                io.write_all(&[b"session got ", &early[..]].concat())
                    .await
                    .expect("write");
            });
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", http::HeaderValue::from_static("websocket"));
            r
        }
    };
    let (mut c, task) = upgrading_server(handle, Stop::default()).await;
    let hs = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
    };
    c.write_all(hs("/refused").as_bytes()).await.expect("write");
    let refused = read_until(&mut c, "\r\n\r\n").await;
    assert!(
        refused.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{refused}"
    );
    c.write_all(format!("{}early", hs("/ws")).as_bytes())
        .await
        .expect("write");
    let got = read_until(&mut c, "session got early").await;
    assert!(
        got.starts_with("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\ndate: "),
        "{got}"
    );
    assert!(!got.contains("content-length"), "{got}");
    assert!(ended(task).await, "the fast path must end upgraded");
}

/// Bytes the client sends while the handshake is handled, and after its 101,
/// reach the session in order. Neither the client's `close` nor a drain that
/// starts meanwhile (a handshake accepted just before a binary upgrade) puts
/// `close` in the 101: the connection is the new protocol's, and strict
/// clients (tungstenite) fail a handshake whose `Connection` is not `Upgrade`.
#[tokio::test]
async fn bytes_sent_while_a_handshake_is_handled_reach_the_session() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let go = release.clone();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let got_tx = std::sync::Mutex::new(Some(got_tx));
    let handle = move |mut req: Request<RequestBody>| {
        let on = crate::upgraded::on(&mut req);
        let go = go.clone();
        let got = got_tx.lock().expect("lock").take();
        async move {
            go.notified().await;
            tokio::spawn(async move {
                let mut io = on.await.expect("handed over");
                let mut b = [0u8; 8];
                io.read_exact(&mut b).await.expect("read");
                if let Some(got) = got {
                    let _ = got.send(b.to_vec());
                }
            });
            let mut r = Response::new(crate::body::empty());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("connection", http::HeaderValue::from_static("Upgrade"));
            r
        }
    };
    let shutdown = Stop::default();
    let (mut c, task) = upgrading_server(handle, shutdown.clone()).await;
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .expect("write");
    c.write_all(b"1234").await.expect("write");
    c.write_all(b"56").await.expect("write");
    shutdown.cancel();
    release.notify_one();
    let answer = read_until(&mut c, "\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\ndate: "),
        "{answer}"
    );
    c.write_all(b"78").await.expect("write");
    let got = tokio::time::timeout(WAIT, got_rx)
        .await
        .expect("the session read in time")
        .expect("the session read");
    assert_eq!(got, b"12345678");
    assert!(ended(task).await, "the fast path must end upgraded");
}

/// Serves one accepted connection with `handle`, and hands it over as
/// `conn` does when the fast path ends upgraded; the task returns whether it
/// did.
async fn upgrading_server<F, Fut>(
    handle: F,
    shutdown: Stop,
) -> (TcpStream, tokio::task::JoinHandle<bool>)
where
    F: FnMut(Request<RequestBody>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send,
{
    serve_one(handle, shutdown, |end, s| match end {
        End::Upgraded { to, buffered } => {
            to.send(Box::new(s), buffered);
            true
        }
        _ => false,
    })
    .await
}

#[tokio::test]
async fn a_streamed_body_is_chunked_with_only_its_announced_trailers() {
    let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, crate::body::BoxError>>(4);
    let rx = std::sync::Mutex::new(Some(rx));
    let handle = move |_req| {
        let rx = rx.lock().expect("lock").take().expect("one request");
        async move {
            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            });
            let body = StreamBody::new(frames);
            let mut r = Response::new(body.boxed_unsync());
            r.headers_mut()
                .insert("trailer", http::HeaderValue::from_static("x-sum"));
            r
        }
    };
    let (mut c, task) = server(handle, Stop::default()).await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // The head goes out before the body's first chunk exists.
    let head = read_until(&mut c, "\r\n\r\n").await;
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"hello"))))
        .await
        .expect("send");
    let mut t = HeaderMap::new();
    t.insert("x-sum", http::HeaderValue::from_static("5"));
    t.insert("content-type", http::HeaderValue::from_static("text/plain"));
    t.insert("x-other", http::HeaderValue::from_static("1"));
    tx.send(Ok(http_body::Frame::trailers(t)))
        .await
        .expect("send");
    drop(tx);
    let rest = read_until(&mut c, "0\r\nx-sum: 5\r\n\r\n").await;
    assert_eq!(rest, "5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n");
    drop(c);
    assert!(matches!(ended(task).await, End::Closed));
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_handler() {
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let guard = std::sync::Mutex::new(Some(dropped_tx));
    let handle = move |_req| {
        let tx = guard.lock().expect("lock").take();
        async move {
            // Signals when the handler future is dropped unfinished.
            struct OnDrop(Option<tokio::sync::oneshot::Sender<()>>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    if let Some(tx) = self.0.take() {
                        let _ = tx.send(());
                    }
                }
            }
            let _g = OnDrop(tx);
            std::future::pending::<Response<Body>>().await
        }
    };
    let (mut c, task) = server(handle, Stop::default()).await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    drop(c);
    tokio::time::timeout(WAIT, dropped_rx)
        .await
        .expect("handler cancelled in time")
        .expect("dropped");
    assert!(matches!(ended(task).await, End::Closed));
}

#[tokio::test]
async fn close_requests_a_slow_head_and_a_drain_end_the_connection() {
    // `Connection: close`: answered (saying so, as hyper does), then closed.
    let (mut c, task) = server(echo_path, Stop::default()).await;
    c.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let got = read_to_close(&mut c).await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 6\r\n"),
        "{got}"
    );
    assert!(got.ends_with("GET /x"), "{got}");
    assert!(matches!(ended(task).await, End::Closed));

    // Half a head, and no more within header_timeout: closed unanswered.
    let (mut c, task) = server(echo_path, Stop::default()).await;
    c.write_all(b"GET / HTTP/1.1\r\nHo").await.expect("write");
    assert!(matches!(ended(task).await, End::Closed));
    assert_eq!(read_to_close(&mut c).await, "");

    // A drain: the idle connection closes at once.
    let shutdown = Stop::default();
    let (mut c, task) = server(echo_path, shutdown.clone()).await;
    c.write_all(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_until(&mut c, "GET /y").await;
    shutdown.cancel();
    assert!(matches!(ended(task).await, End::Closed));
}

#[tokio::test]
async fn lengths_follow_hypers_rules_for_empty_bodies_204_304_and_head() {
    // Every answer carries a stale `Content-Length: 7` and no body bytes.
    let handle = |req: Request<RequestBody>| async move {
        let mut r = Response::new(crate::body::empty());
        *r.status_mut() = match req.uri().path() {
            "/204" => StatusCode::NO_CONTENT,
            "/304" => StatusCode::NOT_MODIFIED,
            _ => StatusCode::OK,
        };
        r.headers_mut()
            .insert("content-length", http::HeaderValue::from_static("7"));
        r
    };
    let (mut c, task) = server(handle, Stop::default()).await;
    c.write_all(
        b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nDELETE /e HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("write");
    let got = read_while(&mut c, |g| g.matches("GMT\r\n\r\n").count() < 4).await;
    let answers: Vec<_> = got.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 4, "{got}");
    // 204 and 304: no length at all; HEAD: the handler's; an empty 200: zero.
    assert!(answers[0].starts_with("204 No Content\r\ndate: "), "{got}");
    assert!(
        answers[1].starts_with("304 Not Modified\r\ndate: "),
        "{got}"
    );
    assert!(
        answers[2].starts_with("200 OK\r\ncontent-length: 7\r\ndate: "),
        "{got}"
    );
    assert!(
        answers[3].starts_with("200 OK\r\ncontent-length: 0\r\ndate: "),
        "{got}"
    );
    drop(c);
    assert!(matches!(ended(task).await, End::Closed));
}

#[tokio::test]
async fn a_length_beside_a_transfer_coding_is_never_sent() {
    let handle = |_req| async move {
        let mut r = Response::new(full("5\r\nhello\r\n0\r\n\r\n"));
        r.headers_mut()
            .insert("content-length", http::HeaderValue::from_static("20"));
        r.headers_mut().insert(
            "transfer-encoding",
            http::HeaderValue::from_static("chunked"),
        );
        r
    };
    let (mut c, task) = server(handle, Stop::default()).await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // Closed unanswered, as hyper does: the client would frame by one field
    // and the server by the other.
    assert!(matches!(ended(task).await, End::Closed));
    assert_eq!(read_to_close(&mut c).await, "");
}

/// Differential: every head the fast path takes, hyper's HTTP/1.1 server
/// takes too, as the same request (method, target, version, fields in
/// order), over a real socket. What the fast path hands over is hyper's to judge, so heads it
/// takes must never be ones hyper would refuse or read differently.
mod same_as_hyper {
    use std::convert::Infallible;

    use bytes::BytesMut;
    use http::{HeaderMap, Method, Request, Response, Uri, Version};
    use http_body_util::Empty;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::super::request::{parse, Parsed};

    /// What hyper's service got: the head, and whether it may upgrade.
    type Seen = (Method, Uri, Version, HeaderMap, bool);

    /// The request hyper's server hands its service for `head`, if any.
    async fn hyper_reads(head: Vec<u8>) -> Option<Seen> {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<Seen>();
        let tx = std::sync::Mutex::new(Some(tx));
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            if let Some(tx) = tx.lock().expect("lock").take() {
                let (p, _) = req.into_parts();
                let upgrade = p.extensions.get::<hyper::upgrade::OnUpgrade>().is_some();
                let _ = tx.send((p.method, p.uri, p.version, p.headers, upgrade));
            }
            async { Ok::<_, Infallible>(Response::new(Empty::<bytes::Bytes>::new())) }
        });
        let task = tokio::spawn(async move {
            let (server, _) = l.accept().await.expect("accept");
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), svc);
            let _ = conn.await;
        });
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(&head).await.expect("write");
        let seen = tokio::time::timeout(super::WAIT, rx).await.ok()?.ok();
        task.abort();
        seen
    }

    /// A head httparse takes but `http` refuses (a target longer than `Uri`
    /// holds) goes to hyper whole, with what followed it, after the fast
    /// path has split it off to build its request.
    #[test]
    fn a_head_http_refuses_is_put_back_whole() {
        let head = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70_000));
        let mut buf = BytesMut::from(head.as_bytes());
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let before = buf.clone();
        assert!(matches!(parse(&mut buf), Parsed::Handoff));
        assert_eq!(buf, before);
    }

    /// Mostly heads the fast path takes, with odd parts mixed in.
    fn head() -> impl Strategy<Value = Vec<u8>> {
        let method = prop_oneof![
            8 => prop::sample::select(vec!["GET", "HEAD", "DELETE", "OPTIONS"]),
            1 => prop::sample::select(vec!["FOO", "get", "G{T", "POST", "CONNECT"]),
        ];
        let target = prop_oneof![
            8 => prop::sample::select(vec!["/", "/a?b=c&d", "*", "http://h.example/x?y", "//x", "/a%20b"]),
            1 => prop::sample::select(vec!["/%zz", "/a b", "/\u{fc}", "/\x7f", "", "h.example:443"]),
        ];
        let version = prop_oneof![
            8 => Just("HTTP/1.1"),
            1 => prop::sample::select(vec!["HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1"]),
        ];
        let name = prop_oneof![
            8 => prop::sample::select(vec!["Host", "X-A", "x-b", "Accept", "Connection", "Content-Length", "Origin"]),
            1 => prop::sample::select(vec!["Transfer-Encoding", "Upgrade", "Expect", "Bad Name", "X:Y", "", "host"]),
        ];
        let value = prop_oneof![
            8 => prop::sample::select(vec!["0", "close", "keep-alive", " padded ", "a\tb", "", "text/html, */*;q=0.8"]),
            1 => prop::sample::select(vec!["5", "chunked", "Keep-Alive, Upgrade", "websocket", "caf\u{e9}", "x\u{1}y", "0, 0", "a\u{7f}"]),
        ];
        let eol = prop_oneof![8 => Just("\r\n"), 1 => Just("\n")];
        let field = (name, value, eol.clone()).prop_map(|(n, v, e)| format!("{n}: {v}{e}"));
        // A WebSocket handshake's fields, which the fast path serves too.
        let handshake = prop_oneof![
            3 => Just(""),
            1 => Just("Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n"),
        ];
        (
            method,
            target,
            version,
            eol,
            prop::collection::vec(field, 0..6),
            handshake,
        )
            .prop_map(|(m, t, v, e, fs, hs)| {
                format!("{m} {t} {v}{e}{}{hs}\r\n", fs.concat()).into_bytes()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn heads_the_fast_path_takes_hyper_reads_the_same(head in head()) {
            // A byte of the next request behind the head: it must stay.
            let mut buf = BytesMut::from(&head[..]);
            buf.extend_from_slice(b"G");
            let Parsed::Ready { request, upgrade, .. } = parse(&mut buf) else {
                // Left to hyper whole.
                prop_assert_eq!(&buf[..head.len()], &head[..]);
                prop_assert_eq!(buf.len(), head.len() + 1);
                return Ok(());
            };
            prop_assert_eq!(&buf[..], b"G");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let seen = rt.block_on(hyper_reads(head.clone()));
            let Some((method, uri, version, headers, hyper_upgrade)) = seen else {
                return Err(TestCaseError::fail(format!(
                    "hyper refused a head the fast path took: {:?}",
                    String::from_utf8_lossy(&head)
                )));
            };
            prop_assert_eq!(request.method(), &method);
            prop_assert_eq!(request.uri(), &uri);
            prop_assert_eq!(request.version(), version);
            let ours: Vec<_> = request.headers().iter().collect();
            let theirs: Vec<_> = headers.iter().collect();
            prop_assert_eq!(ours, theirs);
            // A handshake taken here is one hyper would offer to upgrade.
            prop_assert_eq!(upgrade, hyper_upgrade);
        }
    }
}
