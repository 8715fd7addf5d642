//! The client's request body on its way upstream (`proxy::http`): its bytes
//! counted for the access line, its trailers cleaned for HTTP/2 upstreams,
//! and, when it does not arrive whole, whose fault that is ([`ClientFault`]).
//! A body that fails to read, that ends short of its `Content-Length`, or
//! that stops arriving while the upstream waits for more is the client's:
//! no passive-health mark on the server, no retry (probe 13: three clients
//! stalling their uploads, or nine resetting HTTP/2 streams, took a healthy
//! pool down).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HeaderName;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::error::ProxyError;
use super::headers::clean_trailers;
use super::upload;
use crate::access::BytesIn;
use crate::body::{Body, BoxError, RequestBody};

/// What became of the client's body, shared by the body on its way and the
/// request's attempts. Allocated only for a request with a body: a bodiless
/// one cannot fail on the client's side, and most proxied requests have
/// none (S4).
#[derive(Clone)]
pub(super) struct ClientFault(Option<Arc<BodyState>>);

#[derive(Default)]
struct BodyState {
    /// Set when the body failed: `true` for a malformed one.
    fault: OnceLock<bool>,
    /// When the upstream last took a frame ([`upload`]).
    progress: upload::Progress,
    /// The upstream asked for more and the client had sent nothing yet.
    waiting: AtomicBool,
}

/// A body that ended before its declared length: HTTP/2 reads a client's
/// `RST_STREAM(NO_ERROR)` as the body's end (RFC 9113 §8.1 means it for
/// early responses).
#[derive(Debug, thiserror::Error)]
#[error("the request body ended {got} bytes into its Content-Length of {declared}")]
struct CutShort {
    got: u64,
    declared: u64,
}

impl ClientFault {
    pub(super) fn new(has_body: bool) -> Self {
        Self(has_body.then(Default::default))
    }

    pub(super) fn progress(&self) -> Option<&upload::Progress> {
        self.0.as_deref().map(|s| &s.progress)
    }

    /// The upstream took a frame, or a new attempt starts: the wait for
    /// the upstream counts from now.
    pub(super) fn mark_progress(&self) {
        if let Some(s) = self.state() {
            s.progress.mark();
        }
    }

    fn state(&self) -> Option<&BodyState> {
        self.0.as_deref()
    }

    /// Records a body error: `true` for a malformed body, `false` for a
    /// client that went away mid-body.
    fn record(&self, e: &hyper::Error) {
        // hyper reports a malformed chunk as an `InvalidData`/`InvalidInput`
        // I/O cause; anything else is a body cut short (the client closed, or
        // reset its HTTP/2 stream).
        let invalid = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                )
            });
        self.set(invalid || e.is_parse());
    }

    fn set(&self, malformed: bool) {
        if let Some(s) = self.state() {
            let _ = s.fault.set(malformed);
        }
    }

    /// The client's failure, if its body failed.
    pub(super) fn get(&self) -> Option<ProxyError> {
        self.state()?.fault.get().map(|&malformed| {
            if malformed {
                ProxyError::BadRequest("malformed request body".into())
            } else {
                ProxyError::ClientAborted
            }
        })
    }

    /// Whether the upstream is waiting for the client: the body is not
    /// finished and the last look for more of it found nothing.
    pub(super) fn stalled(&self) -> bool {
        self.state()
            .is_some_and(|s| s.waiting.load(Ordering::Relaxed))
    }
}

/// The client's `body` as it goes upstream: its bytes added to `counter`
/// (the access line's), what becomes of it recorded in `fault`, and, bound
/// for an HTTP/2 upstream (`trailers_drop` given: HTTP/1.1 upstreams are
/// sent no trailers), its trailers cleaned ([`clean_trailers`]).
pub(super) fn counted(
    body: RequestBody,
    counter: Option<BytesIn>,
    fault: ClientFault,
    trailers_drop: Option<Vec<HeaderName>>,
) -> Body {
    Counted {
        declared: body.size_hint().exact(),
        body,
        counter,
        fault,
        trailers_drop,
        got: 0,
    }
    .boxed_unsync()
}

struct Counted {
    body: RequestBody,
    counter: Option<BytesIn>,
    fault: ClientFault,
    trailers_drop: Option<Vec<HeaderName>>,
    /// The body's `Content-Length`, if it has one.
    declared: Option<u64>,
    got: u64,
}

impl Counted {
    fn waiting(&self, waiting: bool) {
        if let Some(s) = self.fault.state() {
            s.waiting.store(waiting, Ordering::Relaxed);
        }
    }

    fn frame(&mut self, f: Frame<Bytes>) -> Frame<Bytes> {
        self.fault.mark_progress();
        if let Some(d) = f.data_ref() {
            self.got += d.len() as u64;
            if let Some(counter) = &self.counter {
                counter.0.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        let Some(dropped) = &self.trailers_drop else {
            return f;
        };
        match f.into_trailers() {
            Ok(mut t) => {
                clean_trailers(&mut t, dropped);
                Frame::trailers(t)
            }
            Err(f) => f,
        }
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        this.waiting(polled.is_pending());
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(this.frame(f)))),
            Poll::Ready(Some(Err(e))) => {
                this.fault.record(&e);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => match this.declared {
                Some(declared) if this.got < declared => {
                    this.fault.set(false);
                    let short = CutShort {
                        got: this.got,
                        declared,
                    };
                    Poll::Ready(Some(Err(Box::new(short))))
                }
                _ => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
