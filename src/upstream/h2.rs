//! HTTP/2 to one upstream server (`protocol = "h2"` over TLS with ALPN, or
//! `"h2c"` in cleartext): multiplexed connections that the requests to the
//! server share, each opened on first need and again after it closes (or
//! stops answering PINGs). Requests arrive in origin form with `Host` (as for
//! HTTP/1.1) and leave with `:scheme` and `:authority` instead.
//!
//! Flow control is why there can be more than one connection. A response
//! body's bytes hold both its stream's receive window and the connection's
//! until they are read, and a client that stops reading stops them being
//! read: with hyper's defaults (2 MiB a stream, 5 MiB a connection) three
//! such clients took the whole connection's window, and every other
//! request to the server stalled behind them. So a connection carries at
//! most [`STREAMS`] streams of ours, and its window is [`STREAMS`] stream
//! windows: stalled streams can only ever hold their own windows, never
//! another stream's. When every connection is full, another is opened;
//! connections beyond the first close once idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// The connection closed before the request went out on it: the server
    /// never saw it.
    #[error("{0}")]
    NotSent(#[source] hyper::Error),
}

/// A failure, and the request when it never went out (in the form it came
/// in), so that it can go to another server whole.
pub type Refused = (H2Failure, Option<Request<Body>>);

/// How often an upstream HTTP/2 connection is PINGed.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Streams of ours one connection carries at once (a server may allow
/// fewer: h2 then queues the rest).
const STREAMS: usize = 100;
/// A stream's receive window: what one unread response may hold (hyper's
/// default is 2 MiB; 1 MiB still fills a LAN at one stream).
const STREAM_WINDOW: u32 = 1 << 20;
/// A connection's receive window: room for every stream's at once.
const CONNECTION_WINDOW: u32 = STREAM_WINDOW * STREAMS as u32;
/// The largest response head taken, as from an HTTP/1.1 server
/// (`h1::response::MAX_HEAD`); hyper's default is 16 KiB.
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// One connection and the streams of ours on it.
struct Link {
    sender: http2::SendRequest<Body>,
    streams: Arc<AtomicUsize>,
}

/// A stream's place on its connection, given back when the response body
/// (or the failed exchange) is dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connections to one server.
#[derive(Default)]
pub struct H2Conn {
    links: Mutex<Vec<Link>>,
    /// Held while connecting, so a burst of first requests opens one
    /// connection rather than one each.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn")
            .field("open", &self.lock().len())
            .finish()
    }
}

impl H2Conn {
    /// Sends `req` (origin form, `Host` set) and returns the response with
    /// its stream's slot, to be held as long as its body. A request no
    /// connection took comes back with the failure.
    pub async fn send(
        &self,
        dialer: &Dialer,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, StreamSlot), Refused> {
        // A shared connection can close (a GOAWAY hyper has not acted on
        // yet) between choosing it and sending: the request comes back
        // unsent, and goes out on another, at most once per connection.
        let mut tries = None;
        let mut req = req;
        loop {
            let (mut sender, slot, reused) = match self.sender(dialer).await {
                Ok(s) => s,
                Err(f) => return Err((f, Some(req))),
            };
            let (h2_req, origin) = to_h2(req, dialer);
            let mut e = match sender.try_send_request(h2_req).await {
                Ok(r) => return Ok((r, slot)),
                Err(e) => e,
            };
            drop(slot);
            let Some(back) = e.take_message() else {
                return Err((failed(e.into_error()), None));
            };
            // The server never saw it: whole, for another connection, or
            // for another server once a new connection refused it too.
            req = origin.restore(back);
            let left = tries.get_or_insert_with(|| self.lock().len() + 1);
            *left -= 1;
            if !reused || *left == 0 {
                return Err((H2Failure::NotSent(e.into_error()), Some(req)));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place on an open connection with room, if there is one. Closed
    /// connections are forgotten here, and idle ones but the first kept.
    fn place(&self) -> Option<(http2::SendRequest<Body>, StreamSlot)> {
        let mut links = self.lock();
        let mut idle_kept = false;
        links.retain(|l| {
            let idle = l.streams.load(Ordering::Acquire) == 0;
            !l.sender.is_closed() && (!idle || !std::mem::replace(&mut idle_kept, true))
        });
        let link = links
            .iter()
            .find(|l| l.streams.load(Ordering::Acquire) < STREAMS)?;
        // Counted under the lock: two requests cannot both take the last place.
        link.streams.fetch_add(1, Ordering::AcqRel);
        Some((link.sender.clone(), StreamSlot(link.streams.clone())))
    }

    /// A place on a connection with room, opening one when none has;
    /// `true` when the connection was already open.
    async fn sender(
        &self,
        dialer: &Dialer,
    ) -> Result<(http2::SendRequest<Body>, StreamSlot, bool), H2Failure> {
        if let Some((s, slot)) = self.place() {
            return Ok((s, slot, true));
        }
        let _one = self.connecting.lock().await;
        if let Some((s, slot)) = self.place() {
            return Ok((s, slot, true));
        }
        let sender = connect(dialer).await?;
        let streams = Arc::new(AtomicUsize::new(1));
        let slot = StreamSlot(streams.clone());
        self.lock().push(Link {
            sender: sender.clone(),
            streams,
        });
        Ok((sender, slot, false))
    }
}

/// A new connection to the server, its task spawned.
async fn connect(dialer: &Dialer) -> Result<http2::SendRequest<Body>, H2Failure> {
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
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake(TokioIo::new(io))
        .await
        .map_err(H2Failure::Handshake)?;
    let addr = dialer.addr().clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(server = %addr, error = %e, "upstream HTTP/2 connection ended with error");
        }
    });
    Ok(sender)
}

