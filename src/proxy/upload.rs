//! The response timeout of a request with a body. nginx's
//! `proxy_read_timeout` and Envoy's route timeout start once the request
//! has been sent; a timer from the request's start failed every upload
//! that took longer than `response_timeout` to send (a 504 mid-upload, to a
//! server reading it all along, and every gRPC client stream as long). So
//! the wait is measured from the last body frame the upstream took, and a
//! body that keeps flowing never runs it out.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// When the upstream last took a frame of the request body.
#[derive(Debug)]
pub struct Progress(AtomicU64);

/// What [`Progress`] counts from: milliseconds fit an `AtomicU64`, an
/// `Instant` does not.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(base().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Progress {
    /// Progress as of now (the request's start).
    pub fn new() -> Self {
        Self(AtomicU64::new(now_ms()))
    }

    /// The upstream took a frame.
    pub fn mark(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        base() + Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// `fut`'s output, or `None` once `limit` has passed since the body's last
/// progress. The timer is re-armed only when it fires (a new `Sleep` per
/// `limit` of a long upload), not per frame.
pub async fn within<F: Future>(limit: Duration, progress: &Progress, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut deadline = progress.last() + limit;
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            () = tokio::time::sleep_until(deadline) => {
                let next = progress.last() + limit;
                if next <= deadline {
                    return None;
                }
                deadline = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paused clock: the wait runs out `limit` after the last progress,
    /// however long the whole took.
    #[tokio::test(start_paused = true)]
    async fn the_wait_counts_from_the_last_progress() {
        let limit = Duration::from_secs(3);
        let progress = std::sync::Arc::new(Progress::new());
        let marker = progress.clone();
        let uploading = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                marker.mark();
            }
        });
        let start = Instant::now();
        let out = within(limit, &progress, std::future::pending::<()>()).await;
        assert!(out.is_none());
        // Five marks two seconds apart, then the limit: 13 s, past 3 s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(13) && took < Duration::from_secs(14),
            "{took:?}"
        );
        uploading.await.expect("marker");

        let done = within(limit, &Progress::new(), async { 7 }).await;
        assert_eq!(done, Some(7));
    }
}
