//! The gateway as the WebSocket client of an upstream server: writes the
//! HTTP/1.1 upgrade request on a fresh connection (TCP, or TLS for a `wss`
//! upstream), reads the response head
//! (httparse, the parser under hyper) and requires a `101` with the right
//! `Sec-WebSocket-Accept`. The stream comes back as it is, with any bytes the
//! server sent after its head, for the splice. Another final answer (401,
//! 404...) comes back with the stream too, for the client to hear
//! ([`super::ws_refused`]).
//!
//! Not a hyper client connection: one costs a spawned connection task, a
//! request channel and the upgrade hand-off for a single exchange, which
//! measured about a fifth of the gateway's work per new WebSocket (S5).

use std::io;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream::dial::UpStream;
/// Interim answers skipped before the final one, as by the HTTP proxy.
use crate::upstream::h1::MAX_INTERIM;

/// The largest response head accepted from an upstream (as hyper's default
/// client limit is far larger, but a 101 carries a handful of headers).
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// Why the upstream handshake failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamHandshakeError {
    #[error("{0}")]
    Io(String),
    #[error("connection closed before the response head")]
    Closed,
    #[error("invalid response head: {0}")]
    Invalid(String),
    #[error("response head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("answered {0} instead of 101")]
    Status(String),
    #[error("more than {MAX_INTERIM} interim (1xx) answers")]
    TooManyInterim,
    #[error("missing or wrong Sec-WebSocket-Accept")]
    Accept,
}

impl UpstreamHandshakeError {
    /// Failed on the wire (502 "upstream failed") rather than by what the
    /// server answered (502 "bad upstream handshake").
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Closed)
    }
}

/// The request head to send, written field by field: `GET target HTTP/1.1`,
/// then the fields, which must carry `Host` and the upgrade set.
pub struct RequestHead(Vec<u8>);

impl RequestHead {
    pub fn new(target: &str) -> Self {
        let mut out = Vec::with_capacity(512 + target.len());
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        Self(out)
    }

    pub fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        let out = &mut self.0;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}

/// What the client's 101 repeats of the upstream's: the chosen subprotocol
/// and extensions, and any cookies, in the upstream's order.
pub type Relayed = Vec<(HeaderName, HeaderValue)>;

/// The fields [`Relayed`] keeps.
const RELAYED: [HeaderName; 3] = [
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::SET_COOKIE,
];

/// How the server answered the upgrade.
pub enum Answer {
    /// A `101` with the right accept value: the fields to relay and the
    /// stream, which replays what the server sent after its head.
    Upgraded(Relayed, Rewind),
    /// A final answer other than `101`: the stream and what was read of it,
    /// a complete head at its start.
    Refused(UpStream, Vec<u8>),
}

/// Sends `head` and reads the answer; `expected_accept` is the accept value
/// a `101` must carry.
pub async fn handshake(
    mut stream: UpStream,
    head: &[u8],
    expected_accept: &str,
) -> Result<Answer, UpstreamHandshakeError> {
    let io = |e: io::Error| UpstreamHandshakeError::Io(e.to_string());
    stream.write_all(head).await.map_err(io)?;
    let mut buf = Vec::with_capacity(1024);
    let mut interim = 0;
    loop {
        match parse_head(&buf, expected_accept)? {
            Some(Parsed::Upgraded(relayed, len)) => {
                let rest = Bytes::copy_from_slice(&buf[len..]);
                return Ok(Answer::Upgraded(relayed, Rewind::new(rest, stream)));
            }
            Some(Parsed::Refused) => return Ok(Answer::Refused(stream, buf)),
            Some(Parsed::Interim(len)) => {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(UpstreamHandshakeError::TooManyInterim);
                }
                buf.drain(..len);
                continue;
            }
            None => {}
        }
        if buf.len() >= MAX_HEAD {
            return Err(UpstreamHandshakeError::TooLarge);
        }
        buf.reserve(1024.min(MAX_HEAD - buf.len()));
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err(UpstreamHandshakeError::Closed);
        }
    }
}

/// A complete response head, as the handshake takes it.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A 101 with the right accept value: what it relays, and its length.
    Upgraded(Relayed, usize),
    /// A final status (2xx to 5xx): the server refused, and said so.
    Refused,
    /// An interim answer (`100`, `103`) of this length, to skip.
    Interim(usize),
}

