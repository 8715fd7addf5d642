//! A lean HTTP/1.1 client for the upstream keep-alive pool: one exchange at a
//! time on a connection, driven entirely by the task that proxies the request.
//!
//! hyper's client runs each connection as a task of its own: a request went
//! through a channel to that task, which wrote it, read the answer and sent it
//! back through a second channel, and each body chunk through a third, with a
//! wake-up and a task switch at every crossing. That hand-off was a third of
//! a proxied request's instructions (BENCHMARKS.md, optimisation log). Here
//! the request's own task writes the head and body and reads the response
//! head, and the response body reads the socket as the client side pulls it,
//! as Pingora does.
//!
//! - [`Conn::send`] writes the request (its own `Content-Length`, else chunked
//!   when it has a body of unknown length), then reads the response head
//!   (`response`), skipping interim `1xx` answers.
//! - [`ResponseBody`] (`decode`) frames the body (`Content-Length`, chunked,
//!   or up to the close) and, read to its end on a connection that may be
//!   kept alive, hands the connection back ([`ResponseBody::take_conn`]).
//! - An idle connection is checked before reuse ([`Conn::is_usable`]): a close
//!   or stray bytes from the server while it sat in the pool retire it before
//!   a request is written to it.

mod decode;
mod response;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::BytesMut;
use http::{header, HeaderMap, Method, Request, Response};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

pub use decode::ResponseBody;
pub use response::MAX_INTERIM;

use super::dial::UpStream;
use crate::body::{Body, BoxError};

