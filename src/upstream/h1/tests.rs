//! The codec against scripted servers on real sockets, and the chunked
//! decoder fed every way a body can be cut into reads.

use super::decode::{Decoder, Step};
use super::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A server that reads one request head (and `body_len` bytes after it),
/// sends `answer`, then closes if `close`. Returns what it received.
async fn scripted(
    answer: &'static [u8],
    close: bool,
) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !ends_request(&got) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = s.write_all(answer).await;
        if !close {
            // Hold the connection open until the client is done with it.
            let _ = s.read(&mut chunk).await;
        }
        got
    });
    (addr, task)
}

/// A test server reads into `got` until `done` says it has enough (a head,
/// a chunked body's end), failing if the client closes first.
async fn read_to(s: &mut TcpStream, got: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let mut chunk = [0u8; 1024];
    while !done(got) {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(got));
        got.extend_from_slice(&chunk[..n]);
    }
}

/// A head, plus its body when it is chunked (test requests have no other).
fn ends_request(b: &[u8]) -> bool {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&b[..end]).to_lowercase();
    !head.contains("transfer-encoding: chunked") || b.ends_with(b"0\r\n\r\n")
}

async fn conn(addr: &str) -> Conn {
    Conn::new(UpStream::Plain(TcpStream::connect(addr).await.unwrap()))
}

fn get(method: Method) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("/p?q=1")
        .header(header::HOST, "up")
        .body(crate::body::empty())
        .unwrap()
}

#[tokio::test]
async fn interim_answers_are_skipped_and_chunked_wins_over_length() {
    let (addr, server) = scripted(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 7\r\n\r\n",
        false,
    )
    .await;
    let resp = conn(&addr).await.send(get(Method::GET)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        let f = f.unwrap();
        match f.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    assert_eq!(data, b"abc");
    assert_eq!(trailers.unwrap()["x-sum"], "7");
    assert!(
        body.take_conn().is_some(),
        "a clean chunked end keeps the connection"
    );
    drop(body);
    let got = server.await.unwrap();
    assert!(
        got.starts_with(b"GET /p?q=1 HTTP/1.1\r\nhost: up\r\n\r\n"),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_stream_of_interim_answers_is_cut_off() {
    const EARLY: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n";
    static MANY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut out = EARLY.repeat(response::MAX_INTERIM + 1);
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        out
    });
    let (addr, _server) = scripted(&MANY, false).await;
    let e = conn(&addr).await.send(get(Method::GET)).await.unwrap_err();
    assert!(matches!(e.error, Error::TooManyInterim), "{:?}", e.error);
    let mut fine = EARLY.repeat(response::MAX_INTERIM);
    fine.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
    let fine: &'static [u8] = fine.leak();
    let (addr, _server) = scripted(fine, false).await;
    let resp = conn(&addr).await.send(get(Method::GET)).await.unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn head_answers_have_no_body_whatever_their_length() {
    let (addr, _server) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", false).await;
    let resp = conn(&addr).await.send(get(Method::HEAD)).await.unwrap();
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "10");
    let mut body = resp.into_body();
    assert!(body.is_end_stream());
    assert!(body.take_conn().is_some());
}

#[tokio::test]
async fn a_body_up_to_the_close_is_read_whole_and_the_connection_retired() {
    let (addr, _server) = scripted(b"HTTP/1.0 200 OK\r\n\r\nbye now", true).await;
    let resp = conn(&addr).await.send(get(Method::GET)).await.unwrap();
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(f) = body.frame().await {
        data.extend_from_slice(&f.unwrap().into_data().unwrap());
    }
    assert_eq!(data, b"bye now");
    assert!(body.take_conn().is_none());
}

/// HTTP/1.0 has no Transfer-Encoding: such a message's framing is faulty,
/// so its chunked body is read but the connection is not kept, even when it
/// asked to be (RFC 9112 §6.1).
#[tokio::test]
async fn an_http10_chunked_answer_is_read_and_its_connection_retired() {
    let (addr, _server) = scripted(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        false,
    )
    .await;
    let resp = conn(&addr).await.send(get(Method::GET)).await.unwrap();
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(f) = body.frame().await {
        data.extend_from_slice(&f.unwrap().into_data().unwrap());
    }
    assert_eq!(data, b"abc");
    assert!(body.take_conn().is_none());
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let (addr, _server) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true).await;
    let resp = conn(&addr).await.send(get(Method::GET)).await.unwrap();
    let err = resp.into_body().collect().await.unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
}

