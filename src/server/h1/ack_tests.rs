//! When the fast path asks for quick ACKs again (see `server::acks`): once
//! per head that arrives in pieces, never for a head that arrives whole.

use std::cell::Cell;
use std::time::Duration;

use http::{Request, Response};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::{serve, Settings};
use crate::body::{full, Body, RequestBody};
use crate::server::acks::AckNow;

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

const SETTINGS: Settings = Settings {
    header_timeout: Duration::from_secs(5),
    max_head: 8192,
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
    // The test thread may have run another test before this one.
    ACKS.with(|a| a.set(0));
    let (mut c, mut s) = duplex(4096);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(async move {
        serve(&mut s, SETTINGS, ok, &shutdown).await;
    });
    c.write_all(b"GET /a HTTP/1.1\r\nHo").await.expect("write");
    // The server reads the first piece and asks; polled against a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while acks() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "part of a head did not turn quick ACKs on"
        );
        tokio::task::yield_now().await;
    }
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