/// Parses a complete response head at the start of `buf`: `None` while it is
/// incomplete. A 101's fields are read in place, not copied into a map:
/// nothing else of them is used.
pub fn parse_head(
    buf: &[u8],
    expected_accept: &str,
) -> Result<Option<Parsed>, UpstreamHandshakeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(UpstreamHandshakeError::Invalid(e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    match code {
        101 => {}
        100..=199 => return Ok(Some(Parsed::Interim(len))),
        200..=599 => return Ok(Some(Parsed::Refused)),
        // 600 and above are no HTTP status (the `http` crate takes them).
        _ => return Err(UpstreamHandshakeError::Status(code.to_string())),
    }
    let mut accepted = false;
    let mut relayed = Relayed::new();
    for h in resp.headers.iter() {
        if h.name
            .eq_ignore_ascii_case(header::SEC_WEBSOCKET_ACCEPT.as_str())
        {
            // Repeated, the first counts.
            if !accepted && h.value != expected_accept.as_bytes() {
                return Err(UpstreamHandshakeError::Accept);
            }
            accepted = true;
        } else if let Some(name) = RELAYED
            .iter()
            .find(|n| h.name.eq_ignore_ascii_case(n.as_str()))
        {
            let value = HeaderValue::from_bytes(h.value)
                .map_err(|e| UpstreamHandshakeError::Invalid(e.to_string()))?;
            relayed.push((name.clone(), value));
        }
    }
    if !accepted {
        return Err(UpstreamHandshakeError::Accept);
    }
    Ok(Some(Parsed::Upgraded(relayed, len)))
}

/// Why the upstream's 101 chose what the client did not offer (RFC 6455
/// §4.1: a client fails such a connection, so the client would abort the
/// session the 101 opened): a subprotocol outside `protocols`, more than
/// one, or an extension whose name the client's `Sec-WebSocket-Extensions`
/// fields (in `request`) do not offer. `None` when it chose within the
/// offer.
#[inline(never)]
pub fn unoffered(
    relayed: &Relayed,
    protocols: &[String],
    request: &http::HeaderMap,
) -> Option<&'static str> {
    let mut chosen = 0;
    for (name, value) in relayed {
        if *name == header::SEC_WEBSOCKET_PROTOCOL {
            chosen += 1;
            let v = value.to_str().unwrap_or_default().trim();
            if chosen > 1 || !protocols.iter().any(|p| p == v) {
                return Some("it chose a subprotocol the client did not offer");
            }
        } else if *name == header::SEC_WEBSOCKET_EXTENSIONS {
            let offered = |ext: &str| {
                request
                    .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                    .iter()
                    .flat_map(|v| v.to_str().unwrap_or_default().split(','))
                    .any(|o| extension_name(o).eq_ignore_ascii_case(ext))
            };
            let all_offered = value
                .to_str()
                .unwrap_or_default()
                .split(',')
                .map(extension_name)
                .all(|e| e.is_empty() || offered(e));
            if !all_offered {
                return Some("it chose an extension the client did not offer");
            }
        }
    }
    None
}

/// `permessage-deflate` of `permessage-deflate; client_max_window_bits`.
fn extension_name(ext: &str) -> &str {
    ext.split(';').next().unwrap_or_default().trim()
}

/// The upstream stream after its handshake: first the bytes that arrived
/// with the response head (usually none), then the socket.
pub type Rewind = crate::rewind::Rewind<UpStream>;