#[tokio::test]
async fn differing_lengths_are_refused_after_the_response_started() {
    let (addr, _server) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        true,
    )
    .await;
    let f = conn(&addr).await.send(get(Method::GET)).await.unwrap_err();
    assert!(matches!(f.error, Error::ContentLength), "{:?}", f.error);
    assert!(f.response_started);
}

#[tokio::test]
async fn a_close_before_any_answer_says_nothing_started() {
    let (addr, _server) = scripted(b"", true).await;
    let f = conn(&addr).await.send(get(Method::GET)).await.unwrap_err();
    assert!(matches!(f.error, Error::Closed), "{:?}", f.error);
    assert!(!f.response_started, "a retry elsewhere must stay possible");
}

#[tokio::test]
async fn a_body_of_unknown_length_goes_chunked() {
    let (addr, server) = scripted(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
    let frames = ["hello ", "world"]
        .map(|s| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(s.as_bytes()))));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post("/up")
        .header(header::HOST, "up")
        .body(body.boxed_unsync())
        .unwrap();
    let resp = conn(&addr).await.send(req).await.unwrap();
    assert_eq!(resp.status(), 204);
    drop(resp);
    let got = String::from_utf8(server.await.unwrap()).unwrap();
    assert!(
        got.contains("transfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
        "{got}"
    );
}

#[tokio::test]
async fn a_server_that_closed_while_idle_is_not_usable() {
    let (addr, _server) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true).await;
    let resp = conn(&addr).await.send(get(Method::GET)).await.unwrap();
    let mut body = resp.into_body();
    let mut c = body.take_conn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.is_usable() {
        assert!(
            std::time::Instant::now() < deadline,
            "the close was never seen"
        );
        tokio::task::yield_now().await;
    }
}

const CHUNKED: &[u8] = b"5;ext=1\r\nhello\r\nB\r\n world!!!!!\r\n0\r\nx-t: 1\r\n\r\n";

/// Decodes `input` fed in pieces cut at `cuts`.
fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
    let mut d = Decoder::chunked();
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&input.len())) {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        let eof = to == input.len();
        loop {
            match d.step(&mut buf, eof)? {
                Step::Data(b) => data.extend_from_slice(&b),
                Step::Trailers(t) => trailers = Some(t),
                Step::More => break,
                Step::End => return Ok((data, trailers)),
            }
        }
    }
    Err(Error::Closed)
}

#[test]
fn chunked_bodies_decode_the_same_however_they_are_cut() {
    for i in 0..=CHUNKED.len() {
        for j in i..=CHUNKED.len() {
            let (data, trailers) = decode_in_pieces(CHUNKED, &[i, j]).unwrap();
            assert_eq!(data, b"hello world!!!!!", "cut at {i},{j}");
            assert_eq!(trailers.unwrap()["x-t"], "1");
        }
    }
}

#[test]
fn malformed_chunked_bodies_are_errors() {
    for bad in [
        &b"zz\r\nab\r\n0\r\n\r\n"[..],
        b"11111111111111111\r\n",
        b"2\r\nabXX0\r\n\r\n",
        b"5\r\nab",
    ] {
        let r = decode_in_pieces(bad, &[]);
        assert!(
            r.is_err(),
            "{:?} was accepted",
            String::from_utf8_lossy(bad)
        );
    }
}

#[tokio::test]
async fn the_head_goes_out_before_a_slow_body() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (head_seen, head_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        read_to(&mut s, &mut got, |b| b.windows(4).any(|w| w == b"\r\n\r\n")).await;
        let _ = head_seen.send(());
        read_to(&mut s, &mut got, |b| b.ends_with(b"0\r\n\r\n")).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        got
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, BoxError>(http_body::Frame::data(b)), rx))
    });
    let req = Request::post("/slow")
        .header(header::HOST, "up")
        .body(http_body_util::StreamBody::new(frames).boxed_unsync())
        .unwrap();
    let c = conn(&addr).await;
    let sending = tokio::spawn(c.send(req));
    // Only once the server has the head does the body's first byte exist.
    tokio::time::timeout(std::time::Duration::from_secs(10), head_rx)
        .await
        .expect("the head waited for the body")
        .expect("the server ended");
    tx.send(Bytes::from_static(b"late")).await.unwrap();
    drop(tx);
    let resp = sending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let got = String::from_utf8(server.await.unwrap()).unwrap();
    assert!(got.ends_with("\r\n\r\n4\r\nlate\r\n0\r\n\r\n"), "{got}");
}

