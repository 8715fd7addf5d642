//! The `echo` app: every text or binary message comes back as it was sent
//! (fragmented messages reassembled first). The codec (yawc) answers pings,
//! completes the close handshake, and closes with 1002 on protocol errors, 1007
//! on invalid UTF-8 and 1009 over `max_message_size` (checked against frame
//! headers before the payload is read, so a claimed 2^62 bytes allocates nothing).
//! Optional server pings and an idle timeout keep dead peers from lingering.

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use yawc::close::CloseCode;
use yawc::frame::{Frame, OpCode};
use yawc::{DeflateOptions, Options, WebSocket};

use crate::config::EchoConfig;
use crate::gateway::Gateway;
use crate::limits::ConnSlot;
use crate::proxy::error::{empty, ProxyError};
use crate::Body;

/// yawc options for an app with these limits.
pub fn codec_options(max_message: u64, compression: bool) -> Options {
    let max = usize::try_from(max_message).unwrap_or(usize::MAX);
    // yawc's limits are exclusive; ours are inclusive.
    let opts = Options::default()
        .with_limits(max.saturating_add(1), max.saturating_add(1))
        .with_utf8()
        .with_no_delay();
    if compression {
        opts.with_compression_level(yawc::CompressionLevel::fast())
    } else {
        Options {
            compression: None::<DeflateOptions>,
            ..opts
        }
    }
}

pub fn accept(
    gw: &Arc<Gateway>,
    cfg: &EchoConfig,
    mut req: Request<Incoming>,
    slot: Arc<ConnSlot>,
) -> Result<Response<Body>, ProxyError> {
    let opts = codec_options(cfg.max_message_size, cfg.compression);
    let (resp, fut) = WebSocket::upgrade_with_options(&mut req, opts)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let cfg = cfg.clone();
    let stop = gw.shutdown.token.clone();
    gw.shutdown
        .sessions
        .spawn(crate::server::listener::catch_panics(async move {
            let _slot = slot;
            match fut.await {
                Ok(ws) => run(ws, &cfg, stop).await,
                Err(e) => tracing::debug!(error = %e, "echo upgrade failed"),
            }
        }));
    Ok(resp.map(|_| empty()))
}

async fn run<S>(mut ws: WebSocket<S>, cfg: &EchoConfig, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ping_every = if cfg.ping_interval.is_zero() {
        Duration::from_secs(3600 * 24)
    } else {
        cfg.ping_interval
    };
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_seen = tokio::time::Instant::now();
    loop {
        let idle_deadline = last_seen + cfg.idle_timeout;
        tokio::select! {
            frame = ws.next_frame() => {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        // The connection is failed: no close handshake follows.
                        fail(&mut ws, &e).await;
                        let _ = ws.close().await;
                        return;
                    }
                };
                last_seen = tokio::time::Instant::now();
                match frame.opcode() {
                    OpCode::Close => break,
                    OpCode::Text | OpCode::Binary => {
                        let sent = ws.send(frame).await;
                        if sent.is_err() {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            _ = ping.tick(), if !cfg.ping_interval.is_zero() => {
                if ws.send(Frame::ping(bytes::Bytes::new())).await.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                let _ = ws.send(Frame::close(CloseCode::Away, "idle timeout")).await;
                break;
            }
            _ = stop.cancelled() => {
                let _ = ws.send(Frame::close(CloseCode::Away, "server shutting down")).await;
                break;
            }
        }
    }
    finish(&mut ws).await;
}

/// Fails the connection after a read error with the close code RFC 6455 asks
/// for. Errors found by yawc's codec already queued a close frame (1002, 1009,
/// 1003 for reserved opcodes) and closed its read side: one more read flushes it
/// and reports the connection closed. Errors found after the codec (invalid UTF-8,
/// fragment assembly) did not, so the close is sent here.
pub async fn fail<S>(ws: &mut WebSocket<S>, err: &yawc::WebSocketError)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use yawc::WebSocketError as E;
    if matches!(err, E::ConnectionClosed) || err.is_io_error() {
        return;
    }
    if let Ok(Err(E::ConnectionClosed)) =
        tokio::time::timeout(Duration::from_millis(50), ws.next_frame()).await
    {
        return;
    }
    let code = match err {
        E::InvalidUTF8 => CloseCode::Invalid,
        E::FrameTooLarge => CloseCode::Size,
        _ => CloseCode::Protocol,
    };
    let _ = ws.send(Frame::close(code, err.to_string())).await;
}

/// Ends a session cleanly. yawc queues its close frames (the echo of a client's
/// close, or 1002/1007/1009 after a protocol error) and writes them on the next
/// read, so keep reading until it reports the connection closed, bounded in time.
pub async fn finish<S>(ws: &mut WebSocket<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for _ in 0..16 {
        match tokio::time::timeout_at(deadline, ws.next_frame()).await {
            Ok(Err(yawc::WebSocketError::ConnectionClosed)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    let _ = ws.close().await;
}
