//! Keep-alive reuse, closing and idle limits against small scripted servers.

use super::*;
use http_body_util::BodyExt;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn dialer(addr: String) -> Dialer {
    Dialer::new(addr.into(), Duration::from_secs(1), None)
}

/// How a test server answers each request on a connection.
#[derive(Clone, Copy)]
enum Answer {
    /// `200`, 2-byte body, connection kept.
    KeepAlive,
    /// The same, then the server closes the connection without saying so.
    ThenClose,
    /// `200` with a 1 MiB body.
    Large,
    /// Answers a connection's first request, and closes it unanswered at
    /// the second: a server whose keep-alive ran out as the request came.
    FirstOnly,
}

/// A raw HTTP/1.1 server counting the connections it accepted.
async fn server(answer: Answer) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = 0;
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let body_len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + body_len {
                        continue;
                    }
                    buf.drain(..end + 4 + body_len);
                    if matches!(answer, Answer::FirstOnly) && answered == 1 {
                        return;
                    }
                    answered += 1;
                    let resp = match answer {
                        Answer::Large => {
                            let mut r =
                                b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n".to_vec();
                            r.resize(r.len() + (1 << 20), b'x');
                            r
                        }
                        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                    };
                    if s.write_all(&resp).await.is_err() {
                        return;
                    }
                    if matches!(answer, Answer::ThenClose) {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn request(body: &'static str) -> Request<Body> {
    Request::post("/x")
        .header(http::header::HOST, "test")
        .body(
            http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes()))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .unwrap()
}

async fn read_all(pool: &Arc<ConnPool>, body: &'static str) -> bytes::Bytes {
    let resp = pool.send(request(body)).await.unwrap();
    resp.into_body().collect().await.unwrap().to_bytes()
}

