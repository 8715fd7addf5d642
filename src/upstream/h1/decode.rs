//! A response body read off its connection as the client side pulls it: the
//! framing ([`Decoder`]: a length, chunked, or up to the close) as a pure step
//! function over the read buffer, and [`ResponseBody`], which feeds it from the
//! socket and, at a clean end, gives the connection back.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::{Conn, Error};
use crate::field_spans::Spans;

/// A chunk-size line or the trailer section may be at most this long.
const MAX_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// At most this many trailer fields.
const MAX_TRAILER_FIELDS: usize = 32;

/// Where in the body the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Everything up to the server's close.
    Eof,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

/// One step of decoding.
#[derive(Debug)]
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The buffer holds no complete next piece: read more.
    More,
    End,
}

impl Decoder {
    pub fn chunked() -> Self {
        Decoder::Chunked(Chunk::Size)
    }

    /// Takes the next piece of the body off `buf`. `eof`: the server closed
    /// and `buf` is all there is.
    pub fn step(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, Error> {
        loop {
            let step = match *self {
                Decoder::Done => return Ok(Step::End),
                Decoder::Length(0) => {
                    *self = Decoder::Done;
                    return Ok(Step::End);
                }
                Decoder::Length(left) => match take(buf, left) {
                    Some(d) => {
                        *self = Decoder::Length(left - d.len() as u64);
                        Step::Data(d)
                    }
                    None if eof => return Err(Error::Closed),
                    None => Step::More,
                },
                Decoder::Eof => match take(buf, u64::MAX) {
                    Some(d) => Step::Data(d),
                    None if eof => {
                        *self = Decoder::Done;
                        Step::End
                    }
                    None => Step::More,
                },
                Decoder::Chunked(c) => match self.chunk_step(c, buf)? {
                    Some(step) => step,
                    None => continue,
                },
            };
            if matches!(step, Step::More) && eof {
                return Err(Error::Closed);
            }
            return Ok(step);
        }
    }

    /// One move of the chunked state machine: `None` when it changed state
    /// without producing anything (go on).
    fn chunk_step(&mut self, c: Chunk, buf: &mut BytesMut) -> Result<Option<Step>, Error> {
        match c {
            Chunk::Size => {
                let Some(line) = line(buf, MAX_LINE)? else {
                    return Ok(Some(Step::More));
                };
                let size = chunk_size(&line)?;
                *self = Decoder::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(None)
            }
            Chunk::Data(left) => Ok(Some(match take(buf, left) {
                Some(d) => {
                    let left = left - d.len() as u64;
                    *self = Decoder::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    Step::Data(d)
                }
                None => Step::More,
            })),
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Some(Step::More));
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Chunk("no CRLF after chunk data"));
                }
                buf.advance(2);
                *self = Decoder::Chunked(Chunk::Size);
                Ok(None)
            }
            Chunk::Trailers => self.trailers(buf).map(Some),
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            *self = Decoder::Done;
            return Ok(Step::End);
        }
        let Some(end) = find(buf, b"\r\n\r\n") else {
            if buf.len() > MAX_TRAILERS {
                return Err(Error::Chunk("trailer section too large"));
            }
            return Ok(Step::More);
        };
        let section = buf.split_to(end + 4).freeze();
        let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        let mut spans = Spans::<MAX_TRAILER_FIELDS>::new();
        match httparse::parse_headers(&section, &mut slots) {
            Ok(httparse::Status::Complete((_, fields))) if spans.note(&section, fields) => {}
            _ => return Err(Error::Chunk("invalid trailer section")),
        };
        // The same map as a response head's (`field_spans`): values are
        // slices of the section.
        let map = spans.map(&section, 0).ok_or(Error::Header)?;
        *self = Decoder::Done;
        Ok(Step::Trailers(map))
    }
}

/// Up to `max` bytes off the front of `buf`, if it has any.
fn take(buf: &mut BytesMut, max: u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(max).unwrap_or(usize::MAX).min(buf.len());
    Some(buf.split_to(n).freeze())
}

/// A CRLF-terminated line off `buf` (without its CRLF), or `None` if the
/// line is not complete yet.
fn line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Error> {
    match find(buf, b"\r\n") {
        Some(i) => {
            let line = buf.split_to(i);
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > max => Err(Error::Chunk("chunk-size line too long")),
        None => Ok(None),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The hex size at the start of a chunk-size line (extensions after `;` are
/// ignored, as every server does).
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return Err(Error::Chunk("invalid chunk size"));
    }
    let mut n: u64 = 0;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(Error::Chunk("invalid chunk size")),
        };
        n = (n << 4) | u64::from(d);
    }
    Ok(n)
}

/// A response body read from its connection by whoever polls it.
#[derive(Debug)]
pub struct ResponseBody {
    /// `None` once the connection was handed back or dropped.
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
}

impl ResponseBody {
    pub fn new(conn: Conn, decoder: Decoder, keep_alive: bool) -> Self {
        ResponseBody {
            conn: Some(conn),
            decoder,
            keep_alive,
        }
    }

    /// The connection, once the body was read to its end cleanly and it may
    /// serve another request (nothing unasked-for behind the body).
    pub fn take_conn(&mut self) -> Option<Conn> {
        if !self.finished() || !self.keep_alive {
            return None;
        }
        let conn = self.conn.take()?;
        conn.buf.is_empty().then_some(conn)
    }
}

impl ResponseBody {
    fn finished(&self) -> bool {
        matches!(self.decoder, Decoder::Done | Decoder::Length(0))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let mut eof = false;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match this.decoder.step(&mut conn.buf, eof) {
                Ok(s) => s,
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            match step {
                Step::Data(d) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Step::Trailers(t) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Step::End => return Poll::Ready(None),
                Step::More => match ready!(conn.poll_fill(cx)) {
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(Error::Io(e))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
