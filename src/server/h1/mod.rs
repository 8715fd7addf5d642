//! The HTTP/1.1 fast path: plain requests served by the connection's own task,
//! without hyper's dispatcher.
//!
//! A keep-alive request through hyper's server went through its dispatcher's
//! state machine, a `Service` future boxed per request, and header maps built
//! and then re-encoded by its generic role code: about 15 k of the 26 k
//! user-space instructions of a proxied request (BENCHMARKS.md, optimisation
//! log). Most edge traffic is plain GETs on kept-alive connections, so those
//! are served here: read a head ([`request`]), call the handler, write the
//! answer ([`response`]), and loop.
//!
//! A WebSocket handshake is served here too: its request carries a
//! [`crate::upgraded::Pending`], and when the handler answers 101 the answer
//! is written and the connection, with any bytes read past the head, goes to
//! the handler's session ([`End::Upgraded`]), as hyper's `Upgraded` would.
//! A handshake refused (any other answer) leaves the connection here.
//!
//! Everything else goes to hyper, for the rest of the connection: the first
//! head that has a body, another upgrade or an `Expect`, that is not
//! HTTP/1.1, or that does not parse, is handed over with the bytes read so far
//! ([`End::Handoff`]); an HTTP/2 preface too, as it is no HTTP/1.1 head. So
//! hyper still answers every request it answered before that this path does
//! not serve exactly as it would.
//!
//! The rules kept from hyper's server: a head must be complete within
//! `header_timeout` of being waited for (also the idle keep-alive limit; a
//! head handed to hyper keeps the deadline it had here); a client that closes
//! while its request is handled cancels the handler, and one that closes
//! right behind its request is never handled; a drain lets the request in
//! flight finish and then closes, and closes an idle connection at once (but
//! serves a first request already on the way).

mod request;
mod response;

use std::future::Future;
use std::pin::{pin, Pin};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::acks::AckNow;
use crate::body::{Body, RequestBody};
use crate::send_timeout::SendTimed;
use crate::shutdown::Stop;
use crate::upgraded::Handover;
use request::Parsed;

/// The read buffer's first size, and how much it grows by at a time.
const READ_CHUNK: usize = 4 * 1024;

/// How the fast path left the connection.
pub enum End {
    /// It is closed, or must be: nothing more to serve.
    Closed,
    /// A head was refused with this status (400 or 431), then closed.
    Refused(StatusCode),
    /// hyper serves the rest, starting with the bytes already read; its first
    /// head must be complete by `deadline`, the one this path set for it.
    Handoff { buffered: Bytes, deadline: Instant },
    /// A WebSocket handshake was answered 101: the connection goes to `to`,
    /// with the bytes read past the head.
    Upgraded { to: Handover, buffered: Bytes },
}

/// The limits of one connection, from `[server]`.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a head may take, from when it is waited for.
    pub header_timeout: Duration,
    /// A head that is not complete within this many bytes is answered 431
    /// (as hyper would, with a reason).
    pub max_head: usize,
    /// How long a response write may wait for the client to take a byte.
    pub send_timeout: Duration,
}

