//! The process's tokio runtime, and the one tuning it needs: a heartbeat that
//! keeps a timer due within [`HEARTBEAT`], so that arming a per-connection
//! deadline does not wake the runtime's driver through its eventfd.
//!
//! Why: tokio's timer wheel remembers, when its driver parks, the earliest
//! deadline it holds (`next_wake`), and a timer armed before that wakes the
//! driver with a `write` to its eventfd, even when the worker arming it is
//! awake and the driver parked nowhere. Between connections the wheel holds
//! only long timers (a spliced session's idle check, minutes away), so every
//! new connection's header deadline and every tunnel's `connect_timeout` was
//! earlier: 0.9 eventfd writes per new proxied WebSocket (`strace -c`, S5),
//! each also ending the next `epoll_wait` early. With a deadline always within
//! a second, only timers shorter than that still do.

use std::io;
use std::time::Duration;

use tokio::runtime::Runtime;

/// Shorter than every per-connection deadline the defaults arm (the header
/// and connect timeouts are seconds); one wake-up a second costs nothing.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Threads for blocking work: static files' opens and reads, name lookups,
/// a reload's files. tokio's default (512) let a burst of slow static-file
/// requests (2 000 HTTP/2 streams a client held open) grow the pool to ~400
/// threads of about a megabyte each (their stacks and allocator heaps,
/// kept after the burst): 450 MB from one client. nginx's thread pool for
/// file I/O has 32; each of these operations is short, and more wait in
/// the pool's queue.
pub const MAX_BLOCKING_THREADS: usize = 64;

/// A multi-threaded runtime (one worker per core the process may run on) with
/// the heartbeat running.
pub fn build() -> io::Result<Runtime> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?;
    rt.spawn(heartbeat(HEARTBEAT));
    Ok(rt)
}

async fn heartbeat(period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heartbeat is spawned with the runtime and does not end after its
    /// first tick (an interval's first tick is immediate; a task that returned
    /// would leave the wheel without its near deadline).
    #[test]
    fn the_runtime_keeps_its_heartbeat() {
        let rt = build().expect("runtime");
        assert_eq!(rt.metrics().num_alive_tasks(), 1);
        rt.block_on(async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(rt.metrics().num_alive_tasks(), 1);
    }

    /// It keeps ticking: a heartbeat that ended after a tick would leave the
    /// wheel without its near deadline. On a paused clock, which moves to the
    /// next deadline whenever the runtime is idle: no real waiting.
    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_outlives_its_ticks() {
        let period = Duration::from_millis(5);
        let beat = tokio::spawn(heartbeat(period));
        tokio::time::sleep(period * 6).await;
        assert!(!beat.is_finished());
        beat.abort();
    }
}
