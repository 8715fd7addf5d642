//! `server.send_timeout` for HTTP/2 streams. [`crate::send_timeout`] times
//! the socket, but an HTTP/2 client can read its socket and keep one
//! stream's flow-control window shut: hyper takes one chunk of the response
//! body, then waits for window to send it, with no timer, and the stream
//! (with the upstream connection or stream behind it) is held for as long as
//! the client likes, up to 128 of them a connection. As nginx does, such a
//! stream is reset after `send_timeout`; its connection's other streams go on.
//!
//! Each HTTP/2 response body is [`Watched`]: it notes when it has data
//! ready that hyper has not asked for (from the response's start, and
//! after each frame it yields), and clears it when hyper asks again. It
//! yields at most 16 KiB a frame (HTTP/2's default frame size), so a client
//! that reads slowly but steadily makes progress at least every 16 KiB. The
//! connection's task looks at its [`Stalls`] every half `send_timeout` while
//! any such body lives, so a stall is caught within 1.5 × `send_timeout`.
//!
//! hyper runs each stream in a task of its own ([`spawn_stream`]); the task
//! can be aborted, which drops hyper's handles of the stream, and h2 then
//! resets it (`CANCEL`). A body learns its task's handle from a task-local.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{AbortHandle, Abortable};
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

/// The largest frame a watched body yields: progress is seen at least this often.
const FRAME: usize = 16 * 1024;

tokio::task_local! {
    /// The abort handle of the stream task being polled ([`spawn_stream`]).
    static STREAM: AbortHandle;
}

/// Runs one of hyper's stream tasks so that [`Stalls`] can reset it.
pub fn spawn_stream<F>(fut: F)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (handle, registration) = AbortHandle::new_pair();
    let task = STREAM.scope(handle, Abortable::new(fut, registration));
    tokio::spawn(crate::shutdown::catch_panics(task));
}

/// One body's state: when it had data ready that hyper has not asked for
/// (milliseconds since [`Stalls::start`], plus one), or 0 when hyper is
/// waiting for it instead; and how to reset its stream.
struct Watch {
    waiting_since: AtomicU64,
    stream: Option<AbortHandle>,
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

    /// Wraps an HTTP/2 response body. A body with nothing to send is left
    /// unwatched.
    pub fn watch<B: Body>(self: &Arc<Self>, body: B) -> Watched<B> {
        if body.is_end_stream() {
            return Watched::plain(body);
        }
        let w = Arc::new(Watch {
            waiting_since: AtomicU64::new(mark(self.start)),
            stream: STREAM.try_with(AbortHandle::clone).ok(),
        });
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|b| b.strong_count() > 0);
        bodies.push(Arc::downgrade(&w));
        drop(bodies);
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        Watched {
            body,
            rest: Bytes::new(),
            watch: Some((w, self.start)),
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

    /// Looks at the bodies and resets the stream of each that has waited
    /// for hyper past the limit. `true` when one of them has no stream task
    /// to reset: then the connection must close. With no body left,
    /// disarms (the task waits on [`Stalls::armed`] again).
    pub fn look(&self) -> bool {
        let limit = u64::try_from(self.limit.as_millis()).unwrap_or(u64::MAX);
        let now = mark(self.start);
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|b| b.strong_count() > 0);
        if bodies.is_empty() {
            self.armed.store(false, Ordering::Release);
            return false;
        }
        let mut close = false;
        for w in bodies.iter().filter_map(Weak::upgrade) {
            let since = w.waiting_since.load(Ordering::Relaxed);
            if since == 0 || now.saturating_sub(since) <= limit {
                continue;
            }
            match &w.stream {
                Some(stream) if !stream.is_aborted() => {
                    tracing::debug!("an HTTP/2 stream took nothing for send_timeout; resetting it");
                    stream.abort();
                }
                Some(_) => {}
                None => close = true,
            }
        }
        close
    }
}