/// The read buffer's size, and how much more it grows by when full.
const READ_CHUNK: usize = 8 * 1024;
/// Room first made for a request head.
const HEAD_BUF: usize = 512;
/// A head buffer grown past this (an unusually large head) is not kept for
/// the next request: every idle pooled connection would hold it.
const KEEP_HEAD_BUF: usize = 4 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the message completed")]
    Closed,
    #[error("response head larger than {} bytes", response::MAX_HEAD)]
    HeadTooLarge,
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("invalid response header")]
    Header,
    #[error("more than {} interim (1xx) responses", response::MAX_INTERIM)]
    TooManyInterim,
    #[error("invalid Content-Length in the response")]
    ContentLength,
    #[error("invalid chunked body: {0}")]
    Chunk(&'static str),
    /// Reading the client's request body failed (the client's fault, which
    /// the proxy tells apart).
    #[error("request body: {0}")]
    RequestBody(#[source] BoxError),
    #[error("request body longer or shorter than its Content-Length")]
    RequestLength,
}

/// A failed exchange, and whether any byte of a response had arrived (if
/// not, the server never started answering, which is what makes a retry on
/// another server safe).
#[derive(Debug)]
pub struct Failed {
    pub error: Error,
    pub response_started: bool,
    /// The head of a bodiless idempotent request that got no byte of an
    /// answer: it may go again on another connection (RFC 9112 §9.3.1), as
    /// when a kept-alive connection the server had just closed took it.
    pub again: Option<Box<http::request::Parts>>,
}

/// Methods a request of which may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

impl Failed {
    fn new(error: Error, response_started: bool) -> Self {
        Self {
            error,
            response_started,
            again: None,
        }
    }

    /// Keeps `head` for another attempt when that is safe: nothing of an
    /// answer came, the request had no body, and its method is idempotent.
    fn may_go_again(mut self, bodiless: bool, head: http::request::Parts) -> Self {
        if bodiless && is_idempotent(&head.method) && !self.response_started {
            self.again = Some(Box::new(head));
        }
        self
    }
}

/// One keep-alive connection to a server, and the bytes read from it but not
/// yet consumed.
#[derive(Debug)]
pub struct Conn {
    io: UpStream,
    buf: BytesMut,
    /// The last bodiless request's head buffer, cleared: reused by the next
    /// request on this connection instead of an allocation per request.
    head_buf: Vec<u8>,
}

/// How the request body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

impl Conn {
    pub fn new(io: UpStream) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            head_buf: Vec::new(),
        }
    }

    /// The answer on a connection whose request someone else wrote (a
    /// WebSocket upgrade the server refused): `read` is what was read so
    /// far, a complete final head at its start. The body is framed as any
    /// response's; the connection is not kept.
    pub async fn answer(io: UpStream, read: &[u8]) -> Result<Response<ResponseBody>, Error> {
        let mut conn = Conn::new(io);
        conn.buf.extend_from_slice(read);
        let mut started = true;
        let (parts, decoder, _) = response::read_head(&mut conn, false, &mut started).await?;
        Ok(Response::from_parts(
            parts,
            ResponseBody::new(conn, decoder, false),
        ))
    }

    /// Is this idle connection still open, with nothing unasked-for to read?
    /// Checked without waiting: the server's close (or its stray bytes) is
    /// already in the socket if it happened.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Sends `req` (origin-form URI, `Host` set) and reads the response head.
    /// The returned body owns the connection until it is read to its end.
    pub async fn send(mut self, req: Request<Body>) -> Result<Response<ResponseBody>, Failed> {
        let (head, body) = req.into_parts();
        let head_only = head.method == Method::HEAD;
        let mut out = std::mem::take(&mut self.head_buf);
        out.reserve(HEAD_BUF);
        let framing = encode_head(&head.method, &head.uri, &head.headers, &body, &mut out);
        let bodiless = framing == Framing::None;
        let sent = if framing == Framing::None {
            let sent = self.io.write_all(&out).await.map_err(Error::Io);
            if out.capacity() <= KEEP_HEAD_BUF {
                out.clear();
                self.head_buf = out;
            }
            match sent {
                Ok(()) => self.io.flush().await.map(|()| Sent::All).map_err(Error::Io),
                Err(e) => Err(e),
            }
        } else {
            self.write_body(out, body, framing).await
        };
        // An answer before the whole body (a refusal, or a 2xx head seen
        // while it was sent): the server may not have read all of it, and
        // what it did not read would be taken for the next request. (A head
        // that came while every write went through at once is not seen
        // before the body ends: only a server that waits to answer is told
        // apart, as by nginx.)
        let reusable = match sent {
            Ok(Sent::All) => self.buf.is_empty(),
            Ok(Sent::Answered) => {
                tracing::debug!("upstream answered before the request body was sent in full");
                false
            }
            Err(error) => {
                return self
                    .answer_after_failed_write(error, head_only)
                    .await
                    .map_err(|f| f.may_go_again(bodiless, head))
            }
        };
        let mut started = !self.buf.is_empty();
        match response::read_head(&mut self, head_only, &mut started).await {
            Ok((parts, decoder, keep_alive)) => Ok(Response::from_parts(
                parts,
                ResponseBody::new(self, decoder, keep_alive && reusable),
            )),
            Err(error) => Err(Failed::new(error, started).may_go_again(bodiless, head)),
        }
    }

    /// A write failed (a request body error, or the server closed its side).
    /// A server that refuses an upload often answers and closes before the
    /// body is in: that answer, if it is already here, is the response (on a
    /// connection not reused); otherwise the write's error is.
    async fn answer_after_failed_write(
        mut self,
        error: Error,
        head_only: bool,
    ) -> Result<Response<ResponseBody>, Failed> {
        let mut started = !self.buf.is_empty();
        if matches!(error, Error::Io(_)) {
            let read = response::read_head(&mut self, head_only, &mut started);
            // Polled once: what the server sent before it closed is in the
            // socket already; nothing more is owed for a request not taken.
            if let Ok(Ok((parts, decoder, _))) =
                tokio::time::timeout(std::time::Duration::ZERO, read).await
            {
                tracing::debug!("upstream answered before the request was sent in full");
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::new(self, decoder, false),
                ));
            }
        }
        Err(Failed::new(error, started))
    }

    /// Writes the head with the first body chunk, then the rest of the body,
    /// watching for an early answer all along ([`Watch`]).
    async fn write_body(
        &mut self,
        head: Vec<u8>,
        body: Body,
        framing: Framing,
    ) -> Result<Sent, Error> {
        let mut body = std::pin::pin!(body);
        let mut head = Some(head);
        let mut written: u64 = 0;
        let mut watch = Watch::Reading;
        loop {
            // The head goes with the first chunk when that is ready at once,
            // else on its own right away: the server may answer before the
            // client sends anything (a streaming or slow upload).
            let waiting_with_head = head.is_some();
            let polled = self
                .watching(&mut watch, |_, cx| match body.as_mut().poll_frame(cx) {
                    Poll::Pending if waiting_with_head => Poll::Ready(None),
                    p => p.map(Some),
                })
                .await?;
            let frame = match polled {
                Watched::Answered => return Ok(Sent::Answered),
                Watched::Done(None) => {
                    let head_bytes = head.take().unwrap_or_default();
                    let mut parts = [IoSlice::new(&head_bytes)];
                    if let Sent::Answered =
                        self.write_watching(&mut watch, &mut parts, true).await?
                    {
                        return Ok(Sent::Answered);
                    }
                    continue;
                }
                Watched::Done(Some(frame)) => frame,
            };
            let data = match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    // Trailers are not forwarded over HTTP/1.1 upstreams.
                    Err(_) => continue,
                },
                Some(Err(e)) => return Err(Error::RequestBody(e)),
                None => break,
            };
            if data.is_empty() {
                continue;
            }
            written += data.len() as u64;
            if let Framing::Length(n) = framing {
                if written > n {
                    return Err(Error::RequestLength);
                }
            }
            let size_line = match framing {
                Framing::Chunked => format!("{:x}\r\n", data.len()),
                _ => String::new(),
            };
            let tail: &[u8] = if framing == Framing::Chunked {
                b"\r\n"
            } else {
                b""
            };
            let head_bytes = head.take().unwrap_or_default();
            let mut parts = [
                IoSlice::new(&head_bytes),
                IoSlice::new(size_line.as_bytes()),
                IoSlice::new(&data),
                IoSlice::new(tail),
            ];
            if let Sent::Answered = self.write_watching(&mut watch, &mut parts, false).await? {
                return Ok(Sent::Answered);
            }
        }
        if let Framing::Length(n) = framing {
            if written != n {
                return Err(Error::RequestLength);
            }
        }
        let last: &[u8] = if framing == Framing::Chunked {
            b"0\r\n\r\n"
        } else {
            b""
        };
        let head_bytes = head.take().unwrap_or_default();
        let mut parts = [IoSlice::new(&head_bytes), IoSlice::new(last)];
        self.write_watching(&mut watch, &mut parts, true).await
    }

    /// Writes every slice, in as few `writev`s as the socket takes (then
    /// flushes, if `flush`), unless an early answer stops it.
    async fn write_watching(
        &mut self,
        watch: &mut Watch,
        mut parts: &mut [IoSlice<'_>],
        flush: bool,
    ) -> Result<Sent, Error> {
        IoSlice::advance_slices(&mut parts, 0);
        while !parts.is_empty() {
            let bufs: &[IoSlice<'_>] = parts;
            let n = match self
                .watching(watch, |io, cx| Pin::new(io).poll_write_vectored(cx, bufs))
                .await?
            {
                Watched::Answered => return Ok(Sent::Answered),
                Watched::Done(n) => n?,
            };
            if n == 0 {
                return Err(Error::Io(io::ErrorKind::WriteZero.into()));
            }
            IoSlice::advance_slices(&mut parts, n);
        }
        if flush {
            if let Watched::Answered = self
                .watching(watch, |io, cx| Pin::new(io).poll_flush(cx))
                .await?
            {
                return Ok(Sent::Answered);
            }
        }
        Ok(Sent::All)
    }

    /// Polls `step` (a write, or the wait for the client's next body chunk)
    /// and, while it is pending, reads what the server sends: RFC 9112 §9.5,
    /// a server may answer before the body is in (a 401 or 413 to an
    /// upload) and then stop reading it, which a writer that only writes
    /// waits on until the response timeout.
    async fn watching<T>(
        &mut self,
        watch: &mut Watch,
        mut step: impl FnMut(&mut UpStream, &mut Context<'_>) -> Poll<T>,
    ) -> Result<Watched<T>, Error> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = step(&mut self.io, cx) {
                return Poll::Ready(Ok(Watched::Done(v)));
            }
            self.poll_early_answer(watch, cx)
                .map(|r| r.map(|()| Watched::Answered))
        })
        .await
    }

    /// Ready once a final answer refusing the body (not a 2xx) has arrived.
    /// A 2xx is left for after the body: the server reads it as it answers
    /// (a duplex stream), so writing goes on, and reading stops until then.
    fn poll_early_answer(
        &mut self,
        watch: &mut Watch,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        while *watch == Watch::Reading {
            if let Some(status) = response::final_status_so_far(self)? {
                if status.is_success() {
                    *watch = Watch::Stopped;
                    break;
                }
                return Poll::Ready(Ok(()));
            }
            if self.buf.len() >= response::MAX_HEAD {
                return Poll::Ready(Err(Error::HeadTooLarge));
            }
            match ready!(self.poll_fill(cx)) {
                // The server's close: the write finds out what it means.
                Ok(0) => *watch = Watch::Stopped,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        Poll::Pending
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the server's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// How writing a request ended.
enum Sent {
    All,
    /// The server answered (not a 2xx) before the body was all sent.
    Answered,
}

/// Whether the writer still reads what the server sends.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Watch {
    Reading,
    /// A 2xx head or the server's close was seen: nothing more to learn.
    Stopped,
}

enum Watched<T> {
    Done(T),
    Answered,
}

/// Encodes the request head into `out` and says how the body follows.
fn encode_head(
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: &Body,
    out: &mut Vec<u8>,
) -> Framing {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = request_framing(headers, body);
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) if !headers.contains_key(header::CONTENT_LENGTH) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        Framing::None if needs_zero_length(method, headers) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// The client's `Content-Length` (hyper's server side checked it), or the
/// body's exact size, or chunked for a body of unknown length.
fn request_framing(headers: &HeaderMap, body: &Body) -> Framing {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(0) | None if body.is_end_stream() => Framing::None,
        Some(n) => Framing::Length(n),
        None => match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        },
    }
}

/// A bodiless POST/PUT/PATCH still says so: some servers answer 411 to one
/// without a length.
fn needs_zero_length(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        && !headers.contains_key(header::CONTENT_LENGTH)
}

#[cfg(test)]
mod tests;
