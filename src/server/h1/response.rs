//! Writing a response on the fast path, framed the way hyper's server frames
//! it, so a client cannot tell which of the two answered:
//!
//! - the handler's `Content-Length` or `Transfer-Encoding` is kept; without
//!   either, a body of known size gets `content-length`, one of unknown size
//!   is sent chunked;
//! - `HEAD`, `204` and `304` answers carry no body, and `204` (like `1xx`)
//!   no length either; an empty body elsewhere gets `content-length: 0`;
//! - a `Date` is added when the handler gave none (formatted once a second);
//! - chunked trailers are sent only when the response announced them in
//!   `Trailer`, and never for fields that may not be trailers;
//! - `Connection: close` from the handler ends the connection after it;
//!   one that closes anyway says so, except a 101 (the one deliberate
//!   difference: hyper adds `close` there, which strict WebSocket clients
//!   refuse, and nginx does not).
//!
//! The head goes out with the body's first chunk when that is ready at once
//! (one write for a small proxied answer), else on its own.

use std::cell::RefCell;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::body::{Body, BoxError};
use crate::fields::{last_coding_is_chunked, list_has};

/// Body chunks up to this size are copied behind the head (or the chunk size
/// line) to go in one write; larger ones are written from where they are.
const COPY_MAX: usize = 16 * 1024;

/// Why a response could not be written whole; the connection closes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("response body failed")]
    Body(#[source] BoxError),
    #[error("response body does not match its Content-Length")]
    Length,
    #[error("invalid Content-Length in the response")]
    ContentLength,
    #[error("the response has both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("the client closed the connection")]
    ClientClosed,
}

/// How the body follows the head.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// No body goes out (`HEAD`, `204`, `304`, or an empty body).
    None,
    Length(u64),
    /// Chunked, with the trailer fields the head announced.
    Chunked(Vec<HeaderName>),
}

/// What the exchange says about the answer's head.
#[derive(Clone, Copy)]
pub(super) struct Head {
    /// It answers `HEAD`.
    pub head_request: bool,
    /// The connection closes after it (the client said `close`, or the
    /// gateway drains): the answer says `close` in `Connection`, as hyper's,
    /// unless it is a 101 ([`Rules`]).
    pub closing: bool,
}

/// Writes `resp` to `io`, using `out` as scratch; bytes the client sends
/// meanwhile go to `buf`. Returns whether the connection must close after it.
pub(super) async fn write<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    head: Head,
) -> Result<bool, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, body) = resp.into_parts();
    out.clear();
    let (framing, close) = encode_head(out, parts.status, &parts.headers, &body, head)?;
    // Not kept while the body streams: a proxied response's values are
    // slices of its upstream connection's read buffer, which they would keep.
    drop(parts);
    if framing == Framing::None {
        drop(body);
        io.write_all(out).await?;
    } else {
        write_body(io, buf, out, body, framing).await?;
    }
    io.flush().await?;
    Ok(close)
}

/// Encodes the status line and fields; returns the body's framing and whether
/// the response said `Connection: close`.
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &Body,
    head: Head,
) -> Result<(Framing, bool), Error> {
    // A fresh connection's scratch is empty: sized once here rather than
    // doubled from 8 bytes five or six times on the way (a 101 is ~170 bytes);
    // a reused one (keep-alive) already has room, and is not measured.
    if out.capacity() == 0 {
        out.reserve(head_size(headers));
    }
    put_status(out, status);
    let rules = Rules::new(status, head, body);
    let seen = put_fields(out, headers, &rules)?;
    let framing = choose_framing(out, &rules, &seen, body);
    if !seen.date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((framing, seen.close))
}

