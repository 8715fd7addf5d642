//! Where the server asks for quick ACKs again (see `server::acks`): once per
//! head that arrives in pieces, at a request hyper reads on, after a PROXY
//! header that came alone; never for a head that arrives whole. Counted on
//! an in-memory stream: whether a kernel has sent an ACK by some time is not
//! something a test can wait for.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::acks::{after_proxy_header, AckNow};
use super::conn::{self, Protocols};
use super::h1::{serve, Settings};
use super::{proxy_protocol, Handler, ServerCtx};
use crate::body::{full, Body, RequestBody};
use crate::ctx::ConnCtx;
use crate::limits::{ConnLimits, ConnSlot};
use crate::metrics::Metrics;
use crate::shutdown::Stop;

thread_local! {
    /// `ack_now` calls on this thread (a `#[tokio::test]` runs on one).
    static ACKS: Cell<usize> = const { Cell::new(0) };
}

impl AckNow for DuplexStream {
    fn ack_now(&self) {
        ACKS.with(|a| a.set(a.get() + 1));
    }
}

fn acks() -> usize {
    ACKS.with(Cell::get)
}

/// The test thread may have run another test before this one.
fn reset() {
    ACKS.with(|a| a.set(0));
}

/// Polls the count against a deadline: the server task runs on this thread.
async fn wait_for_acks(n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while acks() < n {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::task::yield_now().await;
    }
}

const SETTINGS: Settings = Settings {
    header_timeout: Duration::from_secs(5),
    max_head: 8192,
    send_timeout: Duration::from_secs(60),
};

async fn ok(_: Request<RequestBody>) -> Response<Body> {
    Response::new(full("ok"))
}

/// Reads until `n` answers have come, or fails at a deadline.
async fn answers(c: &mut DuplexStream, n: usize) {
    let mut got = Vec::new();
    let read = async {
        while got.windows(2).filter(|w| w == b"ok").count() < n {
            let mut buf = [0u8; 1024];
            let k = c.read(&mut buf).await.expect("read");
            assert!(k > 0, "closed before {n} answers");
            got.extend_from_slice(&buf[..k]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("no answer");
}

#[tokio::test]
async fn a_head_in_pieces_asks_for_quick_acks_once() {
    reset();
    let (mut c, mut s) = duplex(4096);
    let shutdown = Stop::default();
    let server = tokio::spawn(async move {
        serve(&mut s, SETTINGS, ok, &shutdown).await;
    });
    c.write_all(b"GET /a HTTP/1.1\r\nHo").await.expect("write");
    wait_for_acks(1, "part of a head did not turn quick ACKs on").await;
    c.write_all(b"st: x\r\n\r\n").await.expect("write");
    answers(&mut c, 1).await;
    // A whole head needs nothing more from the client.
    c.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    answers(&mut c, 1).await;
    assert_eq!(acks(), 1, "quick ACKs asked for a whole head");
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server did not end")
        .expect("the server panicked");
}

/// Answers "ok" once it has read the request's body: hyper would close a
/// connection whose body was left unread.
struct ReadsBody;

impl Handler for ReadsBody {
    async fn handle(
        &self,
        req: Request<RequestBody>,
        _: Arc<ConnCtx>,
        _: Arc<ConnSlot>,
    ) -> Response<Body> {
        match req.into_body().collect().await {
            Ok(_) => Response::new(full("ok")),
            Err(_) => Response::new(full("body")),
        }
    }
}

/// A connection as the listener hands it over, with a `[server]` of defaults.
fn connection() -> (ServerCtx, ConnCtx, ConnSlot) {
    let cfg = crate::config::parse(
        Path::new("t.toml"),
        "[[listener]]\naddr = \"127.0.0.1:0\"\n",
    )
    .expect("config");
    let limits = ConnLimits::new();
    let peer: std::net::SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let slot = limits.admit(peer.ip(), 8, 0).expect("a slot");
    let sc = ServerCtx {
        limits,
        shutdown: Default::default(),
        metrics: Arc::new(Metrics::new()),
        config: Arc::new(ArcSwap::from_pointee(cfg.server)),
    };
    (sc, ConnCtx::new(peer, false), slot)
}

#[tokio::test]
async fn a_request_hyper_reads_on_asks_for_quick_acks() {
    reset();
    let (sc, ctx, slot) = connection();
    let (mut c, s) = duplex(4096);
    let server = tokio::spawn(conn::serve(
        sc,
        Arc::new(ReadsBody),
        s,
        ctx,
        slot,
        Protocols::Any,
    ));
    // Served on the fast path: nothing more is needed from the client.
    c.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    answers(&mut c, 1).await;
    assert_eq!(acks(), 0, "quick ACKs asked for a whole head");
    // A body still to come: the fast path hands the request to hyper.
    c.write_all(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        .await
        .expect("write");
    wait_for_acks(1, "a request handed to hyper did not turn quick ACKs on").await;
    c.write_all(b"hi").await.expect("write");
    answers(&mut c, 1).await;
    assert_eq!(acks(), 1);
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server did not end")
        .expect("the server panicked");
}

/// The header alone asks; a header with the request behind it, or one on a
/// TLS listener, does not.
#[tokio::test]
async fn a_proxy_header_alone_asks_for_quick_acks() {
    const HEADER: &[u8] = b"PROXY TCP4 192.0.2.1 192.0.2.2 4000 80\r\n";
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: [(&[&[u8]], bool, usize); 3] = [
        (&[HEADER], false, 1),
        (&[HEADER, REQUEST], false, 0),
        (&[HEADER], true, 0),
    ];
    for (parts, tls, want) in cases {
        reset();
        let (mut c, s) = duplex(4096);
        c.write_all(&parts.concat()).await.expect("write");
        let (_, s) = proxy_protocol::read_header(s).await.expect("header");
        after_proxy_header(&s, tls);
        assert_eq!(acks(), want, "{} parts, tls {tls}", parts.len());
    }
}
