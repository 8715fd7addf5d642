//! Request-smuggling guard for HTTP/1.1 connections.
//!
//! hyper accepts a request carrying both `Content-Length` and
//! `Transfer-Encoding` the way RFC 9112 §6.1 allows (the transfer coding wins,
//! `Content-Length` is dropped, the connection closes afterwards), so by the
//! time the request reaches wsgate's service nothing shows that it was
//! ambiguous. wsgate refuses such requests outright: [`Guarded`] sits under
//! hyper, follows HTTP/1.1 message framing in the bytes hyper reads (heads,
//! `Content-Length` and chunked bodies) and marks the connection when a head has
//! both headers or disagreeing `Content-Length`s. hyper can only parse bytes
//! that went through here first, so the mark is set before the service sees the
//! request; the service then answers 400 and closes, and nothing is forwarded.
//!
//! The same goes for a head that repeats a field that must appear once
//! ([`SINGLE`]): two `Host` lines make the request invalid (RFC 9112 §3.2,
//! "MUST respond with a 400"), even with equal values, and hyper would keep
//! both, route on the first and forward both. `Origin` (RFC 6454 §7.3) and the
//! WebSocket handshake's `Sec-WebSocket-Key` and `Sec-WebSocket-Version`
//! (RFC 6455 §11.3) are single by definition too; wsgate decides on the first
//! (the origin allow-list) while an upstream could read another.
//!
//! The scan keeps a few hundred bytes of state per connection whatever the
//! input, and stops for good on HTTP/2, after an upgrade (the service says so),
//! and on framing hyper itself rejects.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest line prefix kept: enough for any header name and a
/// `Content-Length` or `Transfer-Encoding` value.
const LINE_KEEP: usize = 256;

/// Fields a request head may carry at most once; a second line is refused
/// (see the module docs). `Content-Length` is handled apart: repeating the
/// same value is allowed (RFC 9112 §6.3), differing values are refused.
pub const SINGLE: [&str; 4] = [
    "host",
    "origin",
    "sec-websocket-key",
    "sec-websocket-version",
];

const CLEAN: u8 = 0;
const AMBIGUOUS: u8 = 1;
const STOPPED: u8 = 2;

/// What the scanner found, shared with the connection's service.
#[derive(Debug, Default)]
pub struct Verdict(AtomicU8);

impl Verdict {
    /// A request head on this connection had ambiguous framing or a repeated
    /// single field (e.g. two `Host` lines).
    pub fn ambiguous(&self) -> bool {
        self.0.load(Ordering::Acquire) == AMBIGUOUS
    }

    /// Stops scanning (the connection was upgraded and carries no more HTTP).
    pub fn stop(&self) {
        let _ = self
            .0
            .compare_exchange(CLEAN, STOPPED, Ordering::AcqRel, Ordering::Acquire);
    }

    fn mark_ambiguous(&self) {
        self.0.store(AMBIGUOUS, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.0.load(Ordering::Acquire) != CLEAN
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Head(Head),
    Body(u64),
    ChunkSize(Line),
    ChunkData(u64),
    ChunkEnd,
    Trailers(Line),
    Off,
}

/// The start of a line that did not end in the bytes read so far (at most
/// `LINE_KEEP` bytes of it). Lines that end in the read that started them, the
/// usual case, are looked at in place and never copied.
#[derive(Debug, Default, PartialEq, Eq)]
struct Line {
    buf: Vec<u8>,
    truncated: bool,
}

impl Line {
    /// Keeps `part`, a line's start with no `\n` in it, for the next read.
    fn keep(&mut self, part: &[u8]) {
        let room = LINE_KEEP - self.buf.len();
        if part.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&part[..part.len().min(room)]);
    }

    /// Ends the line with `rest` (its bytes before the `\n`): the line without
    /// its `\r`, cut to `LINE_KEEP`, and whether it was cut. `kept` receives
    /// what [`Line::keep`] had stored, so the result can borrow it while the
    /// state that owned the line changes.
    fn finish<'a>(&mut self, kept: &'a mut Vec<u8>, rest: &'a [u8]) -> (&'a [u8], bool) {
        *kept = std::mem::take(&mut self.buf);
        let truncated = std::mem::replace(&mut self.truncated, false);
        let (line, cut) = if kept.is_empty() && !truncated {
            (&rest[..rest.len().min(LINE_KEEP)], rest.len() > LINE_KEEP)
        } else {
            let room = LINE_KEEP - kept.len();
            kept.extend_from_slice(&rest[..rest.len().min(room)]);
            (&kept[..], truncated || rest.len() > room)
        };
        (line.strip_suffix(b"\r").unwrap_or(line), cut)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Head {
    line: Line,
    started: bool,
    te: bool,
    chunked: bool,
    content_length: Option<u64>,
    /// Bit `i` set: the head had a [`SINGLE`]`[i]` line.
    single: u8,
    ambiguous: bool,
}

/// Follows HTTP/1.1 request framing over a byte stream. Two scanners compare
/// equal when they are in the same state, whatever reads brought them there.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanner {
    state: State,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            state: State::Head(Head::default()),
        }
    }
}

