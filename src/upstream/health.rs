//! Per-server health, fed by two sources: passive (failures seen by real traffic:
//! `max_fails` within `fail_timeout` → down for `fail_timeout`) and active (a
//! background `GET path` every `interval`; `healthy`/`unhealthy` consecutive
//! results flip the state). Balancing and stickiness only consult [`Health::is_up`].

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use super::pool::Pool;
use crate::config::HealthConfig;

#[derive(Debug)]
pub struct Health {
    /// Active checks' verdict (true when no active check is configured).
    active_up: AtomicBool,
    active_streak: AtomicU32,
    passive: Mutex<Passive>,
}

#[derive(Debug, Default)]
struct Passive {
    window_start: Option<Instant>,
    fails: u32,
    down_until: Option<Instant>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            active_up: AtomicBool::new(true),
            active_streak: AtomicU32::new(0),
            passive: Mutex::new(Passive::default()),
        }
    }
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.active_up.load(Ordering::Acquire) && !self.passively_down(Instant::now())
    }

    fn passively_down(&self, now: Instant) -> bool {
        let p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        p.down_until.is_some_and(|t| now < t)
    }

    /// Records a failed attempt (connect error, timeout, broken response). Returns
    /// true when this failure marked the server down.
    pub fn record_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        if max_fails == 0 {
            return false;
        }
        let now = Instant::now();
        let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        if p.window_start
            .is_none_or(|s| now.duration_since(s) > fail_timeout)
        {
            p.window_start = Some(now);
            p.fails = 0;
        }
        p.fails += 1;
        if p.fails >= max_fails && p.down_until.is_none_or(|t| now >= t) {
            p.down_until = Some(now + fail_timeout);
            p.fails = 0;
            p.window_start = None;
            return true;
        }
        false
    }

    /// A success clears the failure count (nginx does the same).
    pub fn record_success(&self) {
        let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        p.fails = 0;
        p.window_start = None;
    }

    /// Feeds one active-check result; returns `Some(new_state)` on a transition.
    pub fn record_probe(&self, ok: bool, cfg: &HealthConfig) -> Option<bool> {
        let up = self.active_up.load(Ordering::Acquire);
        if ok == up {
            self.active_streak.store(0, Ordering::Release);
            return None;
        }
        let streak = self.active_streak.fetch_add(1, Ordering::AcqRel) + 1;
        let needed = if ok { cfg.healthy } else { cfg.unhealthy };
        if streak >= needed {
            self.active_up.store(ok, Ordering::Release);
            self.active_streak.store(0, Ordering::Release);
            return Some(ok);
        }
        None
    }
}

/// Runs the active health check of `pool` until `stop` is cancelled.
pub async fn run_active_checks(pool: Arc<Pool>, cfg: HealthConfig, stop: CancellationToken) {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.timeout));
    connector.set_nodelay(true);
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for b in pool.backends() {
            let ok = probe(&client, &b.addr, &cfg).await;
            if let Some(up) = b.health.record_probe(ok, &cfg) {
                let state = if up { "up" } else { "down" };
                tracing::warn!(upstream = %pool.name(), server = %b.addr, state, source = "active", "upstream server state changed");
            }
        }
    }
}

async fn probe(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>,
    addr: &str,
    cfg: &HealthConfig,
) -> bool {
    let Ok(uri) = format!("http://{addr}{}", cfg.path).parse::<http::Uri>() else {
        return false;
    };
    let check = async {
        let resp = client.get(uri).await.ok()?;
        let status = resp.status();
        // Drain so the pooled connection can be reused by the next probe.
        let _ = resp.into_body().collect().await;
        Some(status.is_success() || status.is_redirection())
    };
    matches!(
        tokio::time::timeout(cfg.timeout, check).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_marks_down_after_max_fails() {
        let h = Health::default();
        assert!(!h.record_failure(2, Duration::from_secs(10)));
        assert!(h.is_up());
        assert!(h.record_failure(2, Duration::from_secs(10)));
        assert!(!h.is_up());
    }

    #[test]
    fn active_thresholds() {
        let cfg = HealthConfig {
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
        };
        let h = Health::default();
        assert_eq!(h.record_probe(false, &cfg), None);
        assert_eq!(h.record_probe(false, &cfg), None);
        assert_eq!(h.record_probe(false, &cfg), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.record_probe(true, &cfg), None);
        assert_eq!(h.record_probe(true, &cfg), Some(true));
        assert!(h.is_up());
    }
}
