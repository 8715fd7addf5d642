//! HTTP/2 to one upstream server (`protocol = "h2"` over TLS with ALPN, or
//! `"h2c"` in cleartext): one multiplexed connection that every request to
//! the server shares, opened on first use and again after it closes (or
//! stops answering PINGs); flow
//! control and stream limits are hyper's (h2). Requests arrive in origin
//! form with `Host` (as for HTTP/1.1) and leave with `:scheme` and
//! `:authority` instead.

use std::sync::Mutex;

use http::uri::{Authority, Scheme};
use http::{header, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::dial::{DialError, Dialer, Purpose};
use crate::body::Body;

/// Why a request could not be exchanged over HTTP/2.
#[derive(Debug, thiserror::Error)]
pub enum H2Failure {
    #[error("{0}")]
    Dial(#[from] DialError),
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request was handed to the connection and failed there. With
    /// streams multiplexed nothing tells whether the server began on it, so
    /// it is never resent elsewhere.
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
}

/// How often an upstream HTTP/2 connection is PINGed.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The shared connection to one server.
#[derive(Default)]
pub struct H2Conn {
    current: Mutex<Option<http2::SendRequest<Body>>>,
    /// Held while connecting, so a burst of first requests opens one
    /// connection rather than one each.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn")
            .field("open", &self.live().is_some())
            .finish()
    }
}

impl H2Conn {
    /// Sends `req` (origin form, `Host` set) and returns the response.
    pub async fn send(
        &self,
        dialer: &Dialer,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, H2Failure> {
        let req = to_h2(req, dialer);
        let (mut sender, reused) = self.sender(dialer).await?;
        match sender.try_send_request(req).await {
            Ok(r) => Ok(r),
            Err(mut e) => match e.take_message() {
                // The connection had closed (GOAWAY, idle) before the request
                // went out: the server never saw it, so a new connection may
                // carry it.
                Some(req) if reused => {
                    self.forget();
                    let (mut sender, _) = self.sender(dialer).await?;
                    sender.send_request(req).await.map_err(H2Failure::Exchange)
                }
                _ => Err(H2Failure::Exchange(e.into_error())),
            },
        }
    }

    fn live(&self) -> Option<http2::SendRequest<Body>> {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn forget(&self) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|s| s.is_closed()) {
            *cur = None;
        }
    }

    /// The open connection, or a new one; `true` when it was already open.
    async fn sender(&self, dialer: &Dialer) -> Result<(http2::SendRequest<Body>, bool), H2Failure> {
        if let Some(s) = self.live() {
            return Ok((s, true));
        }
        let _one = self.connecting.lock().await;
        if let Some(s) = self.live() {
            return Ok((s, true));
        }
        let io = dialer.dial(Purpose::Http).await?;
        // A connection the server stopped reading (or a flow a NAT dropped)
        // fails every request on it with a timeout and never closes: PINGs,
        // idle or not, find it within PING_EVERY plus connect_timeout, and
        // the next request opens a new one (Envoy's connection_keepalive).
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(dialer.timeout())
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(H2Failure::Handshake)?;
        let addr = dialer.addr().clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server = %addr, error = %e, "upstream HTTP/2 connection ended with error");
            }
        });
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok((sender, false))
    }
}

/// The request as HTTP/2 wants it: absolute URI (`:scheme`, `:authority`
/// from `Host`, else the server's address), no `Host` header.
fn to_h2(req: Request<Body>, dialer: &Dialer) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .headers
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(dialer.addr().as_bytes()).ok());
    let mut uri = parts.uri.clone().into_parts();
    uri.scheme = Some(if dialer.is_tls() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    uri.authority = authority;
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(u) = Uri::from_parts(uri) {
        parts.uri = u;
    }
    parts.version = Version::HTTP_2;
    Request::from_parts(parts, body)
}
