//! Keep-alive HTTP/1.1 connections (plain or TLS) to one upstream server, for
//! the HTTP proxy and the active health checks; for an HTTP/2 pool, the
//! server's one multiplexed connection (`h2`) instead.
//!
//! Each connection is an [`h1::Conn`], driven by the task of the request that
//! holds it (no connection task). Idle ones wait on a stack (the most recently
//! used is reused first: it is the least likely to have been closed by the
//! server's own keep-alive timer) and are checked for a close before reuse. A
//! request takes one off the stack or opens a new one; the response body hands
//! it back once the last byte has been read ([`Release`]). A connection whose
//! response was not read to the end is closed, never reused.
//!
//! This replaces hyper-util's legacy client and then hyper's own client
//! connection: their pool keys, checkout race, per-request channels and
//! connection tasks cost more per proxied request than this whole module
//! (BENCHMARKS.md, optimisation log).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::dial::{DialError, Dialer, Purpose};
use super::h1;
use super::h2::{H2Conn, H2Failure, StreamSlot};
use crate::body::Body;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;

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
        source: ExchangeError,
        /// Had any byte of a response arrived? If not, the server never
        /// started answering, which is what makes a retry safe.
        response_started: bool,
    },
}

/// What failed in an exchange (or while reading its response body).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    H1(#[from] h1::Error),
    #[error(transparent)]
    H2(#[from] hyper::Error),
    /// An HTTP/2 stream ended (a `RST_STREAM` or `GOAWAY` with `NO_ERROR`,
    /// which hyper reads as an end) before the bytes its `content-length`
    /// promised.
    #[error("the response body ended {0} bytes short of its content-length")]
    Short(u64),
}

fn h2_error(f: H2Failure) -> SendError {
    match f {
        H2Failure::Dial(e) => SendError::from(e),
        H2Failure::Handshake(e) => SendError::Handshake(e),
        H2Failure::Exchange(source) => SendError::Exchange {
            source: source.into(),
            response_started: true,
        },
        H2Failure::NotSent(source) => SendError::Exchange {
            source: source.into(),
            response_started: false,
        },
    }
}

fn exchange_error(f: h1::Failed) -> SendError {
    SendError::Exchange {
        source: f.error.into(),
        response_started: f.response_started,
    }
}