/// Serves requests from `io` with `handle` until the connection closes, the
/// gateway drains, or a request needs hyper.
pub async fn serve<IO, F, Fut>(
    io: &mut IO,
    settings: Settings,
    mut handle: F,
    shutdown: &Stop,
) -> End
where
    IO: AsyncRead + AsyncWrite + AckNow + Unpin,
    F: FnMut(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    // One wait on the drain and one head timer for the connection's life: a
    // new one per request would register and unregister each time, and a
    // timer pushed later is only re-armed when it fires.
    let mut drain = pin!(shutdown.cancelled());
    let mut timer = pin!(tokio::time::sleep(settings.header_timeout));
    let mut served = false;
    loop {
        timer
            .as_mut()
            .reset(Instant::now() + settings.header_timeout);
        // A drain closes an idle connection, except one whose first request
        // has not arrived yet: that one is on its way (a connection accepted
        // just before a binary upgrade).
        let closable = buf.is_empty() && served;
        let head = tokio::select! {
            biased;
            head = read_head(io, &mut buf, settings.max_head) => head,
            () = timer.as_mut() => {
                tracing::debug!("no complete request head within header_timeout; closing");
                Head::Closed
            }
            () = drain.as_mut(), if closable => Head::Closed,
        };
        let (mut request, keep_alive, upgrade) = match head {
            Head::Ready(r, k, u) => (r, k, u),
            Head::Handoff => {
                return End::Handoff {
                    buffered: buf.freeze(),
                    deadline: timer.deadline(),
                }
            }
            Head::Refused(status, why) => {
                let framing = response::Head {
                    head_request: false,
                    closing: true,
                };
                let resp = crate::body::text_response(status, why);
                let mut timed = SendTimed::new(&mut *io, settings.send_timeout);
                let _ = response::write(&mut timed, &mut buf, &mut out, resp, framing).await;
                let _ = timed.shutdown().await;
                return End::Refused(status);
            }
            Head::Closed => return End::Closed,
        };
        served = true;
        let head_request = request.method() == Method::HEAD;
        let handover = upgrade.then(|| {
            let (to, pending) = Handover::new();
            request.extensions_mut().insert(pending);
            to
        });
        // Pinned where it is made: the handler's future is large, and every
        // move of it is a copy.
        let handling = pin!(handle(request));
        let Some(resp) = answer(io, &mut buf, handling).await else {
            tracing::debug!("client closed the connection before its answer");
            return End::Closed;
        };
        // A 101 hands the connection over, or closes it when the request
        // asked for no upgrade, as hyper does.
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let resp = refuse_interim(resp);
        // As hyper, an answer after which the connection closes says so (and
        // `write` then reports the close).
        let framing = response::Head {
            head_request,
            closing: !keep_alive || shutdown.is_cancelled(),
        };
        let mut timed = SendTimed::new(&mut *io, settings.send_timeout);
        let close = match response::write(&mut timed, &mut buf, &mut out, resp, framing).await {
            Ok(close) => close,
            Err(e) => {
                tracing::debug!(error = %e, "writing the response failed; closing");
                return End::Closed;
            }
        };
        if switching {
            if let Some(to) = handover {
                return End::Upgraded {
                    to,
                    buffered: buf.split().freeze(),
                };
            }
        }
        if close || switching {
            // Over TLS a shutdown writes close_notify: timed like the answer.
            let _ = timed.shutdown().await;
            return End::Closed;
        }
        // A big head or answer grew a buffer; an idle connection keeps little.
        if buf.is_empty() && buf.capacity() > 2 * READ_CHUNK {
            buf = BytesMut::new();
        }
        if out.capacity() > 4 * READ_CHUNK {
            out = Vec::new();
        }
    }
}

// Moved once per request: boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Head {
    /// The request, whether the connection may stay open, whether it is a
    /// WebSocket handshake.
    Ready(Request<RequestBody>, bool, bool),
    Handoff,
    /// Answered with this status and reason, then closed (see
    /// `request::Parsed::Malformed`).
    Refused(StatusCode, &'static str),
    Closed,
}

/// Reads until `buf` starts with a whole head (or one for hyper).
async fn read_head<IO>(io: &mut IO, buf: &mut BytesMut, max_head: usize) -> Head
where
    IO: AsyncRead + AckNow + Unpin,
{
    let mut acked = false;
    loop {
        if !buf.is_empty() {
            match request::parse(buf) {
                Parsed::Ready {
                    request,
                    keep_alive,
                    upgrade,
                } => return Head::Ready(request, keep_alive, upgrade),
                Parsed::Handoff => return Head::Handoff,
                Parsed::Malformed(why) => return Head::Refused(StatusCode::BAD_REQUEST, why),
                Parsed::Partial if buf.len() >= max_head => {
                    return Head::Refused(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "request head larger than server.max_request_head\n",
                    )
                }
                Parsed::Partial if !acked => {
                    // Part of a head: the client may hold the rest for an ACK.
                    io.ack_now();
                    acked = true;
                }
                Parsed::Partial => {}
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) => {}
        }
    }
}

/// Runs the handler. While the buffer is empty the socket is watched, and a
/// close (or error) cancels the handler (`None`), as hyper's server does;
/// bytes that arrive meanwhile (a pipelined request) are kept for later.
async fn answer<IO, Fut>(
    io: &mut IO,
    buf: &mut BytesMut,
    mut fut: Pin<&mut Fut>,
) -> Option<Response<Body>>
where
    IO: AsyncRead + Unpin,
    Fut: Future<Output = Response<Body>>,
{
    if !buf.is_empty() {
        return Some(fut.await);
    }
    if buf.capacity() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    // The socket first: a request followed by the client's close is never
    // handled (its handler could already have written upstream), as in hyper.
    tokio::select! {
        biased;
        r = io.read_buf(buf) => match r {
            Ok(n) if n > 0 => Some(fut.await),
            _ => None,
        },
        resp = fut.as_mut() => Some(resp),
    }
}

/// hyper's server sends no interim answer but 101 that a handler returns as
/// its response: it answers 500 and closes. The same here.
fn refuse_interim(resp: Response<Body>) -> Response<Body> {
    let status = resp.status();
    if !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    let mut r = Response::new(crate::body::empty());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    r
}

#[cfg(test)]
mod tests;
