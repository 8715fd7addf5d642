//! Opening a connection to one upstream server: TCP (no Nagle), then the TLS
//! handshake when its pool has `tls`, both within `connect_timeout`. The
//! result is an [`UpStream`], plain or TLS, that the HTTP connection pool,
//! the WebSocket tunnel and the health probes all use.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::tls::UpstreamTls;

/// Why a connection to a server could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("TLS handshake failed: {}", crate::tls_reason::describe(.0))]
    Tls(#[source] io::Error),
    #[error("no TLS server name for {0} (set tls_server_name)")]
    NoServerName(Arc<str>),
    #[error("the server did not agree to HTTP/2 (ALPN h2)")]
    NoH2,
}

/// Whether a failed connect is this process's or host's own shortage
/// (descriptors, buffers, memory, ephemeral ports), not the server's: it
/// must not count against the server's passive health, or one client that
/// uses up the gateway's descriptors would take every server down with it.
pub fn is_local_shortage(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM | Errno::ADDRNOTAVAIL)
    )
}

/// What a connection is for: its ALPN with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The pool's HTTP connections (`h2` for an HTTP/2 pool).
    Http,
    /// A WebSocket tunnel: always an HTTP/1.1 upgrade.
    WebSocket,
}

/// How to reach one server.
#[derive(Debug, Clone)]
pub struct Dialer {
    addr: Arc<str>,
    timeout: Duration,
    tls: Option<Arc<UpstreamTls>>,
    /// HTTP connections must negotiate `h2` (a TLS pool with `protocol = "h2"`).
    h2: bool,
}

impl Dialer {
    pub fn new(addr: Arc<str>, timeout: Duration, tls: Option<Arc<UpstreamTls>>) -> Self {
        Self {
            addr,
            timeout,
            tls,
            h2: false,
        }
    }

    /// HTTP connections of this server speak HTTP/2 (`h2` over TLS, or `h2c`).
    pub fn with_h2(mut self, h2: bool) -> Self {
        self.h2 = h2;
        self
    }

    pub fn is_h2(&self) -> bool {
        self.h2
    }

    pub fn addr(&self) -> &Arc<str> {
        &self.addr
    }

    /// `connect_timeout`: also how long an HTTP/2 connection's PING may go
    /// unanswered.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects, and with TLS completes the handshake (certificate verified).
    pub async fn dial(&self, purpose: Purpose) -> Result<UpStream, DialError> {
        match tokio::time::timeout(self.timeout, self.dial_inner(purpose)).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout),
        }
    }

    async fn dial_inner(&self, purpose: Purpose) -> Result<UpStream, DialError> {
        let tcp = TcpStream::connect(&*self.addr)
            .await
            .map_err(DialError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(UpStream::Plain(tcp));
        };
        let name = tls
            .server_name(&self.addr)
            .ok_or_else(|| DialError::NoServerName(self.addr.clone()))?;
        let ws = purpose == Purpose::WebSocket;
        // Boxed: the handshake's state (1.2 KB) would otherwise size every
        // dial's future, and with it every WebSocket tunnel's, plain or not.
        let s = Box::pin(tls.connector(ws).connect(name, tcp))
            .await
            .map_err(DialError::Tls)?;
        if self.h2 && !ws && s.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(DialError::NoH2);
        }
        Ok(UpStream::Tls(Box::new(s)))
    }
}

/// A connection to a server, plain or TLS.
#[derive(Debug)]
pub enum UpStream {
    Plain(TcpStream),
    /// Boxed: the TLS state is large and most upstreams are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpStream::Plain(s) => s.is_write_vectored(),
            UpStream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
