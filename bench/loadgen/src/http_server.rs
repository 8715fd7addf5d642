//! `http-server`: the keep-alive HTTP/1.1 backend answering every request
//! head with the same 13-byte 200.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::frame::find;

/// Keep-alive HTTP/1.1 backend: one fixed 200 per request head (bodies ignored).
pub async fn serve_http(mut s: TcpStream) -> io::Result<()> {
    const RESP: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world\n";
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut pos = 0;
        out.clear();
        while let Some(p) = find(&buf[pos..], b"\r\n\r\n") {
            pos += p + 4;
            out.extend_from_slice(RESP);
        }
        buf.drain(..pos);
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
    }
}
