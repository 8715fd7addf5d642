//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary) on listeners
//! with `proxy_protocol = true`: each connection starts with a header naming
//! the real client, written by a load balancer in front. It is read from the
//! raw TCP stream before TLS, so it works in front of TLS and plain listeners
//! alike.
//!
//! The listener checks the peer against `trusted_proxies` before reading a
//! byte; this module only parses. [`Decoder`] is incremental (fed whatever
//! the socket gave, it answers "need more", a header and where it ended, or
//! an error) so the reader never waits for bytes that will not come and
//! never loses the bytes that follow the header: they are served first by
//! [`Prefixed`], the stream every connection is handed on as.
//!
//! Parsing is `proxy_header`'s; this adds what it leaves lax or open: the
//! exact signature prefix (so garbage is refused at its first byte), a size
//! cap, and the rule that a datagram (UDP) address over a TCP stream is
//! malformed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use proxy_header::{ParseConfig, Protocol, ProxyHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The largest header accepted, v2 TLVs included. v1 lines are at most 107
/// bytes by the spec; v2 addresses take at most 232, and the TLVs load
/// balancers add (AWS, GCP: endpoint ids, TLS facts) stay far below this.
pub const MAX_HEADER: usize = 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// The connection is a client's, from this address.
    Client(SocketAddr),
    /// `PROXY UNKNOWN`, v2 `LOCAL` (the balancer's own health check) or an
    /// address family without an IP: the peer stays the client.
    Local,
}

impl Proxied {
    /// The client address: the header's, or `peer` when it names none.
    pub fn client_or(self, peer: SocketAddr) -> SocketAddr {
        match self {
            Proxied::Client(a) => a,
            Proxied::Local => peer,
        }
    }
}

/// Why a connection's PROXY header was refused; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("not a PROXY protocol header")]
    Malformed,
    #[error("PROXY header too long (v1: 107 bytes, v2: {MAX_HEADER})")]
    TooLong,
    #[error("PROXY header names a datagram (UDP) connection on a TCP stream")]
    NotStream,
    #[error("connection closed inside its PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// A finished header: what it says, and how many bytes of the input it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub proxied: Proxied,
    pub len: usize,
}

/// v1 lines end in CRLF within this many bytes (the spec's bound).
const V1_MAX: usize = 107;

/// Parses a header from the start of `buf`: `Ok(None)` when `buf` is a
/// proper beginning of one and more bytes are needed. Pure; the same answer
/// for the same bytes, so feeding more can only turn `None` into an answer.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
    let Some(len) = frame(buf)? else {
        return Ok(None);
    };
    let config = ParseConfig {
        // Nothing here reads TLVs; not copying them saves an allocation.
        include_tlvs: false,
        allow_v1: true,
        allow_v2: true,
    };
    // The parser sees exactly one framed header: anything it cannot take
    // from those bytes (it would ask for more) is malformed.
    let (h, used) = ProxyHeader::parse(&buf[..len], config).map_err(|_| HeaderError::Malformed)?;
    if used != len || !tlvs_fit(&buf[..len]) {
        return Err(HeaderError::Malformed);
    }
    let proxied = match h.proxied_address() {
        None => Proxied::Local,
        Some(a) if a.protocol == Protocol::Stream => Proxied::Client(a.source),
        Some(_) => return Err(HeaderError::NotStream),
    };
    Ok(Some(Header { proxied, len }))
}

/// The length of the header at the start of `buf`, once all of it is there.
/// Framing is done here, not left to the parser: the signature refuses
/// anything else at its first byte (a TLS ClientHello from a balancer that
/// sends no PROXY header, a scanner) instead of waiting, and a v2 header's
/// own length, not the parser's appetite, says where it ends (proxy_header
/// asks for address bytes past a too-short declared length).
fn frame(buf: &[u8]) -> Result<Option<usize>, HeaderError> {
    let sig = if buf.first() == Some(&b'P') {
        V1_PREFIX
    } else {
        V2_SIGNATURE
    };
    let n = buf.len().min(sig.len());
    if buf[..n] != sig[..n] {
        return Err(HeaderError::Malformed);
    }
    if sig == V1_PREFIX {
        return match buf.iter().take(V1_MAX).position(|&b| b == b'\n') {
            Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i + 1)),
            Some(_) => Err(HeaderError::Malformed),
            None if buf.len() >= V1_MAX => Err(HeaderError::TooLong),
            None => Ok(None),
        };
    }
    // Version 2, command LOCAL or PROXY: the only valid 13th byte.
    if buf.len() > 12 && !matches!(buf[12], 0x20 | 0x21) {
        return Err(HeaderError::Malformed);
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > MAX_HEADER {
        return Err(HeaderError::TooLong);
    }
    Ok((buf.len() >= len).then_some(len))
}