async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let (addr, accepted) = server(Answer::KeepAlive).await;
    let pool = ConnPool::new(dialer(addr));
    for _ in 0..5 {
        assert_eq!(read_all(&pool, "hi").await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn a_body_not_read_to_its_end_closes_its_connection() {
    let (addr, accepted) = server(Answer::Large).await;
    let pool = ConnPool::new(dialer(addr));
    let resp = pool.send(request("")).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    assert_eq!(pool.idle_count(), 0);
    let full = read_all(&pool, "").await;
    assert_eq!(full.len(), 1 << 20);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_replaced() {
    let (addr, accepted) = server(Answer::ThenClose).await;
    let pool = ConnPool::new(dialer(addr));
    assert_eq!(read_all(&pool, "one").await, "ok");
    // Once the close has arrived, the idle connection is skipped and a POST
    // with a body goes out on a new one as if nothing happened.
    assert!(eventually(|| pool.lock().iter_mut().all(|i| !i.conn.is_usable())).await);
    assert_eq!(read_all(&pool, "two").await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A kept-alive connection the server closes as a request arrives: a GET
/// goes again on a new connection (RFC 9112 §9.3.1, nginx's retry of a
/// cached connection); a request with a body, or one not idempotent, does
/// not (the server may have acted on it).
#[tokio::test]
async fn a_get_on_a_connection_closed_as_it_came_goes_again_on_a_new_one() {
    let (addr, accepted) = server(Answer::FirstOnly).await;
    let pool = ConnPool::new(dialer(addr));
    let get = || {
        Request::get("/x")
            .header(http::header::HOST, "test")
            .body(crate::body::empty())
            .unwrap()
    };
    for _ in 0..2 {
        let resp = pool.send(get()).await.expect("answered");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    for req in [request("a body"), request("")] {
        let Err(e) = pool.send(req).await else {
            panic!("sent again");
        };
        assert!(e.nothing_received(), "{e}");
        // The next one gets a connection of its own to answer it.
        assert_eq!(read_all(&pool, "hi").await, "ok");
    }
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let (addr, _) = server(Answer::KeepAlive).await;
    let pool = ConnPool::with_limits(dialer(addr), Duration::from_millis(100), 8);
    assert_eq!(read_all(&pool, "").await, "ok");
    assert_eq!(pool.idle_count(), 1);
    assert!(eventually(|| pool.idle_count() == 0).await);
}

#[tokio::test]
async fn no_more_than_max_idle_connections_are_kept() {
    let (addr, accepted) = server(Answer::KeepAlive).await;
    let pool = ConnPool::with_limits(dialer(addr), IDLE_TIMEOUT, 1);
    let (a, b) = tokio::join!(pool.send(request("a")), pool.send(request("b")));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    a.into_body().collect().await.unwrap();
    b.into_body().collect().await.unwrap();
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn connect_errors_are_safe_to_retry() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let pool = ConnPool::new(dialer(addr));
    let e = pool.send(request("")).await.unwrap_err();
    assert!(matches!(e, SendError::Connect(_)), "{e:?}");
    assert!(e.nothing_received());
}

/// An HTTP/2 server (the `h2` crate, for frames hyper's server never sends)
/// answering `content-length: 100` and 7 bytes; once `go` fires, it ends the
/// stream with `RST_STREAM(NO_ERROR)` when `cut`, or sends 93 more bytes and
/// `END_STREAM`. (A reset before the client had the head would fail the
/// exchange, not the body.)
async fn h2_server(cut: bool) -> (String, tokio::sync::oneshot::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (go, gone) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut conn = h2::server::handshake(tcp).await.unwrap();
        let Some(Ok((_req, mut respond))) = conn.accept().await else {
            return;
        };
        // The connection is driven by accept(): keep it going meanwhile.
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let resp = http::Response::builder()
            .header(http::header::CONTENT_LENGTH, "100")
            .body(())
            .unwrap();
        let mut send = respond.send_response(resp, false).unwrap();
        send.send_data(bytes::Bytes::from_static(b"partial"), false)
            .unwrap();
        let _ = gone.await;
        if cut {
            send.send_reset(h2::Reason::NO_ERROR);
        } else {
            send.send_data(bytes::Bytes::from(vec![b'x'; 93]), true)
                .unwrap();
        }
    });
    (addr, go)
}

/// hyper ends a body whose stream was reset with `NO_ERROR` as if it were
/// complete; against its `content-length` it is short, and the body says so
/// (the access line then names the error, where it said none).
#[tokio::test]
async fn an_h2_body_reset_short_of_its_length_is_an_error() {
    for cut in [true, false] {
        let (addr, go) = h2_server(cut).await;
        let pool = ConnPool::new(dialer(addr).with_h2(true));
        let resp = pool.send(request("")).await.unwrap();
        let _ = go.send(());
        let body = resp.into_body().collect().await;
        match body {
            Err(e) if cut => assert!(e.to_string().contains("93 bytes short"), "{e}"),
            Ok(b) if !cut => assert_eq!(b.to_bytes().len(), 100),
            other => panic!("cut={cut}: {:?}", other.map(|b| b.to_bytes().len())),
        }
    }
}

/// How a raw HTTP/2 server turns down the first request it is sent.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// `RST_STREAM(REFUSED_STREAM)`.
    Refused,
    /// `GOAWAY(last_stream_id = 0, NO_ERROR)`: stream 1 was not processed.
    GoAway,
    /// `GOAWAY(last_stream_id = 0, ENHANCE_YOUR_CALM)`: nor was it here.
    GoAwayCalm,
    /// `RST_STREAM(INTERNAL_ERROR)`: the server may have acted on it.
    Internal,
}

/// The server side of a raw HTTP/2 connection (frames written by hand: the
/// h2 crate's server cannot say GOAWAY below a stream it has received):
/// the client's preface read, our SETTINGS sent.
async fn raw_h2(l: &TcpListener) -> tokio::net::TcpStream {
    let (mut s, _) = l.accept().await.unwrap();
    let mut preface = [0u8; 24];
    s.read_exact(&mut preface).await.unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    s
}

/// The next frame: type, flags, stream and payload (`None` at the end). A
/// SETTINGS is acknowledged on the way.
async fn raw_frame(s: &mut tokio::net::TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.ok()?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if head[3] == 4 && head[4] & 1 == 0 {
            s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.ok()?;
            continue;
        }
        return Some((head[3], head[4], stream, payload));
    }
}

/// A raw HTTP/2 server answering the first request as `how` says, then
/// holding the connection open.
async fn refusing_h2_server(how: Refusal) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut s = raw_h2(&l).await;
        while let Some((ty, _, _, _)) = raw_frame(&mut s).await {
            let answer: &[u8] = match (ty, how) {
                (1, Refusal::Refused) => &[0, 0, 4, 3, 0, 0, 0, 0, 1, 0, 0, 0, 7],
                (1, Refusal::Internal) => &[0, 0, 4, 3, 0, 0, 0, 0, 1, 0, 0, 0, 2],
                (1, Refusal::GoAway) => &[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                (1, Refusal::GoAwayCalm) => &[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb],
                _ => continue,
            };
            s.write_all(answer).await.unwrap();
        }
    });
    addr
}