impl Scanner {
    /// Feeds bytes; returns true when a request head with ambiguous framing
    /// or a repeated single field ended in them.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut found = false;
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return found,
                State::Body(n) | State::ChunkData(n) => {
                    let k = usize::try_from(*n).unwrap_or(usize::MAX).min(data.len());
                    *n -= k as u64;
                    data = &data[k..];
                    if *n == 0 {
                        self.state = match self.state {
                            State::ChunkData(_) => State::ChunkEnd,
                            _ => State::Head(Head::default()),
                        };
                    }
                }
                State::ChunkEnd => match data.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        data = &data[i + 1..];
                        self.state = State::ChunkSize(Line::default());
                    }
                    None => return found,
                },
                State::ChunkSize(line) | State::Trailers(line) => {
                    let Some(i) = data.iter().position(|b| *b == b'\n') else {
                        line.keep(data);
                        return found;
                    };
                    let (rest, after) = (&data[..i], &data[i + 1..]);
                    data = after;
                    let mut kept = Vec::new();
                    let (l, truncated) = line.finish(&mut kept, rest);
                    self.state = match &self.state {
                        State::ChunkSize(_) => chunk_size(l, truncated),
                        _ if l.is_empty() => State::Head(Head::default()),
                        _ => State::Trailers(Line::default()),
                    };
                }
                State::Head(head) => {
                    let Some(i) = data.iter().position(|b| *b == b'\n') else {
                        head.line.keep(data);
                        return found;
                    };
                    let (rest, after) = (&data[..i], &data[i + 1..]);
                    data = after;
                    let mut kept = Vec::new();
                    let (l, truncated) = head.line.finish(&mut kept, rest);
                    if !head.started {
                        // Empty lines before a request line are skipped (RFC 9112 §2.2).
                        if !l.is_empty() {
                            head.started = true;
                            if l.ends_with(b"HTTP/2.0") || truncated {
                                self.state = State::Off;
                            }
                        }
                        continue;
                    }
                    if l.is_empty() {
                        let head = std::mem::take(head);
                        found |= head.ambiguous || (head.te && head.content_length.is_some());
                        self.state = if head.te {
                            // hyper refuses a transfer coding not ending in chunked.
                            if head.chunked {
                                State::ChunkSize(Line::default())
                            } else {
                                State::Off
                            }
                        } else {
                            match head.content_length {
                                Some(n) if n > 0 => State::Body(n),
                                _ => State::Head(Head::default()),
                            }
                        };
                        continue;
                    }
                    if let Some(next) = header_line(head, l, truncated) {
                        self.state = next;
                    }
                }
            }
        }
        found
    }
}

/// Records one header line; returns a new state when scanning must stop.
fn header_line(head: &mut Head, l: &[u8], truncated: bool) -> Option<State> {
    let colon = l.iter().position(|b| *b == b':')?;
    let name = &l[..colon];
    let value = l[colon + 1..].trim_ascii();
    if name.eq_ignore_ascii_case(b"transfer-encoding") {
        if truncated {
            return Some(State::Off);
        }
        head.te = true;
        let last = value
            .rsplit(|b| *b == b',')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        head.chunked = last.eq_ignore_ascii_case(b"chunked");
    } else if let Some(i) = SINGLE
        .iter()
        .position(|s| name.eq_ignore_ascii_case(s.as_bytes()))
    {
        let bit = 1u8 << i;
        if head.single & bit != 0 {
            head.ambiguous = true;
        }
        head.single |= bit;
    } else if name.eq_ignore_ascii_case(b"content-length") {
        for part in value.split(|b| *b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            match (n, head.content_length) {
                (None, _) => head.ambiguous = true,
                (Some(n), Some(prev)) if n != prev => head.ambiguous = true,
                (Some(n), _) => head.content_length = Some(n),
            }
        }
        if truncated {
            head.ambiguous = true;
        }
    }
    None
}

fn chunk_size(l: &[u8], truncated: bool) -> State {
    let hex = l
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    match std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
    {
        _ if truncated || hex.is_empty() => State::Off,
        Some(0) => State::Trailers(Line::default()),
        Some(n) => State::ChunkData(n),
        None => State::Off,
    }
}

