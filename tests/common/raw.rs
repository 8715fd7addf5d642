//! Raw bytes over TCP: requests written by hand, answers read until the peer
//! closes or a deadline passes (and which of the two happened), WebSocket
//! handshakes and frames without a client library.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::WAIT;

/// How a raw read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed the connection (EOF or reset).
    Closed,
    /// The deadline passed with the connection still open.
    TimedOut,
}

/// What came back on a raw connection, and how the read ended.
#[derive(Debug, Clone)]
pub struct Raw {
    pub bytes: Vec<u8>,
    pub end: End,
}

impl Raw {
    /// The bytes as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The answer as text; fails when nothing came back (the gateway hung,
    /// or closed without a word).
    pub fn answer(&self) -> String {
        assert!(
            !self.bytes.is_empty(),
            "no answer ({:?}): the gateway {}",
            self.end,
            match self.end {
                End::Closed => "closed without answering",
                End::TimedOut => "did not answer in time",
            }
        );
        self.text()
    }

    pub fn closed(&self) -> bool {
        self.end == End::Closed
    }

    /// The first line of the answer, or "" when the gateway closed without
    /// one; fails when it neither answered nor closed in time.
    pub fn status_line(&self) -> String {
        assert!(
            !self.bytes.is_empty() || self.closed(),
            "neither an answer nor a close in time: the gateway hung"
        );
        self.text().lines().next().unwrap_or("").to_string()
    }
}

/// Connects, writes `bytes`, and reads until the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Raw {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading everything: that is an answer too.
    let _ = s.write_all(bytes).await;
    read_to_close(&mut s, wait).await
}

/// Reads until EOF, an error or `limit`.
pub async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Raw {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => {
                return Raw {
                    bytes,
                    end: End::TimedOut,
                }
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Raw {
                    bytes,
                    end: End::Closed,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads an HTTP head up to and including the blank line (within [`WAIT`]).
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    let deadline = Instant::now() + WAIT;
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout_at(deadline, s.read_exact(&mut b))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no complete head in time: {:?}",
                    String::from_utf8_lossy(&head)
                )
            })
            .expect("head");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

// ---- WebSocket ------------------------------------------------------------------

/// The headers of a valid WebSocket handshake (the RFC 6455 sample key).
pub const WS_HEADERS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// The `Sec-WebSocket-Accept` for [`WS_HEADERS`]' key.
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A client mask for raw frames.
pub const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

/// `GET path` with `Host: localhost` and the `extra` header lines.
pub fn handshake(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n")
}

/// A valid WebSocket handshake for `path`.
pub fn ws_request(path: &str) -> String {
    handshake(path, WS_HEADERS)
}

/// A raw connection upgraded to a WebSocket at `path` (asserts the 101).
pub async fn open_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(ws_request(path).as_bytes())
        .await
        .expect("write handshake");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// A raw WebSocket frame, masked when `mask` is given (client → server frames must be).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(k) = mask {
        f.extend_from_slice(&k);
    }
    f.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask.map_or(0, |k| k[i % 4])),
    );
    f
}

/// Reads one frame within [`WAIT`]: (fin, opcode, unmasked payload, was masked).
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> (bool, u8, Vec<u8>, bool) {
    tokio::time::timeout(WAIT, async {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.expect("frame");
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).await.expect("len");
                u64::from(u16::from_be_bytes(l))
            }
            127 => {
                let mut l = [0u8; 8];
                s.read_exact(&mut l).await.expect("len");
                u64::from_be_bytes(l)
            }
            n => u64::from(n),
        };
        let masked = h[1] & 0x80 != 0;
        let mut key = [0u8; 4];
        if masked {
            s.read_exact(&mut key).await.expect("mask");
        }
        let mut p = vec![0u8; len as usize];
        s.read_exact(&mut p).await.expect("payload");
        if masked {
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        (h[0] & 0x80 != 0, h[0] & 0x0f, p, masked)
    })
    .await
    .expect("frame in time")
}

/// Reads one server frame (asserting it is unmasked): (fin, opcode, payload).
pub async fn read_server_frame<S: AsyncRead + Unpin>(s: &mut S) -> (bool, u8, Vec<u8>) {
    let (fin, op, p, masked) = read_frame(s).await;
    assert!(!masked, "server frames are never masked");
    (fin, op, p)
}

/// Reads frames until a close; returns its code and whether it was masked.
pub async fn read_close<S: AsyncRead + Unpin>(s: &mut S) -> (u16, bool) {
    loop {
        let (_, op, p, masked) = read_frame(s).await;
        if op == 8 {
            return (u16::from_be_bytes([p[0], p[1]]), masked);
        }
    }
}

/// The next server frame is a close with `code`.
pub async fn expect_close<S: AsyncRead + Unpin>(s: &mut S, code: u16) {
    let (_, op, p) = read_server_frame(s).await;
    assert_eq!(op, 8, "expected a close frame");
    assert_eq!(
        u16::from_be_bytes([p[0], p[1]]),
        code,
        "close reason: {:?}",
        String::from_utf8_lossy(&p[2..])
    );
}

/// The close code of the first close frame in `bytes` (server frames are unmasked).
pub fn close_code(mut bytes: &[u8]) -> Option<u16> {
    while bytes.len() >= 2 {
        let (op, len7) = (bytes[0] & 0x0f, usize::from(bytes[1] & 0x7f));
        let (len, hdr) = match len7 {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => return None,
            n => (n, 2),
        };
        if bytes.len() < hdr + len {
            return None;
        }
        if op == 8 {
            return (len >= 2).then(|| u16::from_be_bytes([bytes[hdr], bytes[hdr + 1]]));
        }
        bytes = &bytes[hdr + len..];
    }
    None
}
