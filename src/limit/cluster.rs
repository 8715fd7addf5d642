//! `scope = "cluster"`: the GCRA decision made in the `[cluster]` Redis, one
//! `EVALSHA` per decision, so every node spends one shared budget.
//!
//! The script reads Redis's own clock (`TIME`) rather than the caller's, so
//! nodes whose clocks disagree still agree on every bucket. Each bucket is one
//! string key holding its TAT in microseconds, expiring when the bucket is
//! full again (so Redis, too, holds only buckets that carry state).
//!
//! Redis down or slower than [`TIMEOUT`]: the caller decides on its node-local
//! bucket instead, [`ClusterLimits::status`] says so (the gateway shows it in
//! `/readyz`), Redis is not asked again for [`RETRY_AFTER_FAILURE`], and a
//! probe task clears the status as soon as Redis answers a PING again.
//!
//! It has its own connection (not the chat bus's): its timeout is much shorter
//! than the bus's, and it needs no RESP3 push channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::RedisTarget;
use crate::redis_conn::{RedisConn, Settings};

/// How long one decision may wait for Redis before the node decides alone.
pub const TIMEOUT: Duration = Duration::from_millis(50);
/// After a failure, decisions stay local this long before Redis is tried again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// What `/readyz` says while Redis cannot decide.
pub const DEGRADED: &str = "rate limits per node (redis unreachable)";

/// GCRA in microseconds. KEYS[1]: the bucket. ARGV: emission interval (µs),
/// burst. Returns 0 when allowed, else the wait in µs.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T = tonumber(ARGV[1])
local window = T * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + T
local allow_at = new_tat - window
if now < allow_at then
  return math.ceil(allow_at - now)
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"#;

/// Why a cluster decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClusterLimitError {
    #[error("cluster.redis {}: {source}", crate::quoted::Quoted(.url))]
    Url {
        url: String,
        source: redis::RedisError,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("redis is marked unreachable; retrying shortly")]
    Paused,
}

/// The shared-bucket side of every cluster-scope limit of the process.
pub struct ClusterLimits {
    conn: RedisConn,
    script: Script,
    start: Instant,
    /// Milliseconds since `start` before which Redis is not asked (0 = ask).
    paused_until: AtomicU64,
    /// `None` while Redis decides, else why not.
    status: watch::Sender<Option<String>>,
}

impl ClusterLimits {
    /// Connects lazily to `target` (URLs validated by config); one bucket is
    /// one key, so on a Redis Cluster each decision goes to its key's shard.
    pub fn new(target: &RedisTarget) -> Result<Arc<Self>, ClusterLimitError> {
        let settings = Settings {
            timeout: TIMEOUT.max(Duration::from_millis(500)),
            min_retry: Duration::from_millis(50),
            max_retry: RETRY_AFTER_FAILURE,
            push: None,
        };
        let conn = RedisConn::open(target, settings).map_err(|source| ClusterLimitError::Url {
            url: target.describe(),
            source,
        })?;
        Ok(Arc::new(Self {
            conn,
            script: Script::new(GCRA),
            start: Instant::now(),
            paused_until: AtomicU64::new(0),
            status: watch::channel(None).0,
        }))
    }

    /// `None` while Redis decides, else the reason limits are per node.
    pub fn status(&self) -> watch::Receiver<Option<String>> {
        self.status.subscribe()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// One decision on the shared bucket `key`: `Ok(None)` allowed,
    /// `Ok(Some(wait))` limited, `Err` when the caller must decide alone.
    pub async fn decide(
        &self,
        key: &str,
        emission: Duration,
        burst: u32,
    ) -> Result<Option<Duration>, ClusterLimitError> {
        if self.now_ms() < self.paused_until.load(Ordering::Relaxed) {
            return Err(ClusterLimitError::Paused);
        }
        // Microseconds: finer rates than 10^6/s count as 10^6/s in the cluster.
        let t_us = u64::try_from(emission.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.conn.clone();
        let mut call = self.script.key(key);
        call.arg(t_us).arg(burst);
        let reply = tokio::time::timeout(TIMEOUT, async {
            match call.invoke_async::<u64>(&mut conn).await {
                // A connection that broke since the last call (Redis
                // restarted): the manager reconnects, so try once more
                // within the same deadline rather than fall back for a second.
                Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                    call.invoke_async::<u64>(&mut conn).await
                }
                r => r,
            }
        })
        .await;
        let result = match reply {
            Ok(Ok(0)) => Ok(None),
            Ok(Ok(us)) => Ok(Some(Duration::from_micros(us))),
            Ok(Err(e)) => Err(ClusterLimitError::Redis(e)),
            Err(_) => Err(ClusterLimitError::Timeout(TIMEOUT)),
        };
        match &result {
            Ok(_) => self.mark_up(),
            Err(e) => self.mark_down(e),
        }
        result
    }

    fn mark_up(&self) {
        self.status.send_if_modified(|s| s.take().is_some());
    }

    fn mark_down(&self, e: &ClusterLimitError) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(RETRY_AFTER_FAILURE.as_millis()).unwrap_or(u64::MAX));
        self.paused_until.store(until, Ordering::Relaxed);
        let changed = self.status.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(DEGRADED.to_string());
                true
            } else {
                false
            }
        });
        if changed {
            tracing::warn!(error = %e, "cluster rate limits fall back to per-node buckets");
        }
    }

    /// While degraded, PINGs Redis every [`RETRY_AFTER_FAILURE`] and clears
    /// the status when it answers: a node that is not ready gets no traffic,
    /// so it cannot wait for a decision to find Redis back. Ends with `stop`.
    pub async fn probe(self: Arc<Self>, stop: CancellationToken) {
        let mut status = self.status();
        loop {
            let degraded = status.borrow_and_update().is_some();
            if degraded {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_AFTER_FAILURE) => {}
                }
                let mut conn = self.conn.clone();
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut conn);
                if let Ok(Ok(_)) = tokio::time::timeout(TIMEOUT * 4, ping).await {
                    self.paused_until.store(0, Ordering::Relaxed);
                    self.mark_up();
                    tracing::info!("cluster rate limits use redis again");
                }
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = status.changed() => if r.is_err() { return },
            }
        }
    }
}
