//! `server.send_timeout` for HTTP/2 streams. [`super::send_timeout`] times
//! the socket, but an HTTP/2 client can read its socket and keep one
//! stream's flow-control window shut: hyper then waits for window before it
//! asks the response body for more, with no timer, and the stream (with the
//! upstream connection or stream behind it) is held for as long as the
//! client likes, up to 128 of them a connection. nginx times out such a
//! stream after `send_timeout`; here the connection is closed, since hyper
//! gives no way to reset one stream from outside it.
//!
//! Each HTTP/2 response body is [`Watched`]: it notes when it has data
//! ready that hyper has not asked for (from the response's start, and
//! after each frame it yields), and clears it when hyper asks again. The
//! connection's task looks at its [`Stalls`] every half `send_timeout` while
//! any such body lives, so a stall is caught within 1.5 × `send_timeout`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A connection's watched response bodies.
pub struct Stalls {
    limit: Duration,
    start: Instant,
    bodies: Mutex<Vec<Weak<Watch>>>,
    /// The connection's task is looking (it has been told of a body).
    armed: AtomicBool,
    wake: Notify,
}

/// One body's state: when it had data ready that hyper has not asked for
/// (milliseconds since [`Stalls::start`], plus one), or 0 when hyper is
/// waiting for it instead.
#[derive(Default)]
struct Watch {
    waiting_since: AtomicU64,
}

impl Stalls {
    pub fn new(limit: Duration) -> Arc<Self> {
        Arc::new(Self {
            limit,
            start: Instant::now(),
            bodies: Mutex::new(Vec::new()),
            armed: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn now_mark(&self) -> u64 {
        let ms = self.start.elapsed().as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
    }

    /// Wraps an HTTP/2 response body. A body with nothing to send is left
    /// unwatched.
    pub fn watch<B: Body>(self: &Arc<Self>, body: B) -> Watched<B> {
        if body.is_end_stream() {
            return Watched { body, watch: None };
        }
        let w = Arc::new(Watch::default());
        w.waiting_since.store(self.now_mark(), Ordering::Relaxed);
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|b| b.strong_count() > 0);
        bodies.push(Arc::downgrade(&w));
        drop(bodies);
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        Watched {
            body,
            watch: Some((w, self.clone())),
        }
    }

    /// Waits until there is a body to look at.
    pub async fn armed(&self) {
        while !self.armed.load(Ordering::Acquire) {
            self.wake.notified().await;
        }
    }

    /// Some body lives that the connection's task must look at.
    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    /// How often the connection's task looks.
    pub fn period(&self) -> Duration {
        (self.limit / 2).max(Duration::from_millis(10))
    }

    /// Looks at the bodies: `true` when one has waited for hyper past the
    /// limit. With no body left, disarms (the task waits on
    /// [`Stalls::armed`] again).
    pub fn stalled(&self) -> bool {
        let limit = u64::try_from(self.limit.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_mark();
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|b| b.strong_count() > 0);
        if bodies.is_empty() {
            self.armed.store(false, Ordering::Release);
            return false;
        }
        bodies.iter().filter_map(Weak::upgrade).any(|w| {
            let since = w.waiting_since.load(Ordering::Relaxed);
            since != 0 && now.saturating_sub(since) > limit
        })
    }
}

/// A response body whose waits for hyper are watched (HTTP/2 only).
pub struct Watched<B> {
    body: B,
    watch: Option<(Arc<Watch>, Arc<Stalls>)>,
}

impl<B> Watched<B> {
    /// Not watched: HTTP/1.1, where the socket's timer is enough.
    pub fn plain(body: B) -> Self {
        Self { body, watch: None }
    }
}

impl<B: Body + Unpin> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some((w, stalls)) = this.watch.as_ref() else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        w.waiting_since.store(0, Ordering::Relaxed);
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(&r, Poll::Ready(Some(Ok(f))) if f.is_data()) {
            w.waiting_since.store(stalls.now_mark(), Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_body_hyper_stops_asking_for_is_stalled_after_the_limit() {
        let stalls = Stalls::new(Duration::from_secs(2));
        let frames = futures_util::stream::iter(
            ["a", "b"].map(|s| Ok::<_, std::convert::Infallible>(Frame::data(s.as_bytes()))),
        );
        let mut body = stalls.watch(StreamBody::new(frames));
        tokio::time::timeout(Duration::from_millis(10), stalls.armed())
            .await
            .expect("armed by the first body");
        // Asked for at once, and again: never waiting long.
        body.frame().await.expect("a frame").expect("ok");
        tokio::time::advance(Duration::from_secs(1)).await;
        body.frame().await.expect("b frame").expect("ok");
        assert!(!stalls.stalled());
        // Then hyper stops asking (the client's window is shut).
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert!(stalls.stalled());
        // Asked again: the body waits on its source, not on hyper.
        assert!(body.frame().await.is_none());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!stalls.stalled());
        drop(body);
        assert!(!stalls.stalled());
        assert!(!stalls.armed.load(Ordering::Acquire), "no body: disarmed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_never_asked_for_is_stalled_and_an_empty_one_is_not_watched() {
        let stalls = Stalls::new(Duration::from_secs(1));
        let empty = stalls.watch(Full::new(bytes::Bytes::new()));
        assert!(empty.watch.is_none());
        let _held = stalls.watch(Full::new(bytes::Bytes::from_static(b"x")));
        assert!(!stalls.stalled());
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(stalls.stalled());
    }
}
