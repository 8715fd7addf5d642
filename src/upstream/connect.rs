//! The connector of a pool's HTTP client: hyper-util's `HttpConnector` with each
//! connection wrapped so the proxy can tell, after a failed request, whether any
//! byte of a response had arrived. hyper reports "connection closed before the
//! message completed" alike for a silent close and for half a response head, but
//! the retry rule (spec §2 `retries`) allows a retry only in the first case.
//!
//! Every connection carries an [`ExchangeWatch`] (handed to hyper-util as
//! connection "extra" data, which it attaches to its errors): a write starts an
//! exchange and clears the flag, any byte read sets it. HTTP/1.1 exchanges on a
//! connection are sequential, so after a failure the flag says whether the server
//! had started answering the request that failed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Shared between a connection and the errors of requests sent over it.
#[derive(Debug, Clone, Default)]
pub struct ExchangeWatch(Arc<AtomicBool>);

impl ExchangeWatch {
    /// Had any response byte arrived since the request was written?
    pub fn response_started(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Could a request that failed with `e` be sent again without the server having
/// started to answer it? True for connect errors and for failures on a
/// connection that read nothing since the request was written; false when in
/// doubt.
pub fn nothing_received(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    let Some(info) = e.connect_info() else {
        return false;
    };
    let mut ext = http::Extensions::new();
    info.get_extras(&mut ext);
    ext.get::<ExchangeWatch>()
        .is_some_and(|w| !w.response_started())
}

/// A TCP stream that keeps its connection's [`ExchangeWatch`] up to date.
#[derive(Debug)]
pub struct Watched {
    inner: TcpStream,
    watch: ExchangeWatch,
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

impl Connection for Watched {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.watch.clone())
    }
}

/// `HttpConnector` producing [`Watched`] connections.
#[derive(Debug, Clone)]
pub struct WatchedConnector {
    inner: HttpConnector,
}

impl WatchedConnector {
    pub fn new(inner: HttpConnector) -> Self {
        Self { inner }
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<Watched>, crate::BoxError>> + Send>>;

impl tower_service::Service<Uri> for WatchedConnector {
    type Response = TokioIo<Watched>;
    type Error = crate::BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = tower_service::Service::<Uri>::call(&mut self.inner, dst);
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            Ok(TokioIo::new(Watched {
                inner: tcp,
                watch: ExchangeWatch::default(),
            }))
        })
    }
}
