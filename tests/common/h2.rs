//! A raw HTTP/2 client (the `h2` crate) for what hyper's client hides: a
//! request body left open while the answer is read, `RST_STREAM` sent at a
//! chosen moment, PING round trips (to know the gateway has processed every
//! frame sent before), and whether the gateway reset a stream or ended the
//! connection. Every wait is bounded by [`WAIT`](super::WAIT).

use std::future::poll_fn;
use std::task::Poll;

use bytes::Bytes;
use h2::client::{self, ResponseFuture, SendRequest};
use h2::{Ping, PingPong, SendStream};
use http::{Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use super::WAIT;

/// One HTTP/2 connection: its request handle, its PING handle, and the task
/// driving it (finished = the connection ended, with its error if any).
pub struct H2 {
    pub send: SendRequest<Bytes>,
    pub ping: PingPong,
    pub conn: JoinHandle<Result<(), h2::Error>>,
}

/// Sends the preface and SETTINGS over `io` (prior knowledge on a plain
/// socket, or a TLS stream that negotiated `h2`).
pub async fn handshake<IO>(io: IO) -> H2
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = tokio::time::timeout(WAIT, client::handshake(io))
        .await
        .expect("h2 handshake in time")
        .expect("h2 handshake");
    let ping = conn.ping_pong().expect("ping handle");
    let conn = tokio::spawn(conn);
    H2 { send, ping, conn }
}

impl H2 {
    /// Opens a stream with `req`'s head; the body stays open when `open_body`.
    pub async fn start(
        &mut self,
        req: Request<()>,
        open_body: bool,
    ) -> (ResponseFuture, SendStream<Bytes>) {
        tokio::time::timeout(WAIT, poll_fn(|cx| self.send.poll_ready(cx)))
            .await
            .expect("stream capacity in time")
            .expect("connection usable");
        self.send
            .send_request(req, !open_body)
            .expect("request sent")
    }

    /// A whole request without a body: its status and body text.
    pub async fn get(&mut self, req: Request<()>) -> (StatusCode, String) {
        let (resp, _stream) = self.start(req, false).await;
        response(resp).await
    }

    /// A PING and its PONG: every frame sent before has been processed by the
    /// gateway, and everything it sent before the PONG has been read.
    pub async fn round_trip(&mut self) {
        tokio::time::timeout(WAIT, self.ping.ping(Ping::opaque()))
            .await
            .expect("PONG in time")
            .expect("PING answered");
    }
}

/// The status and body text of a response.
pub async fn response(resp: ResponseFuture) -> (StatusCode, String) {
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("response in time")
        .expect("response");
    let status = resp.status();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.data())
        .await
        .expect("body in time")
    {
        let chunk = chunk.expect("body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// Whether the gateway has reset this stream (as far as frames read so far
/// tell: call after [`H2::round_trip`]), and with which reason.
pub fn reset_reason(stream: &mut SendStream<Bytes>) -> Option<h2::Reason> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match stream.poll_reset(&mut cx) {
        Poll::Ready(Ok(reason)) => Some(reason),
        Poll::Ready(Err(e)) => panic!("stream state: {e}"),
        Poll::Pending => None,
    }
}

/// Waits (bounded) until the gateway resets this stream; its reason.
pub async fn wait_reset(stream: &mut SendStream<Bytes>) -> h2::Reason {
    tokio::time::timeout(WAIT, poll_fn(|cx| stream.poll_reset(cx)))
        .await
        .expect("the stream is reset in time")
        .expect("stream state")
}