/// Whether a v2 PROXY header's TLVs tile the bytes after its addresses
/// exactly, as HAProxy checks: nothing here reads them, but a header whose
/// declared length disagrees with its contents came from no balancer, and
/// refusing it keeps what is accepted to what can be parsed. A v2 `LOCAL`
/// header's block is discarded unread (the spec), and so is an `UNSPEC` one,
/// whose addresses have no length to skip.
fn tlvs_fit(header: &[u8]) -> bool {
    if header.first() != Some(&b'\r') || header.get(12) != Some(&0x21) {
        return true;
    }
    let addresses = match header.get(13).map(|f| f >> 4) {
        Some(1) => 12,
        Some(2) => 36,
        Some(3) => 216,
        _ => return true,
    };
    let Some(mut rest) = header.get(16 + addresses..) else {
        return false;
    };
    while let [_, hi, lo, ..] = *rest {
        let Some(next) = rest.get(3 + usize::from(u16::from_be_bytes([hi, lo]))..) else {
            return false;
        };
        rest = next;
    }
    rest.is_empty()
}

/// Accumulates a connection's first bytes until they hold a whole header.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

/// A decoded header and the bytes that followed it in the same reads.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub proxied: Proxied,
    pub rest: Vec<u8>,
}

impl Decoder {
    /// Adds `bytes` (the next read) and tries again.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Decoded>, HeaderError> {
        self.buf.extend_from_slice(bytes);
        match parse(&self.buf)? {
            None => Ok(None),
            Some(h) => {
                let rest = self.buf.split_off(h.len);
                Ok(Some(Decoded {
                    proxied: h.proxied,
                    rest,
                }))
            }
        }
    }
}

/// Reads the PROXY header at the start of `io`. The caller bounds the time.
pub async fn read_header<S: AsyncRead + Unpin>(
    mut io: S,
) -> Result<(Proxied, Prefixed<S>), HeaderError> {
    let mut decoder = Decoder::default();
    // A trusted balancer sends the header in one segment (the spec asks it
    // to), so this is usually one read; the request that follows may come
    // along and is kept for the TLS or HTTP layer.
    let mut chunk = [0u8; 512];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        if let Some(d) = decoder.feed(&chunk[..n])? {
            return Ok((d.proxied, Prefixed::new(io, d.rest)));
        }
    }
}