/// A raw HTTP/2 server answering `200` to each request once its body ended,
/// and recording each connection's body bytes. On its first connection,
/// after the first answer, it says GOAWAY (`NO_ERROR`, that stream the
/// last) and PINGs: `read` fires on the client's PING ACK, once the GOAWAY
/// was read before it.
async fn goaway_h2_server() -> (
    String,
    tokio::sync::oneshot::Receiver<()>,
    Arc<std::sync::Mutex<Vec<usize>>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, read) = tokio::sync::oneshot::channel();
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut first = true;
        loop {
            let mut s = raw_h2(&l).await;
            let conn = {
                let mut b = seen.lock().unwrap();
                b.push(0);
                b.len() - 1
            };
            let mut goaway = std::mem::take(&mut first);
            let seen = seen.clone();
            let mut tx = if goaway { tx.take() } else { None };
            tokio::spawn(async move {
                while let Some((ty, flags, stream, payload)) = raw_frame(&mut s).await {
                    if ty == 0 {
                        seen.lock().unwrap()[conn] += payload.len();
                    }
                    if (ty == 0 || ty == 1) && flags & 1 == 1 {
                        let mut ok = vec![0, 0, 1, 1, 5];
                        ok.extend_from_slice(&stream.to_be_bytes());
                        ok.push(0x88); // :status 200, from HPACK's static table
                        s.write_all(&ok).await.unwrap();
                        if std::mem::take(&mut goaway) {
                            let mut away = vec![0, 0, 8, 7, 0, 0, 0, 0, 0];
                            away.extend_from_slice(&stream.to_be_bytes());
                            away.extend_from_slice(&[0, 0, 0, 0]);
                            s.write_all(&away).await.unwrap();
                            s.write_all(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
                                .await
                                .unwrap();
                        }
                    }
                    if ty == 6 && flags & 1 == 1 {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            });
        }
    });
    (addr, read, bodies)
}

/// A request given to a shared connection the server has since said
/// GOAWAY on (which hyper learns only when asked to send) comes back unsent
/// and goes out whole on a new connection: the server never saw it.
#[tokio::test]
async fn a_request_meeting_a_goaway_goes_out_on_a_new_connection() {
    let (addr, read, bodies) = goaway_h2_server().await;
    let pool = ConnPool::new(dialer(addr).with_h2(true));
    let first = pool.send(request("")).await.expect("first");
    assert_eq!(first.status(), http::StatusCode::OK);
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the GOAWAY read in time")
        .expect("read");
    let resp = tokio::time::timeout(Duration::from_secs(5), pool.send(request("payload")))
        .await
        .expect("answered in time")
        .expect("sent on a new connection");
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(*bodies.lock().unwrap(), vec![0, 7]);
}

/// A stream the server turned down before acting on it (RFC 9113 §8.7) is
/// a failure before anything was received, so an idempotent request moves
/// to another server; a stream reset for another reason is not.
#[tokio::test]
async fn an_h2_stream_refused_unprocessed_may_go_elsewhere() {
    for how in [
        Refusal::Refused,
        Refusal::GoAway,
        Refusal::GoAwayCalm,
        Refusal::Internal,
    ] {
        let addr = refusing_h2_server(how).await;
        let pool = ConnPool::new(dialer(addr).with_h2(true));
        let e = tokio::time::timeout(Duration::from_secs(5), pool.send(request("")))
            .await
            .expect("answered in time")
            .unwrap_err();
        let unprocessed = !matches!(how, Refusal::Internal);
        assert_eq!(e.nothing_received(), unprocessed, "{how:?}: {e}");
    }
}
