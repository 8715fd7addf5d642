//! Upstream HTTP connections that remember whether a response had started: the
//! proxy must tell, after a failed request, whether any byte of a response had
//! arrived. hyper reports "connection closed before the message completed" alike
//! for a silent close and for half a response head, but the retry rule (docs/load-balancing.md
//! `retries`) allows a retry only in the first case.
//!
//! Every connection carries an [`ExchangeWatch`], kept by its pool (the
//! `conns` module, which builds on this one): a write starts an exchange and
//! clears the flag, any byte read sets it. HTTP/1.1 exchanges on a connection
//! are sequential, so after a failure the flag says whether the server had
//! started answering the request that failed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::dial::UpStream;

/// Shared between a connection and the errors of requests sent over it.
#[derive(Debug, Clone, Default)]
pub struct ExchangeWatch(Arc<AtomicBool>);

impl ExchangeWatch {
    /// Had any response byte arrived since the request was written?
    pub fn response_started(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A connection (plain or TLS) that keeps its connection's [`ExchangeWatch`] up to date.
#[derive(Debug)]
pub struct Watched {
    inner: UpStream,
    watch: ExchangeWatch,
}

impl Watched {
    pub fn new(inner: UpStream, watch: ExchangeWatch) -> Self {
        Self { inner, watch }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watch.0.store(true, Ordering::Release);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.0.store(false, Ordering::Release);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.0.store(false, Ordering::Release);
        }
        r
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