#[cfg(test)]
mod tests {
    use super::*;

    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn a_101_with_the_right_accept_passes_and_keeps_what_follows() {
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSet-Cookie: a=1\r\nSec-WebSocket-Accept: {ACCEPT}\r\nX-Other: 1\r\nSec-WebSocket-Protocol: chat\r\nset-cookie: b=2\r\n\r\n"
        );
        let mut buf = head.clone().into_bytes();
        buf.extend_from_slice(b"\x81\x02hi");
        let Ok(Some(Parsed::Upgraded(relayed, len))) = parse_head(&buf, ACCEPT) else {
            panic!("not upgraded");
        };
        assert_eq!(len, head.len());
        let v = HeaderValue::from_static;
        let want = vec![
            (header::SET_COOKIE, v("a=1")),
            (header::SEC_WEBSOCKET_PROTOCOL, v("chat")),
            (header::SET_COOKIE, v("b=2")),
        ];
        assert_eq!(relayed, want);
        for cut in 0..head.len() {
            assert_eq!(parse_head(&buf[..cut], ACCEPT), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn other_answers_are_refused_with_a_reason() {
        let refused = parse_head(b"HTTP/1.1 404 Not Found\r\n\r\n", ACCEPT);
        assert_eq!(refused, Ok(Some(Parsed::Refused)));
        // An interim answer is no refusal, and no upgrade: skipped.
        let early = b"HTTP/1.1 103 Early Hints\r\n\r\n";
        assert_eq!(
            parse_head(early, ACCEPT),
            Ok(Some(Parsed::Interim(early.len())))
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 600 Odd\r\n\r\n", ACCEPT),
            Err(UpstreamHandshakeError::Status("600".into()))
        );
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n";
        assert_eq!(
            parse_head(wrong.as_bytes(), ACCEPT),
            Err(UpstreamHandshakeError::Accept)
        );
        let missing = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert_eq!(
            parse_head(missing.as_bytes(), ACCEPT),
            Err(UpstreamHandshakeError::Accept)
        );
        assert!(matches!(
            parse_head(b"HTTP/1.1 abc\r\n\r\n", ACCEPT),
            Err(UpstreamHandshakeError::Invalid(_))
        ));
    }

    #[test]
    fn request_head_is_http11_with_every_field() {
        let mut head = RequestHead::new("/p?q");
        head.field(&http::header::HOST, &HeaderValue::from_static("a"));
        let two = HeaderName::from_static("x-two");
        head.field(&two, &HeaderValue::from_static("1"));
        head.field(&two, &HeaderValue::from_static("2"));
        let head = String::from_utf8(head.finish()).unwrap();
        assert_eq!(
            head,
            "GET /p?q HTTP/1.1\r\nhost: a\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn handshake_over_a_socket_replays_early_bytes_and_limits_the_head() {
        use tokio::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            let mut resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
            )
            .into_bytes();
            resp.extend_from_slice(b"\x81\x02hi");
            // Two writes: the head may arrive in more than one read.
            s.set_nodelay(true).unwrap();
            s.write_all(&resp[..10]).await.unwrap();
            s.write_all(&resp[10..]).await.unwrap();
            let (mut s2, _) = l.accept().await.unwrap();
            let _ = s2.read(&mut b).await;
            let mut big = b"HTTP/1.1 101 OK\r\nx-pad: ".to_vec();
            big.resize(MAX_HEAD + 10, b'a');
            let _ = s2.write_all(&big).await;
        });
        let tcp = UpStream::Plain(TcpStream::connect(addr).await.unwrap());
        let Ok(Answer::Upgraded(_, mut up)) =
            handshake(tcp, b"GET / HTTP/1.1\r\n\r\n", ACCEPT).await
        else {
            panic!("not upgraded");
        };
        let mut first = [0u8; 4];
        up.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"\x81\x02hi");
        let tcp = UpStream::Plain(TcpStream::connect(addr).await.unwrap());
        let e = handshake(tcp, b"GET / HTTP/1.1\r\n\r\n", ACCEPT).await;
        assert!(matches!(e, Err(UpstreamHandshakeError::TooLarge)));
    }
}

#[cfg(test)]
mod choice_tests {
    use super::*;

    fn relayed(fields: &[(HeaderName, &'static str)]) -> Relayed {
        fields
            .iter()
            .map(|(n, v)| (n.clone(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn only_offered_choices_pass() {
        let protocols = vec!["chat.v1".to_string(), "chat.v2".to_string()];
        let mut offer = http::HeaderMap::new();
        offer.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; client_max_window_bits, x-other"),
        );
        let check = |r: &Relayed| unoffered(r, &protocols, &offer);
        let p = header::SEC_WEBSOCKET_PROTOCOL;
        let e = header::SEC_WEBSOCKET_EXTENSIONS;
        assert_eq!(check(&relayed(&[])), None);
        assert_eq!(check(&relayed(&[(p.clone(), "chat.v2")])), None);
        assert!(check(&relayed(&[(p.clone(), "zzz")])).is_some());
        assert!(check(&relayed(&[(p.clone(), "chat.v1"), (p.clone(), "chat.v2")])).is_some());
        assert_eq!(
            check(&relayed(&[(
                e.clone(),
                "permessage-deflate; server_no_context_takeover"
            )])),
            None
        );
        assert!(check(&relayed(&[(e.clone(), "x-webkit-deflate-frame")])).is_some());
        let none = http::HeaderMap::new();
        assert!(unoffered(&relayed(&[(e, "permessage-deflate")]), &[], &none).is_some());
        assert!(unoffered(&relayed(&[(p, "chat.v1")]), &[], &none).is_some());
    }
}
