//! Keep-alive HTTP/1.1 connections (plain or TLS) to one upstream server, for
//! the HTTP proxy and the active health checks; for an HTTP/2 pool, the
//! server's one multiplexed connection (`h2`) instead.
//!
//! Each connection is a hyper `SendRequest` whose connection task runs on its
//! own. Idle ones wait on a stack (the most recently used is reused first: it is
//! the least likely to have been closed by the server's own keep-alive timer). A
//! request takes one off the stack or opens a new one; the response body hands
//! it back once the last byte has been read ([`Release`]). A connection whose
//! response was not read to the end is closed, never reused.
//!
//! This replaces hyper-util's legacy client: its pool keys, checkout race and
//! per-request channel cost more per proxied request than this whole module
//! (BENCHMARKS.md, optimisation log).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::connect::{ExchangeWatch, Watched};
use super::dial::{DialError, Dialer, Purpose};
use super::h2::{H2Conn, H2Failure};
use crate::body::Body;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use hyper_util::rt::TokioIo;

/// An idle connection is closed after this long unused (as nginx's
/// `keepalive_timeout` for upstreams, and hyper-util's pool before).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many idle connections are kept per server; one more is closed
/// after its response. Busy connections are not limited here: the gateway's
/// connection caps bound them.
pub const MAX_IDLE: usize = 512;

/// Why a request could not be exchanged with the server.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    /// The TLS handshake failed (certificate not trusted, name mismatch, ...).
    #[error("{0}")]
    Tls(#[source] DialError),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The exchange failed after the request was handed to the connection.
    #[error("{source}")]
    Exchange {
        #[source]
        source: hyper::Error,
        /// Had any byte of a response arrived? If not, the server never
        /// started answering, which is what makes a retry safe.
        response_started: bool,
    },
}

impl From<DialError> for SendError {
    fn from(e: DialError) -> Self {
        match e {
            DialError::Timeout => SendError::ConnectTimeout,
            DialError::Connect(e) => SendError::Connect(e),
            e => SendError::Tls(e),
        }
    }
}

impl SendError {
    /// Did nothing of a response arrive, so the request may go to another server?
    pub fn nothing_received(&self) -> bool {
        match self {
            SendError::Connect(_)
            | SendError::ConnectTimeout
            | SendError::Tls(_)
            | SendError::Handshake(_) => true,
            SendError::Exchange {
                response_started, ..
            } => !response_started,
        }
    }
}

/// One connection, used by one request at a time.
struct Conn {
    sender: http1::SendRequest<Body>,
    watch: ExchangeWatch,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The idle connections to one server.
pub struct ConnPool {
    dialer: Dialer,
    /// HTTP/2 pools: the one multiplexed connection (the idle stack stays
    /// empty).
    h2: Option<H2Conn>,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
    reaper_started: AtomicBool,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("addr", self.dialer.addr())
            .field("tls", &self.dialer.is_tls())
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl ConnPool {
    pub fn new(dialer: Dialer) -> Arc<Self> {
        Self::with_limits(dialer, IDLE_TIMEOUT, MAX_IDLE)
    }

    fn with_limits(dialer: Dialer, idle_timeout: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            h2: dialer.is_h2().then(H2Conn::default),
            dialer,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
            reaper_started: AtomicBool::new(false),
        })
    }

