//! The byte splice between a client and an upstream WebSocket after both
//! handshakes: bytes are copied as they are in both directions until either side
//! closes, the session is idle for `ws_idle_timeout`, or the gateway drains (then
//! both TCP connections are closed: the byte-copy path does not know where frames
//! begin, so it cannot insert a close frame safely). Upstreams with `ws_inspect`
//! use the frame-aware splice in [`super::inspect`] instead.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Why a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    Closed,
    Idle,
    Drain,
    Error,
    /// Inspected only: a message over `ws_max_message_size`.
    TooBig,
    /// Inspected only: a side missed two keepalive pings.
    PeerDead,
    /// Inspected only: a side sent bytes that are not WebSocket frames.
    Protocol,
}

#[derive(Debug, Clone, Copy)]
pub struct SpliceStats {
    pub end: SpliceEnd,
    /// Client → upstream.
    pub bytes_in: u64,
    /// Upstream → client.
    pub bytes_out: u64,
    /// Messages (client → upstream, upstream → client): inspected splices only.
    pub messages: Option<(u64, u64)>,
}

/// Counts bytes read through it into a shared counter (the idle watchdog reads it).
struct Counted<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

/// Copies both ways until done. Buffers are 16 KiB per direction so large
/// messages move in few syscalls.
pub async fn splice<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    stop: CancellationToken,
) -> SpliceStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    let mut c = Counted {
        inner: client,
        read: bytes_in.clone(),
    };
    let mut u = Counted {
        inner: upstream,
        read: bytes_out.clone(),
    };
    let total = || bytes_in.load(Ordering::Relaxed) + bytes_out.load(Ordering::Relaxed);
    let watchdog = async {
        // Checks twice per period; a session is cut after between 1 and 1.5
        // periods without a byte either way.
        let step = (idle / 2).max(Duration::from_millis(10));
        let mut last = total();
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(step).await;
            let now = total();
            if now == last {
                quiet += step;
                if quiet >= idle {
                    return;
                }
            } else {
                quiet = Duration::ZERO;
                last = now;
            }
        }
    };
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, 16 * 1024, 16 * 1024) => {
            if r.is_ok() { SpliceEnd::Closed } else { SpliceEnd::Error }
        }
        _ = watchdog => SpliceEnd::Idle,
        _ = stop.cancelled() => SpliceEnd::Drain,
    };
    SpliceStats {
        end,
        bytes_in: bytes_in.load(Ordering::Relaxed),
        bytes_out: bytes_out.load(Ordering::Relaxed),
        messages: None,
    }
}