/// An IO whose reads are scanned for ambiguous request framing.
pub struct Guarded<IO> {
    io: IO,
    scanner: Scanner,
    verdict: Arc<Verdict>,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO) -> (Self, Arc<Verdict>) {
        let verdict = Arc::new(Verdict::default());
        (
            Self {
                io,
                scanner: Scanner::default(),
                verdict: verdict.clone(),
            },
            verdict,
        )
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if res.is_ready() && !this.verdict.stopped() && this.scanner.feed(&buf.filled()[before..]) {
            this.verdict.mark_ambiguous();
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan(parts: &[&[u8]]) -> bool {
        let mut s = Scanner::default();
        parts.iter().fold(false, |found, p| s.feed(p) | found)
    }

    #[test]
    fn clean_requests_pass() {
        assert!(!scan(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcdeGET / HTTP/1.1\r\n\r\n"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
        ]));
        // A body that looks like a smuggling head is only a body.
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut req =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(body);
        assert!(!scan(&[&req]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nabcde"
        ]));
    }

    #[test]
    fn ambiguous_framing_is_found_wherever_it_is_split() {
        let cases: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
            b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\nPOST / HTTP/1.1\r\nContent-length: 1, 2\r\n\r\n",
        ];
        for c in cases {
            assert!(scan(&[c]), "{}", String::from_utf8_lossy(c));
            for i in 1..c.len() {
                assert!(scan(&[&c[..i], &c[i..]]), "split at {i}");
            }
            let bytes: Vec<&[u8]> = c.chunks(1).collect();
            assert!(scan(&bytes));
        }
    }

    #[test]
    fn repeated_single_fields_are_found_wherever_they_are_split() {
        let cases: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: evil.example\r\n\r\n",
            // Equal values too: a request with two Host lines is invalid.
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nhOsT: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: http://a\r\nOrigin: http://b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Key: y\r\n\r\n",
            // The second request of a keep-alive connection, after a body.
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nHostGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ];
        for c in cases {
            assert!(scan(&[c]), "{}", String::from_utf8_lossy(c));
            for i in 1..c.len() {
                assert!(scan(&[&c[..i], &c[i..]]), "split at {i}");
            }
        }
    }

    #[test]
    fn single_fields_once_per_request_pass() {
        // One Host per request on a keep-alive connection; Host with an
        // absolute-form target; look-alike names; a Host inside a body and in
        // chunked trailers (not the head).
        assert!(!scan(&[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: b\r\n\r\n"
        ]));
        assert!(!scan(&[b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(!scan(&[
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Host: b\r\nHostname: c\r\nX-Forwarded-Host: d\r\n\r\n"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nHost: b\r\n"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHost: b\r\n\r\n"
        ]));
    }

    /// Feeds `data` cut at `cuts` and returns the verdict after each piece,
    /// the piece ends, and the scanner.
    fn feed_cut(data: &[u8], cuts: &[usize]) -> (Vec<bool>, Vec<usize>, Scanner) {
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        ends.push(data.len());
        ends.sort_unstable();
        ends.dedup();
        let mut s = Scanner::default();
        let (mut found, mut start, mut verdicts) = (false, 0, Vec::new());
        for &end in &ends {
            found |= s.feed(&data[start..end]);
            verdicts.push(found);
            start = end;
        }
        (verdicts, ends, s)
    }

    /// Request-shaped pieces (so the scanner reaches every state) and noise.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"GET / HTTP/1.1\r\n".to_vec()),
            Just(b"POST / HTTP/1.1\r\n".to_vec()),
            Just(b"PRI * HTTP/2.0\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"Host: a\r\n".to_vec()),
            Just(b"host:b\r\n".to_vec()),
            Just(b"Origin: http://a\r\n".to_vec()),
            Just(b"Sec-WebSocket-Key: k\r\n".to_vec()),
            Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
            Just(b"Transfer-Encoding: gzip\r\n".to_vec()),
            (0u64..40).prop_map(|n| format!("Content-Length: {n}\r\n").into_bytes()),
            Just(b"Content-Length: 1, 2\r\n".to_vec()),
            (0u64..40).prop_map(|n| format!("{n:x}\r\n").into_bytes()),
            (0usize..600).prop_map(|n| {
                let mut l = b"X-Long: ".to_vec();
                l.resize(8 + n, b'a');
                l.extend_from_slice(b"\r\n");
                l
            }),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|ps| ps.concat())
    }

    proptest! {
        /// However the bytes are split into reads, the scanner reaches the same
        /// state and the same verdict as when it gets them whole, and after
        /// every read its verdict is the one a byte-at-a-time scan has at that
        /// offset (so the mark is set by the read that completes the head).
        #[test]
        fn chunking_never_changes_the_verdict(
            data in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..24),
        ) {
            let (whole, _, whole_state) = feed_cut(&data, &[]);
            let (verdicts, ends, state) = feed_cut(&data, &cuts);
            let all: Vec<usize> = (0..=data.len()).collect();
            let (bytewise, _, byte_state) = feed_cut(&data, &all);
            prop_assert_eq!(whole.last(), verdicts.last());
            prop_assert_eq!(&state, &whole_state);
            prop_assert_eq!(&byte_state, &whole_state);
            for (v, end) in verdicts.iter().zip(&ends) {
                // `ends` of the byte-wise feed are 0..=len, deduplicated.
                prop_assert_eq!(*v, bytewise[*end], "after the read ending at {}", end);
            }
        }
    }

    #[test]
    fn stops_on_http2_and_stays_bounded() {
        let mut s = Scanner::default();
        assert!(!s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(matches!(s.state, State::Off));
        let mut s = Scanner::default();
        s.feed(b"GET / HTTP/1.1\r\nX-Long: ");
        s.feed(&vec![b'a'; 1 << 20]);
        match &s.state {
            State::Head(h) => assert!(h.line.buf.len() <= LINE_KEEP),
            other => panic!("{other:?}"),
        }
    }
}