    /// How this server is reached (the WebSocket tunnel opens its own
    /// connections with it).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// Sends `req` (origin-form URI, `Host` set) and returns the response,
    /// whose body gives the connection back when it has been read to the end.
    ///
    /// A request that a reused connection refused before writing a byte of it
    /// (the server had closed the connection while it sat idle) goes out once
    /// more on a new connection: that is not a retry, the server never saw it.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<Release>, SendError> {
        // HTTP/2 upstreams (their own path), new HTTP/1.1 connections (the
        // pool's cold path) and the retry on a fresh one are boxed: their
        // futures would otherwise make every request's future larger, and it
        // is copied on its way into hyper.
        if let Some(h2) = &self.h2 {
            let resp = Box::pin(h2.send(&self.dialer, req))
                .await
                .map_err(|f| match f {
                    H2Failure::Dial(e) => SendError::from(e),
                    H2Failure::Handshake(e) => SendError::Handshake(e),
                    H2Failure::Exchange(source) => SendError::Exchange {
                        source,
                        response_started: true,
                    },
                })?;
            // Nothing to give back: the connection is shared, not checked out.
            return Ok(resp.map(|body| Release { body, home: None }));
        }
        let (mut conn, reused) = match self.take_idle().await {
            Some(c) => (c, true),
            None => (Box::pin(self.connect()).await?, false),
        };
        let result = match conn.sender.try_send_request(req).await {
            Err(mut e) if reused => match e.take_message() {
                Some(req) => Box::pin(self.resend(&mut conn, req)).await?,
                None => Err(e),
            },
            r => r,
        };
        match result {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let release = Release {
                    body,
                    home: Some((conn, self.clone())),
                };
                Ok(Response::from_parts(parts, release))
            }
            Err(e) => Err(SendError::Exchange {
                response_started: conn.watch.response_started(),
                source: e.into_error(),
            }),
        }
    }

    /// The most recently used idle connection that is still open and ready.
    async fn take_idle(&self) -> Option<Conn> {
        loop {
            let Idle { mut conn, since } = self.lock().pop()?;
            if conn.sender.is_closed() || since.elapsed() >= self.idle_timeout {
                continue;
            }
            if conn.sender.is_ready() {
                return Some(conn);
            }
            // Given back as its last response ended, before its connection
            // task noticed; it is ready as soon as that task runs, unless the
            // server closed it.
            if conn.sender.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    /// Sends `req` again on a new connection (a pooled one was closed before
    /// it took the request), which replaces `conn`.
    async fn resend(
        &self,
        conn: &mut Conn,
        req: Request<Body>,
    ) -> Result<Result<Response<Incoming>, TrySendError<Request<Body>>>, SendError> {
        *conn = self.connect().await?;
        Ok(conn.sender.try_send_request(req).await)
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let stream = self.dialer.dial(Purpose::Http).await?;
        let watch = ExchangeWatch::default();
        let io = TokioIo::new(Watched::new(stream, watch.clone()));
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Handshake)?;
        let addr = self.dialer.addr().clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server = %addr, error = %e, "upstream connection ended with error");
            }
        });
        Ok(Conn { sender, watch })
    }

    fn put(self: &Arc<Self>, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        {
            let mut idle = self.lock();
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        if !self.reaper_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes connections idle for the idle timeout (and forgets closed ones)
/// while the pool lives; a pool dropped by a reload ends it.
async fn reap(pool: Weak<ConnPool>) {
    let period = match pool.upgrade() {
        Some(p) => p.idle_timeout / 4,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let timeout = pool.idle_timeout;
        pool.lock()
            .retain(|i| !i.conn.sender.is_closed() && i.since.elapsed() < timeout);
    }
}

/// A response body from a pooled connection: hands the connection back to its
/// pool once the body has been read to its end (or, for a response without
/// one, when dropped). Dropped before its end, the connection closes with it.
pub struct Release {
    body: Incoming,
    home: Option<(Conn, Arc<ConnPool>)>,
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Release")
            .field("pooled", &self.home.is_some())
            .finish()
    }
}

impl Release {
    fn release(&mut self) {
        if let Some((conn, pool)) = self.home.take() {
            pool.put(conn);
        }
    }
}

impl http_body::Body for Release {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = std::task::ready!(std::pin::Pin::new(&mut self.body).poll_frame(cx));
        match &r {
            None => self.release(),
            Some(Ok(_)) if self.body.is_end_stream() => self.release(),
            Some(Err(_)) => self.home = None,
            Some(Ok(_)) => {}
        }
        std::task::Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests;
