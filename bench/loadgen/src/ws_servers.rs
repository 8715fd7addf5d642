//! The WebSocket echo servers: `ws-server` (the minimal hand-written tokio
//! echo used as the proxy scenarios' upstream and `direct` in S2/S3), and the
//! S2/S3 comparison servers `fws-server` (fastwebsockets) and `tt-server`
//! (tokio-tungstenite, default config).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::frame::{find, parse_frame};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Minimal RFC 6455 echo: handshake, then every data frame back unmasked,
/// all frames of one read answered in one write.
pub async fn serve_ws_echo(mut s: TcpStream) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    if !ws_handshake(&mut s, &mut buf).await? {
        return Ok(());
    }
    // Idle connections keep only this small buffer; it grows on demand.
    buf.shrink_to(4096);
    let mut out = Vec::new();
    loop {
        let mut pos = 0;
        out.clear();
        while let Some((op, p0, fend, mask)) = parse_frame(&buf[pos..]) {
            let payload = &buf[pos + p0..pos + fend];
            let n = payload.len();
            let reply_op = if op == 9 { 10 } else { op };
            if op != 10 {
                out.push(0x80 | reply_op);
                if n < 126 {
                    out.push(n as u8);
                } else if n < 65536 {
                    out.push(126);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                } else {
                    out.push(127);
                    out.extend_from_slice(&(n as u64).to_be_bytes());
                }
                let m = mask.unwrap_or([0; 4]);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
            }
            pos += fend;
            if op == 8 {
                s.write_all(&out).await?;
                return Ok(());
            }
        }
        buf.drain(..pos);
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Reads the upgrade request into `buf` and answers 101; leaves in `buf` what
/// came after the request head. False if the peer closed before a full head.
async fn ws_handshake(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    use base64::Engine;
    use sha1::Digest;
    let end = loop {
        if s.read_buf(buf).await? == 0 {
            return Ok(false);
        }
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .ok_or_else(|| io::Error::other("no key"))?;
    let accept = base64::engine::general_purpose::STANDARD
        .encode(sha1::Sha1::digest(format!("{key}{WS_GUID}")));
    let resp =
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    s.write_all(resp.as_bytes()).await?;
    buf.drain(..end);
    Ok(true)
}

/// fastwebsockets echo, set up the way its README and `examples/echo_server.rs`
/// do: hyper 1 serves the HTTP/1.1 upgrade (`upgrade` feature), then a
/// `FragmentCollector` over the upgraded stream reads whole messages and sends
/// every Text/Binary one back with `write_frame`; pings are answered and Close
/// is echoed by the library (auto-pong, auto-close). writev stays at the
/// library's default (`set_writev(true)`, threshold 1024 bytes: payloads above
/// it go out in one vectored write with the header, smaller frames are copied
/// behind the header), so every frame is one write of its own.
pub async fn serve_fws_echo(s: TcpStream) -> io::Result<()> {
    let service = hyper::service::service_fn(
        |mut req: hyper::Request<hyper::body::Incoming>| async move {
            let (response, fut) = fastwebsockets::upgrade::upgrade(&mut req)?;
            tokio::spawn(async move {
                // Errors are peers going away (the load generator drops its
                // connections at the end of a run): nothing to report.
                let _ = fws_echo(fut).await;
            });
            Ok::<_, fastwebsockets::WebSocketError>(response)
        },
    );
    hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
        .with_upgrades()
        .await
        .map_err(io::Error::other)
}

async fn fws_echo(
    fut: fastwebsockets::upgrade::UpgradeFut,
) -> Result<(), fastwebsockets::WebSocketError> {
    use fastwebsockets::OpCode;
    let mut ws = fut.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

/// tokio-tungstenite echo with the default `WebSocketConfig` (`accept_async`):
/// every Text/Binary message is sent straight back (`send`: one write and
/// flush per message). tungstenite answers pings itself and queues the reply
/// to a Close, which is flushed before the connection ends.
pub async fn serve_tt_echo(s: TcpStream) -> io::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = tokio_tungstenite::accept_async(s)
        .await
        .map_err(io::Error::other)?;
    while let Some(msg) = ws.next().await {
        match msg.map_err(io::Error::other)? {
            m @ (Message::Text(_) | Message::Binary(_)) => {
                ws.send(m).await.map_err(io::Error::other)?
            }
            Message::Close(_) => {
                // tungstenite queued the Close reply; sending another Close
                // would fail (SendAfterClosing), so just flush it out.
                let _ = ws.flush().await;
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