/// The head's size, within the few fields `encode_head` may add.
fn head_size(headers: &HeaderMap) -> usize {
    // The status line, a framing field, `date` and the blank line.
    const FIXED: usize = 128;
    headers
        .iter()
        .fold(FIXED, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

fn put_status(out: &mut Vec<u8>, status: StatusCode) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What this response may carry, by hyper's server rules.
struct Rules {
    /// No length of its own (`1xx`, `204`, `304`: `can_have_content_length`).
    no_length: bool,
    /// No body bytes (those and `HEAD` answers: `can_have_body`).
    no_body: bool,
    /// A `HEAD` answer (keeps the length a `GET` would get).
    head: bool,
    /// The body has nothing to send.
    empty: bool,
    /// `Connection` must say `close`. Never on a 101: past it the connection
    /// is the new protocol's, and strict WebSocket clients (tungstenite) fail
    /// a handshake whose `Connection` is not exactly `Upgrade`. hyper adds it
    /// there; nginx and HAProxy do not.
    closing: bool,
}

impl Rules {
    fn new(status: StatusCode, exchange: Head, body: &Body) -> Self {
        let head = exchange.head_request;
        let no_length = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        Rules {
            no_length,
            no_body: head || no_length,
            head,
            empty: body.is_end_stream(),
            closing: exchange.closing && status != StatusCode::SWITCHING_PROTOCOLS,
        }
    }
}

/// What the handler's fields said about framing.
#[derive(Default)]
struct Declared {
    length: Option<u64>,
    chunked: bool,
    trailers: Vec<HeaderName>,
    close: bool,
    /// The `Connection` line is written.
    connection: bool,
    date: bool,
}

/// Every `Connection` value on one line, as hyper writes them, with `close`
/// added when the connection closes after this answer and no value says so.
fn put_connection(out: &mut Vec<u8>, headers: &HeaderMap, closing: bool, d: &mut Declared) {
    d.connection = true;
    out.extend_from_slice(b"connection: ");
    for (i, v) in headers.get_all(header::CONNECTION).iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.as_bytes());
        d.close |= list_has(v.as_bytes(), b"close");
    }
    if closing && !d.close {
        out.extend_from_slice(b", close");
        d.close = true;
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the handler's fields, but not a length an empty body cannot keep
/// (unless answering `HEAD`), nor `Transfer-Encoding` or `Trailer` on an
/// answer without a body. Both a length and a transfer coding are refused,
/// as hyper refuses them: the client would frame by one and we by the other.
fn put_fields(out: &mut Vec<u8>, headers: &HeaderMap, rules: &Rules) -> Result<Declared, Error> {
    let mut d = Declared::default();
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH => {
                if (rules.empty && !rules.head) || d.length.is_some() {
                    continue;
                }
                d.length = Some(parse_length(value.as_bytes())?);
            }
            header::TRANSFER_ENCODING | header::TRAILER if rules.no_body => continue,
            header::TRANSFER_ENCODING => d.chunked = true,
            header::TRAILER => d.trailers.extend(trailer_names(value.as_bytes())),
            header::CONNECTION => {
                if !d.connection {
                    put_connection(out, headers, rules.closing, &mut d);
                }
                continue;
            }
            header::DATE => d.date = true,
            _ => {}
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if rules.closing && !d.connection {
        out.extend_from_slice(b"connection: close\r\n");
        d.close = true;
    }
    if d.chunked && d.length.is_some() {
        return Err(Error::LengthAndChunked);
    }
    if d.chunked && !last_coding_is_chunked(headers) {
        // hyper's rule: `chunked` must be the last coding, else it is added.
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    Ok(d)
}

/// The body's framing, writing the length or coding the handler left out.
fn choose_framing(out: &mut Vec<u8>, rules: &Rules, d: &Declared, body: &Body) -> Framing {
    let framing = if d.chunked {
        Framing::Chunked(d.trailers.clone())
    } else if let Some(n) = d.length {
        Framing::Length(n)
    } else if rules.empty {
        if !rules.no_length && !rules.head {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        if !rules.no_length {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Length(n)
    } else if rules.no_body {
        Framing::None
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked(d.trailers.clone())
    };
    match framing {
        _ if rules.no_body => Framing::None,
        Framing::Length(0) => Framing::None,
        f => f,
    }
}

fn parse_length(v: &[u8]) -> Result<u64, Error> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or(Error::ContentLength)
}

fn trailer_names(v: &[u8]) -> impl Iterator<Item = HeaderName> + '_ {
    v.split(|&b| b == b',')
        .filter_map(|s| HeaderName::from_bytes(s.trim_ascii()).ok())
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the head in `out` and the body after it, framed as `framing` says.
async fn write_body<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    mut body: Body,
    framing: Framing,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let chunked = matches!(framing, Framing::Chunked(_));
    let mut trailers = None;
    loop {
        // What is ready now joins the bytes waiting in `out`; when the body
        // has to wait, what is written so far goes out first.
        let ready = std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(f) => Some(f),
                Poll::Pending => None,
            })
        })
        .await;
        let frame = match ready {
            Some(f) => f,
            None => {
                send(io, out, &[]).await?;
                io.flush().await?;
                next_frame_or_close(io, buf, &mut body).await?
            }
        };
        let frame = match frame {
            None => break,
            Some(Err(e)) => return Err(Error::Body(e)),
            Some(Ok(f)) => f,
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(f) => {
                // Trailers end the body, as in hyper.
                trailers = f.into_trailers().ok();
                break;
            }
        };
        if data.is_empty() {
            continue;
        }
        if !chunked {
            left = left.checked_sub(data.len() as u64).ok_or(Error::Length)?;
        }
        if chunked {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        push_data(io, out, data).await?;
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Framing::Length(_) = framing {
        if left != 0 {
            return Err(Error::Length);
        }
    }
    if let Framing::Chunked(allowed) = &framing {
        out.extend_from_slice(b"0\r\n");
        if let Some(t) = trailers {
            put_trailers(out, &t, allowed);
        }
        out.extend_from_slice(b"\r\n");
    }
    send(io, out, &[]).await
}

/// Waits for the body's next frame. A long wait (a stream of events) must
/// not outlive the client: while nothing else is buffered the socket is
/// watched, and its close ends the response, as in hyper's server.
async fn next_frame_or_close<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    body: &mut Body,
) -> Result<Option<Result<Frame<Bytes>, BoxError>>, Error>
where
    IO: AsyncRead + Unpin,
{
    let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
    if !buf.is_empty() {
        return Ok(frame.await);
    }
    if buf.capacity() < 64 {
        buf.reserve(1024);
    }
    tokio::select! {
        biased;
        f = frame => Ok(f),
        r = io.read_buf(buf) => match r {
            Ok(n) if n > 0 => Ok(std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await),
            _ => Err(Error::ClientClosed),
        },
    }
}

