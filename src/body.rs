//! Bodies shared by every layer that answers HTTP: the boxed response body
//! type, empty and full bodies, the plain-text response every error and small
//! endpoint uses, and [`RequestBody`], the body of a request as the server hands
//! it to its handler (an HTTP/2 body left unread is drained, not reset). A leaf:
//! it imports nothing of the crate.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

/// The response body type used everywhere on the server side.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body holding `b` in one frame.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// A body with no bytes.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A plain-text response.
pub fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// How much of an unread HTTP/2 request body is read and discarded after the
/// request was answered before the stream is reset.
pub const DRAIN_MAX_BYTES: usize = 64 * 1024;
/// How long the rest of an unread HTTP/2 request body is waited for before the
/// stream is reset (a gateway drain may wait this much longer for such a stream).
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(1);

/// A request's body as the server hands it to its handler: hyper's body, plus
/// what happens when a handler drops an HTTP/2 body it did not read to the end
/// (a 404, an error, a route that reads no body).
///
/// Dropped unread, h2 would reset the stream (`RST_STREAM(NO_ERROR)` once the
/// response is out, RFC 9113 §8.1) and from then on ignore the client's frames
/// on it, as §5.1 requires. A client still sending that body, or resetting the
/// stream itself, then sees a different answer depending on whether its frames
/// crossed the reset (hyperium/h2#633; the timing cases of h2spec,
/// docs/conformance.md). So the rest of such a body is read and discarded by a
/// small task, at most [`DRAIN_MAX_BYTES`] within [`DRAIN_MAX_TIME`]; the stream
/// then ends as the client ends it. HTTP/1.1 needs none of this: hyper reads
/// an unread body itself before the next request, or closes the connection.
#[derive(Debug)]
pub struct RequestBody {
    /// `None` for a request without a body (the HTTP/1.1 fast path's), or
    /// once a drop has handed it to the drain task.
    inner: Option<Incoming>,
    /// An HTTP/2 body: drained when dropped unread.
    drain: bool,
}

impl RequestBody {
    /// `body`, drained when dropped unread if the request is HTTP/2.
    pub fn new(body: Incoming, version: Version) -> Self {
        RequestBody {
            inner: Some(body),
            drain: version == Version::HTTP_2,
        }
    }

    /// A body with no bytes (a request whose head said it has none).
    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            drain: false,
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if !self.drain {
            return;
        }
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Outside a runtime (nothing serves the stream then) it is just dropped.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body));
        }
    }
}

/// Reads and discards `body` until it ends, fails (the client reset the
/// stream), or passes [`DRAIN_MAX_BYTES`] or [`DRAIN_MAX_TIME`]; then drops it
/// (past a bound, h2 resets the stream as it would have at once).
async fn drain(mut body: Incoming) {
    let read = async {
        let mut n = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                n += d.len();
                if n > DRAIN_MAX_BYTES {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, read).await;
}