/// An exchange's failure, told apart by whether the server may have seen
/// the request.
fn failed(e: hyper::Error) -> H2Failure {
    if unprocessed(&e) {
        H2Failure::NotSent(e)
    } else {
        H2Failure::Exchange(e)
    }
}

/// Did the server drop the stream before acting on it (RFC 9113 §8.7)? A
/// reset with `REFUSED_STREAM`, or a stream above the last one a GOAWAY
/// said was processed: h2 fails only those with the GOAWAY's own error,
/// whatever its code (`Streams::recv_go_away`; the streams at or below it
/// go on, and fail later as a broken connection if they do). Such a
/// request may go to another server, as Envoy's `refused-stream` retry
/// sends it.
fn unprocessed(e: &hyper::Error) -> bool {
    let Some(e) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>()) else {
        return false;
    };
    e.is_remote()
        && (e.is_go_away() || e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// What [`to_h2`] changed, to give a request that never went out back as it
/// came (its origin-form URI is the HTTP/2 one's path and query). Kept
/// small: every request to an HTTP/2 server makes one.
struct Origin {
    version: Version,
    host: Option<header::HeaderValue>,
}

impl Origin {
    fn restore(self, req: Request<Body>) -> Request<Body> {
        let (mut parts, body) = req.into_parts();
        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .map(Uri::from)
            .unwrap_or_default();
        parts.version = self.version;
        if let Some(host) = self.host {
            parts.headers.insert(header::HOST, host);
        }
        Request::from_parts(parts, body)
    }
}

/// The request as HTTP/2 wants it: absolute URI (`:scheme`, `:authority`
/// from `Host`, else the server's address), no `Host` header.
fn to_h2(req: Request<Body>, dialer: &Dialer) -> (Request<Body>, Origin) {
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.remove(header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(dialer.addr().as_bytes()).ok());
    let origin = Origin {
        version: parts.version,
        host,
    };
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
    (Request::from_parts(parts, body), origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that never went out is given back as it came: origin
    /// form, its version and its `Host` (or none).
    #[test]
    fn a_request_given_back_is_as_it_came() {
        let dialer = Dialer::new(
            "10.0.0.1:8080".into(),
            std::time::Duration::from_secs(1),
            None,
        );
        for host in [Some("api.example"), None] {
            let mut b = Request::post("/a?b=c").version(Version::HTTP_11);
            if let Some(h) = host {
                b = b.header(header::HOST, h);
            }
            let req = b.body(Body::default()).expect("request");
            let (h2, origin) = to_h2(req, &dialer);
            assert_eq!(
                h2.uri().to_string(),
                format!("http://{}/a?b=c", host.unwrap_or("10.0.0.1:8080"))
            );
            assert!(h2.headers().get(header::HOST).is_none());
            let back = origin.restore(h2);
            assert_eq!(back.uri(), "/a?b=c");
            assert_eq!(back.version(), Version::HTTP_11);
            assert_eq!(
                back.headers().get(header::HOST).map(|h| h.to_str().ok()),
                host.map(Some)
            );
        }
    }
}