/// The head buffer a connection keeps between requests is cleared: the second
/// request on it (shorter than the first) goes out exactly as encoded.
#[tokio::test]
async fn a_reused_connection_writes_each_head_whole_and_alone() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut heads = Vec::new();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while heads.len() < 2 {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
            while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = got.drain(..end + 4).collect();
                heads.push(String::from_utf8_lossy(&head).into_owned());
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            }
        }
        heads
    });
    let long = Request::builder()
        .uri("/a-rather-longer-path?with=a&query=string")
        .header(header::HOST, "up")
        .header("x-long", "v".repeat(200))
        .body(crate::body::empty())
        .unwrap();
    let resp = conn(&addr).await.send(long).await.unwrap();
    assert_eq!(resp.status(), 204);
    let again = resp.into_body().take_conn().expect("kept alive");
    let resp = again.send(get(Method::GET)).await.unwrap();
    assert_eq!(resp.status(), 204);
    let heads = server.await.unwrap();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[0].contains("x-long"), "{heads:?}");
    assert_eq!(heads[1], "GET /p?q=1 HTTP/1.1\r\nhost: up\r\n\r\n");
}

/// A server that reads a request head, sends `answer` at once, then holds
/// the connection open without reading another byte until `done` fires.
async fn answers_early(answer: &'static [u8]) -> (String, tokio::sync::oneshot::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (done, held) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = s.write_all(answer).await;
        let _ = held.await;
    });
    (addr, done)
}

fn streamed(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, BoxError>(http_body::Frame::data(b)), rx))
    });
    http_body_util::StreamBody::new(frames).boxed_unsync()
}

async fn in_time<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(10), f)
        .await
        .expect("the exchange hung")
}

/// RFC 9112 §9.5: a server that refuses an upload and stops reading it has
/// answered; the writer sees that instead of waiting on a full socket.
#[tokio::test]
async fn an_early_refusal_ends_the_upload_and_is_the_answer() {
    let (addr, _done) =
        answers_early(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\n\r\nlarge").await;
    static CHUNK: [u8; 64 * 1024] = [0; 64 * 1024];
    // 256 MiB: far more than the sockets' buffers hold.
    let chunks = futures_util::stream::iter(
        std::iter::repeat_n(&CHUNK[..], 4096)
            .map(|c| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(c)))),
    );
    let req = Request::post("/upload")
        .header(header::HOST, "up")
        .body(http_body_util::StreamBody::new(chunks).boxed_unsync())
        .unwrap();
    let resp = in_time(conn(&addr).await.send(req)).await.unwrap();
    assert_eq!(resp.status(), 413);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(f) = in_time(body.frame()).await {
        got.extend_from_slice(&f.unwrap().into_data().unwrap());
    }
    assert_eq!(got, b"large");
    assert!(
        body.take_conn().is_none(),
        "the server may still expect the body"
    );
}

/// The same while the client has not sent its body yet (a slow upload).
#[tokio::test]
async fn a_refusal_before_a_slow_body_is_the_answer() {
    let (addr, _done) =
        answers_early(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n").await;
    let (_tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let req = Request::post("/upload")
        .header(header::HOST, "up")
        .body(streamed(rx))
        .unwrap();
    let resp = in_time(conn(&addr).await.send(req)).await.unwrap();
    assert_eq!(resp.status(), 401);
}

/// A `100 Continue` asks for the body, and a 2xx before the body is in is a
/// server answering as it reads (a duplex stream): both keep the upload
/// going, and the 2xx is the response once it is sent.
#[tokio::test]
async fn interim_and_2xx_answers_keep_the_upload_going() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (answered, answered_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        read_to(&mut s, &mut got, |b| b.windows(4).any(|w| w == b"\r\n\r\n")).await;
        s.write_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        let _ = answered.send(());
        read_to(&mut s, &mut got, |b| b.ends_with(b"0\r\n\r\n")).await;
        s.write_all(b"4\r\ndone\r\n0\r\n\r\n").await.unwrap();
        got
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let req = Request::post("/duplex")
        .header(header::HOST, "up")
        .header(header::EXPECT, "100-continue")
        .body(streamed(rx))
        .unwrap();
    let sending = tokio::spawn(conn(&addr).await.send(req));
    in_time(answered_rx).await.unwrap();
    tx.send(Bytes::from_static(b"more")).await.unwrap();
    drop(tx);
    let resp = in_time(sending).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body = in_time(resp.into_body().collect()).await.unwrap();
    assert_eq!(body.to_bytes(), "done");
    let got = String::from_utf8(server.await.unwrap()).unwrap();
    assert!(got.ends_with("\r\n\r\n4\r\nmore\r\n0\r\n\r\n"), "{got}");
}