/// A stream whose first bytes were already read: serves `prefix`, then the
/// stream. Writes go straight through (vectored ones included: hyper relies
/// on them).
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// A stream with nothing read ahead (listeners without PROXY protocol).
    pub fn plain(inner: S) -> Self {
        Self::new(inner, Vec::new())
    }

    /// The stream inside, once the bytes read past the header are served.
    pub fn drained(&self) -> Option<&S> {
        (self.pos >= self.prefix.len()).then_some(&self.inner)
    }

    /// The stream inside, to write to.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let left = &this.prefix[this.pos..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                // Freed once served: a long-lived connection keeps no copy.
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(cmd);
        h.push(fam);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut a = src.to_vec();
        a.extend_from_slice(&[10, 0, 0, 1]);
        a.extend_from_slice(&sport.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        v2(0x21, 0x11, &a)
    }

    fn whole(input: &[u8]) -> Result<Option<Decoded>, HeaderError> {
        Decoder::default().feed(input)
    }

    #[test]
    fn v1_headers() {
        let d = whole(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\nGET /").unwrap();
        let d = d.unwrap();
        assert_eq!(
            d.proxied,
            Proxied::Client("203.0.113.7:5555".parse().unwrap())
        );
        assert_eq!(d.rest, b"GET /");
        let d = whole(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n").unwrap();
        assert_eq!(
            d.unwrap().proxied,
            Proxied::Client("[2001:db8::7]:1".parse().unwrap())
        );
        let d = whole(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(d.proxied, Proxied::Local);
        let d = whole(b"PROXY UNKNOWN whatever 1 2\r\nX").unwrap().unwrap();
        assert_eq!((d.proxied, d.rest.as_slice()), (Proxied::Local, &b"X"[..]));
    }

    #[test]
    fn v2_headers() {
        let mut h = v2_tcp4([198, 51, 100, 4], 4000);
        h.extend_from_slice(b"\x16\x03\x01");
        let d = whole(&h).unwrap().unwrap();
        assert_eq!(
            d.proxied,
            Proxied::Client("198.51.100.4:4000".parse().unwrap())
        );
        assert_eq!(d.rest, b"\x16\x03\x01");
        let local = whole(&v2(0x20, 0x00, &[])).unwrap().unwrap();
        assert_eq!(local.proxied, Proxied::Local);
        // UDP over a TCP stream makes no sense.
        let mut a = vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        assert!(matches!(
            whole(&v2(0x21, 0x12, &a)),
            Err(HeaderError::NotStream)
        ));
        a.truncate(5);
        assert!(matches!(
            whole(&v2(0x21, 0x11, &a)),
            Err(HeaderError::Malformed)
        ));
    }

    #[test]
    fn v2_tlvs_must_fit_the_header() {
        let tcp4 = |tlvs: &[u8]| {
            let mut a = vec![198, 51, 100, 4, 10, 0, 0, 1, 0x0f, 0xa0, 1, 0xbb];
            a.extend_from_slice(tlvs);
            v2(0x21, 0x11, &a)
        };
        // An ALPN TLV and a NOOP with an empty value.
        let ok = tcp4(b"\x01\x00\x02h2\x04\x00\x00");
        let d = whole(&ok).unwrap().unwrap();
        assert_eq!(
            d.proxied,
            Proxied::Client("198.51.100.4:4000".parse().unwrap())
        );
        // A TLV running past the header, and a stray byte after the last one.
        for bad in [&b"\x01\x00\x09h2"[..], b"\x01\x00\x02h2\x04"] {
            assert!(
                matches!(whole(&tcp4(bad)), Err(HeaderError::Malformed)),
                "{bad:?}"
            );
        }
        // LOCAL: the block is discarded unread.
        let local = whole(&v2(0x20, 0x11, &[0; 13])).unwrap().unwrap();
        assert_eq!(local.proxied, Proxied::Local);
    }

    #[test]
    fn partial_input_asks_for_more() {
        let full = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n";
        for i in 0..full.len() {
            assert!(whole(&full[..i]).unwrap().is_none(), "prefix of {i} bytes");
        }
        let h = v2_tcp4([1, 2, 3, 4], 9);
        for i in 0..h.len() {
            assert!(whole(&h[..i]).unwrap().is_none(), "v2 prefix of {i} bytes");
        }
        let mut d = Decoder::default();
        for b in &h[..h.len() - 1] {
            assert!(d.feed(&[*b]).unwrap().is_none());
        }
        assert!(d.feed(&h[h.len() - 1..]).unwrap().is_some());
    }

    #[test]
    fn garbage_is_refused_at_once() {
        for bad in [
            &b"\x16\x03\x01"[..],
            b"GET / HTTP/1.1\r\n",
            b"PROXYTCP4",
            b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x31",
        ] {
            assert!(whole(bad).is_err(), "{bad:?} accepted");
        }
        // A v1 line that never ends.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(whole(&long).is_err());
        // A v2 header announcing more than the cap.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(whole(&big), Err(HeaderError::TooLong)));
    }

    /// The outcome of feeding `data` in reads cut at `cuts`: the header and
    /// every byte after it, the refusal, or still waiting.
    fn outcome(data: &[u8], cuts: &[usize]) -> Option<Result<Decoded, String>> {
        let mut d = Decoder::default();
        let mut at = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        ends.push(data.len());
        ends.sort_unstable();
        for end in ends {
            match d.feed(&data[at..end]) {
                Ok(None) => at = end,
                Ok(Some(mut done)) => {
                    done.rest.extend_from_slice(&data[end..]);
                    return Some(Ok(done));
                }
                Err(e) => return Some(Err(e.to_string())),
            }
        }
        None
    }

    proptest::proptest! {
        /// However the first bytes are split into reads, the outcome is the
        /// one of reading them whole (the fuzz target `proxy_header` does the
        /// same on arbitrary bytes; this runs with every `cargo test`).
        #[test]
        fn chunking_never_changes_the_outcome(
            kind in 0u8..8,
            src in proptest::prelude::any::<[u8; 4]>(),
            port in proptest::prelude::any::<u16>(),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            flip in proptest::option::of((0usize..64, proptest::prelude::any::<u8>())),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..8),
        ) {
            let ip = std::net::Ipv4Addr::from(src);
            let mut data = match kind {
                0 => format!("PROXY TCP4 {ip} 10.0.0.1 {port} 443\r\n").into_bytes(),
                1 => b"PROXY UNKNOWN\r\n".to_vec(),
                2 => v2_tcp4(src, port),
                3 => v2(0x20, 0x00, &[]),
                4 => format!("PROXY TCP6 ::ffff:{ip} ::1 {port} 1\r\n").into_bytes(),
                // Hostile but framed: the parser gets arbitrary bytes to read.
                5 => v2(0x20 | (src[0] & 1), src[1], &tail[..usize::from(src[2]).min(tail.len())]),
                6 => [b"PROXY ".as_slice(), &tail, b"\r\n"].concat(),
                _ => tail.clone(),
            };
            // Sometimes one byte is wrong: refusals must not depend on reads either.
            if let Some((i, b)) = flip {
                if let Some(x) = data.get_mut(i) {
                    *x = b;
                }
            }
            data.extend_from_slice(&tail);
            let whole = outcome(&data, &[]);
            proptest::prop_assert_eq!(&whole, &outcome(&data, &cuts));
            if flip.is_none() && kind < 5 {
                let d = whole.expect("complete").expect("valid");
                proptest::prop_assert_eq!(d.rest, tail);
            }
        }
    }

    #[tokio::test]
    async fn prefixed_serves_the_rest_first() {
        let (mut far, near) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut far, b"PROXY UNKNOWN\r\nhello")
            .await
            .unwrap();
        drop(far);
        let (p, mut s) = read_header(near).await.unwrap();
        assert_eq!(p, Proxied::Local);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello");
    }
}