/// An HTTP/2 response, holding its stream's place: nothing else to give
/// back, the connection is shared, not checked out.
fn h2_response(resp: Response<hyper::body::Incoming>, slot: StreamSlot) -> Response<Release> {
    resp.map(|body| Release {
        body: Inner::H2(body, Some(slot)),
        home: None,
    })
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
    /// Did the connect fail for want of the gateway's own resources
    /// ([`is_local_shortage`](super::dial::is_local_shortage))? Then it says
    /// nothing about the server's health.
    pub fn is_local_shortage(&self) -> bool {
        matches!(self, SendError::Connect(e) if super::dial::is_local_shortage(e))
    }

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

struct Idle {
    conn: h1::Conn,
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
    /// Over HTTP/2, a request that a shared connection refused before it went
    /// out (the server had sent GOAWAY) goes out once more on a new
    /// connection: that is not a retry, the server never saw it. (An idle
    /// HTTP/1.1 connection the server closed is seen before it is used.)
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<Release>, SendError> {
        // HTTP/2 upstreams (their own path) and new HTTP/1.1 connections (the
        // pool's cold path) are boxed: their futures would otherwise make
        // every request's future larger, and it is copied on its way into
        // hyper.
        if let Some(h2) = &self.h2 {
            // Boxed here rather than through `send_h2`, whose future (the
            // request until it is boxed) would sit in this one: +176
            // instructions per HTTP/1.1 request (callgrind S4).
            let (resp, slot) = Box::pin(h2.send(&self.dialer, req))
                .await
                .map_err(|(f, _)| h2_error(f))?;
            return Ok(h2_response(resp, slot));
        }
        let (conn, reused) = match self.take_idle() {
            Some(c) => (c, true),
            None => (Box::pin(self.connect()).await?, false),
        };
        match conn.send(req).await {
            Ok(resp) => Ok(self.released(resp)),
            // A kept-alive connection the server closed as it was taken (its
            // close not yet seen): once more on a new one, as nginx does for
            // a cached connection, a request that may go again.
            Err(h1::Failed {
                again: Some(head), ..
            }) if reused => Box::pin(self.send_fresh(*head)).await,
            Err(f) => Err(exchange_error(f)),
        }
    }

    /// [`Self::send`] for a request whose body can be read once: when no
    /// connection to the server could be made, the request comes back
    /// unread with the error, for another server (nginx and HAProxy move
    /// any request on a connect failure). Once handed to a connection it
    /// does not come back.
    pub async fn send_returning(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<Release>, (SendError, Option<Request<Body>>)> {
        // Over HTTP/1.1 a connection is made sure of first, then `send` takes
        // it: `send` stays the one caller of the exchange, which keeps its
        // inlining on every proxied request's path. (An idle connection found
        // closed, or one another request took meanwhile, is dialled by
        // `send`, whose failure then keeps the request.)
        let ready = match &self.h2 {
            Some(h2) => return self.send_h2(h2, req).await,
            None if !self.has_usable_idle() => self.connect().await.map(|c| self.put(c)),
            None => Ok(()),
        };
        if let Err(e) = ready {
            return Err((e, Some(req)));
        }
        self.send(req).await.map_err(|e| (e, None))
    }

    /// [`Self::send_returning`] over HTTP/2: a request no connection took
    /// comes back with the error.
    async fn send_h2(
        &self,
        h2: &H2Conn,
        req: Request<Body>,
    ) -> Result<Response<Release>, (SendError, Option<Request<Body>>)> {
        match Box::pin(h2.send(&self.dialer, req)).await {
            Ok((resp, slot)) => Ok(h2_response(resp, slot)),
            Err((f, back)) => Err((h2_error(f), back)),
        }
    }

    /// Whether [`Self::take_idle`] would find a connection: the closed and
    /// expired ones on top are dropped on the way (a server that went away
    /// leaves its keep-alive connections here until the reaper looks).
    fn has_usable_idle(&self) -> bool {
        let mut idle = self.lock();
        while let Some(top) = idle.last_mut() {
            if top.since.elapsed() < self.idle_timeout && top.conn.is_usable() {
                return true;
            }
            idle.pop();
        }
        false
    }

    /// The most recently used idle connection that is still open.
    /// A bodiless request's second attempt, on a new connection.
    async fn send_fresh(
        self: &Arc<Self>,
        head: http::request::Parts,
    ) -> Result<Response<Release>, SendError> {
        let conn = self.connect().await?;
        let req = Request::from_parts(head, crate::body::empty());
        match conn.send(req).await {
            Ok(resp) => Ok(self.released(resp)),
            Err(f) => Err(exchange_error(f)),
        }
    }

    fn released(self: &Arc<Self>, resp: Response<h1::ResponseBody>) -> Response<Release> {
        resp.map(|body| Release {
            body: Inner::H1(body),
            home: Some(self.clone()),
        })
    }

    fn take_idle(&self) -> Option<h1::Conn> {
        loop {
            let Idle { mut conn, since } = self.lock().pop()?;
            if since.elapsed() < self.idle_timeout && conn.is_usable() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<h1::Conn, SendError> {
        let stream = self.dialer.dial(Purpose::Http).await?;
        Ok(h1::Conn::new(stream))
    }

    fn put(self: &Arc<Self>, conn: h1::Conn) {
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
        // Looked at before it is written: a swap on every give-back would
        // write a line that every worker's requests to this server share.
        if !self.reaper_started.load(Ordering::Acquire)
            && !self.reaper_started.swap(true, Ordering::AcqRel)
        {
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
            .retain_mut(|i| i.since.elapsed() < timeout && i.conn.is_usable());
    }
}

/// A response body from a pooled connection: hands the connection back to its
/// pool once the body has been read to its end (or, for a response without
/// one, when dropped). Dropped before its end, the connection closes with it.
pub struct Release {
    body: Inner,
    home: Option<Arc<ConnPool>>,
}

enum Inner {
    H1(h1::ResponseBody),
    /// On a shared HTTP/2 connection: the stream's place on it is given
    /// back at the body's end, or when it is dropped.
    H2(Incoming, Option<StreamSlot>),
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
        let body = match &mut self.body {
            Inner::H1(body) => body,
            Inner::H2(_, slot) => {
                slot.take();
                return;
            }
        };
        if let (Some(conn), Some(pool)) = (body.take_conn(), self.home.take()) {
            pool.put(conn);
        }
    }
}

impl http_body::Body for Release {
    type Data = bytes::Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let r = match &mut this.body {
            Inner::H1(b) => std::task::ready!(std::pin::Pin::new(b).poll_frame(cx))
                .map(|r| r.map_err(ExchangeError::from)),
            Inner::H2(b, _) => {
                match std::task::ready!(std::pin::Pin::new(&mut *b).poll_frame(cx)) {
                    // hyper ends a reset stream's body as if it were complete:
                    // only a content-length can tell it was not.
                    None => b
                        .size_hint()
                        .exact()
                        .filter(|&n| n > 0)
                        .map(|n| Err(ExchangeError::Short(n))),
                    r => r.map(|r| r.map_err(ExchangeError::from)),
                }
            }
        };
        if this.is_end_stream() {
            this.release();
        }
        std::task::Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Inner::H1(b) => b.is_end_stream(),
            Inner::H2(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.body {
            Inner::H1(b) => b.size_hint(),
            Inner::H2(b, _) => b.size_hint(),
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests;