/// Copies a small `data` behind `out`; writes a large one from where it is.
async fn push_data<IO>(io: &mut IO, out: &mut Vec<u8>, data: Bytes) -> Result<(), Error>
where
    IO: AsyncWrite + Unpin,
{
    if out.len() + data.len() <= COPY_MAX {
        out.extend_from_slice(&data);
        Ok(())
    } else {
        send(io, out, &data).await
    }
}

fn put_trailers(out: &mut Vec<u8>, trailers: &HeaderMap, allowed: &[HeaderName]) {
    for (name, value) in trailers {
        if allowed.contains(name) && may_trail(name) {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// Fields that may not be sent as trailers (hyper's list).
fn may_trail(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

/// Writes `out` then `more`, in as few `writev`s as the socket takes, and
/// empties `out`.
async fn send<IO>(io: &mut IO, out: &mut Vec<u8>, more: &[u8]) -> Result<(), Error>
where
    IO: AsyncWrite + Unpin,
{
    let mut parts = [IoSlice::new(out), IoSlice::new(more)];
    let mut parts = &mut parts[..];
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let n = io.write_vectored(parts).await?;
        if n == 0 {
            return Err(Error::Io(io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    out.clear();
    Ok(())
}

thread_local! {
    /// The `Date` value and the second it is for.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Appends the current `Date` value (RFC 9110 §5.6.7), formatted once a
/// second per thread.
fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}