/// Milliseconds since `start`, plus one: 0 says "not waiting".
fn mark(start: Instant) -> u64 {
    let ms = start.elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
}

/// A response body whose waits for hyper are watched (HTTP/2 only).
pub struct Watched<B> {
    body: B,
    /// What is left of a frame larger than [`FRAME`].
    rest: Bytes,
    /// The body's state, and its connection's [`Stalls::start`].
    watch: Option<(Arc<Watch>, Instant)>,
}

impl<B> Watched<B> {
    /// Not watched: HTTP/1.1, where the socket's timer is enough.
    pub fn plain(body: B) -> Self {
        Self {
            body,
            rest: Bytes::new(),
            watch: None,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Watched<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some((w, start)) = this.watch.as_ref() else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        w.waiting_since.store(0, Ordering::Relaxed);
        let r = if this.rest.is_empty() {
            Pin::new(&mut this.body).poll_frame(cx)
        } else {
            Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut this.rest)))))
        };
        let Poll::Ready(Some(Ok(frame))) = r else {
            return r;
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                if data.len() > FRAME {
                    this.rest = data.split_off(FRAME);
                }
                w.waiting_since.store(mark(*start), Ordering::Relaxed);
                Frame::data(data)
            }
            Err(other) => other,
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = self.body.size_hint();
        let rest = self.rest.len() as u64;
        if rest > 0 {
            h.set_lower(h.lower() + rest);
            if let Some(u) = h.upper() {
                h.set_upper(u + rest);
            }
        }
        h
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
            ["a", "b"].map(|s| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(s)))),
        );
        let mut body = stalls.watch(StreamBody::new(frames));
        tokio::time::timeout(Duration::from_millis(10), stalls.armed())
            .await
            .expect("armed by the first body");
        // Asked for at once, and again: never waiting long.
        body.frame().await.expect("a frame").expect("ok");
        tokio::time::advance(Duration::from_secs(1)).await;
        body.frame().await.expect("b frame").expect("ok");
        assert!(!stalls.look());
        // Then hyper stops asking (the client's window is shut): outside a
        // stream task there is nothing to reset, so the connection must close.
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert!(stalls.look());
        // Asked again: the body waits on its source, not on hyper.
        assert!(body.frame().await.is_none());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!stalls.look());
        drop(body);
        assert!(!stalls.look());
        assert!(!stalls.is_armed(), "no body: disarmed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_task_is_aborted_alone() {
        let stalls = Stalls::new(Duration::from_secs(1));
        let (held_tx, held) = tokio::sync::oneshot::channel();
        let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
        let watcher = stalls.clone();
        spawn_stream(async move {
            let _ended = ended_tx;
            let body = watcher.watch(Full::new(Bytes::from_static(b"x")));
            let _ = held_tx.send(());
            // hyper waiting for window: the body is never asked for.
            std::future::pending::<()>().await;
            drop(body);
        });
        held.await.expect("the stream task runs");
        let calm = stalls.clone();
        // Another stream whose body waits on its source (a slow upstream).
        let mut other = calm.watch(StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::convert::Infallible>,
        >()));
        assert!(futures_util::FutureExt::now_or_never(other.frame()).is_none());
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(!stalls.look(), "reset, not closed");
        assert!(ended.await.is_err(), "the stream task ended");
    }

    #[tokio::test(start_paused = true)]
    async fn frames_are_yielded_16_kib_at_most() {
        let stalls = Stalls::new(Duration::from_secs(1));
        let mut body = stalls.watch(Full::new(Bytes::from(vec![7u8; 40 * 1024])));
        let mut sizes = Vec::new();
        while let Some(f) = body.frame().await {
            sizes.push(f.expect("ok").into_data().expect("data").len());
        }
        assert_eq!(sizes, [16384, 16384, 8192]);
        let empty = stalls.watch(Full::new(Bytes::new()));
        assert!(empty.watch.is_none(), "nothing to send: not watched");
    }
}
