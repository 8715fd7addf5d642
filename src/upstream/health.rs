//! Per-server health, fed by two sources:
//!
//! - **passive**: failures seen by real traffic (connect errors, timeouts,
//!   broken responses). `max_fails` of them within `fail_timeout` mark the
//!   server down for `fail_timeout`. When that period ends the server is back on
//!   *probation*: its next failure marks it down again at once (nginx behaves the
//!   same way), its next success clears the record.
//! - **active**: a background `GET path` every `interval` ([`run_active_checks`]);
//!   a 2xx/3xx answer within `timeout` passes; `unhealthy` consecutive failures
//!   take the server down, `healthy` consecutive passes bring it back.
//!
//! A server is usable when neither source holds it down. Balancing and
//! stickiness only consult [`Health::check`], which is lock-free; the state
//! changes themselves are reported back as [`Transition`]s so that the pool, which
//! knows the upstream's name, can log them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use super::pool::Pool;
use crate::config::HealthConfig;

/// Which mechanism changed a server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Active,
    Passive,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Active => "active",
            Source::Passive => "passive",
        }
    }
}

/// One source's verdict on a server changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The source's new verdict.
    pub up: bool,
    pub source: Source,
}

#[derive(Debug)]
pub struct Health {
    /// Active checks' verdict (true when no active check is configured, and at
    /// start: a new server gets traffic until proven bad).
    active_up: AtomicBool,
    /// Consecutive probe results disagreeing with `active_up`.
    active_streak: AtomicU32,
    /// Passive down deadline as [`ticks`] (0 = not down). An atomic so that the
    /// hot path (`check` on every selection) takes no lock.
    down_until: AtomicU64,
    /// Set while `passive` holds something `record_success` must clear, so a
    /// success on a healthy server takes no lock either.
    dirty: AtomicBool,
    passive: Mutex<Passive>,
}

#[derive(Debug, Default)]
struct Passive {
    window_start: Option<Instant>,
    fails: u32,
    /// Came back from a passive down period and has not succeeded since.
    probation: bool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            active_up: AtomicBool::new(true),
            active_streak: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            passive: Mutex::new(Passive::default()),
        }
    }
}

/// Milliseconds since a process-wide base, plus one so a real deadline is never
/// the 0 that means "not down".
fn ticks(t: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(t.saturating_duration_since(base).as_millis()).unwrap_or(u64::MAX - 1) + 1
}

impl Health {
    /// Is the server usable at `now`? Also returns the passive recovery when
    /// this call is the one that notices the down period has ended (exactly one
    /// caller does, so it is logged once).
    pub fn check(&self, now: Instant) -> (bool, Option<Transition>) {
        let mut change = None;
        let until = self.down_until.load(Ordering::Acquire);
        let passive_up = until == 0 || {
            let expired = ticks(now) >= until;
            if expired
                && self
                    .down_until
                    .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                let mut p = self.lock();
                *p = Passive {
                    window_start: None,
                    fails: 0,
                    probation: true,
                };
                self.dirty.store(true, Ordering::Release);
                change = Some(Transition {
                    up: true,
                    source: Source::Passive,
                });
            }
            expired
        };
        (passive_up && self.active_up.load(Ordering::Acquire), change)
    }

    /// The state at `now` without side effects: a passive period that ended is
    /// seen as over, but its recovery is left for [`Health::check`] to report.
    pub fn peek(&self, now: Instant) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        (until == 0 || ticks(now) >= until) && self.active_up.load(Ordering::Acquire)
    }

    /// True while the server is up (ignoring transitions; for tests and status).
    pub fn is_up(&self) -> bool {
        self.check(Instant::now()).0
    }

    /// The active checks' current verdict.
    pub fn active_up(&self) -> bool {
        self.active_up.load(Ordering::Acquire)
    }

    /// How much longer passive health holds the server down, if it does.
    pub fn passive_down_for(&self, now: Instant) -> Option<Duration> {
        let until = self.down_until.load(Ordering::Acquire);
        let left = until
            .checked_sub(ticks(now))
            .filter(|l| *l > 0 && until != 0)?;
        Some(Duration::from_millis(left))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Passive> {
        // The state is a few counters: still meaningful after a panic elsewhere.
        self.passive.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_down(&self, p: &mut Passive, now: Instant, fail_timeout: Duration) {
        *p = Passive::default();
        self.down_until
            .store(ticks(now + fail_timeout), Ordering::Release);
    }

    /// Records a failed attempt at `now`. Returns the transition when this
    /// failure marked the server down. `max_fails = 0` disables passive health.
    pub fn record_failure(
        &self,
        max_fails: u32,
        fail_timeout: Duration,
        now: Instant,
    ) -> Option<Transition> {
        if max_fails == 0 {
            return None;
        }
        let mut p = self.lock();
        let until = self.down_until.load(Ordering::Acquire);
        if until != 0 {
            if ticks(now) < until {
                // Already down: requests that were in flight when it went down
                // must not extend the period.
                return None;
            }
            // The period ended without any selection noticing, so the recovery
            // was never reported: this failure is a failed probation, and the
            // server simply stays down.
            self.mark_down(&mut p, now, fail_timeout);
            return None;
        }
        self.dirty.store(true, Ordering::Release);
        if p.probation {
            self.mark_down(&mut p, now, fail_timeout);
            return Some(Transition {
                up: false,
                source: Source::Passive,
            });
        }
        if p.window_start
            .is_none_or(|s| now.saturating_duration_since(s) > fail_timeout)
        {
            p.window_start = Some(now);
            p.fails = 0;
        }
        p.fails += 1;
        if p.fails >= max_fails {
            self.mark_down(&mut p, now, fail_timeout);
            return Some(Transition {
                up: false,
                source: Source::Passive,
            });
        }
        None
    }

    /// A success clears the failure count and ends probation (nginx does the same).
    pub fn record_success(&self) {
        if self.dirty.swap(false, Ordering::AcqRel) {
            let mut p = self.lock();
            p.fails = 0;
            p.window_start = None;
            p.probation = false;
        }
    }

    /// Feeds one active-check result; returns the transition when the
    /// `healthy`/`unhealthy` threshold was reached.
    pub fn record_probe(&self, ok: bool, cfg: &HealthConfig) -> Option<Transition> {
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
            return Some(Transition {
                up: ok,
                source: Source::Active,
            });
        }
        None
    }
}

type ProbeClient = Client<HttpConnector, Empty<bytes::Bytes>>;

/// Runs the active health check of `pool` until `stop` is cancelled. The first
/// round starts at once; servers are probed concurrently so one slow server does
/// not delay the verdict on the others.
pub async fn run_active_checks(pool: Arc<Pool>, cfg: HealthConfig, stop: CancellationToken) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.timeout));
    connector.set_nodelay(true);
    let client: ProbeClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let round = join_all(pool.backends().iter().map(|b| {
            let client = &client;
            let cfg = &cfg;
            async move { (b, probe(client, &b.addr, cfg).await) }
        }));
        let results = tokio::select! {
            _ = stop.cancelled() => return,
            r = round => r,
        };
        for (b, ok) in results {
            if let Some(t) = b.health().record_probe(ok, &cfg) {
                pool.log_transition(b, t);
            }
        }
    }
}

/// One probe: `GET path`, passing on 2xx/3xx within `timeout`.
async fn probe(client: &ProbeClient, addr: &str, cfg: &HealthConfig) -> bool {
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

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn passive_marks_down_after_max_fails_then_recovers_on_probation() {
        let h = Health::default();
        let t0 = Instant::now();
        assert_eq!(h.record_failure(2, T, t0), None);
        assert!(h.check(t0).0);
        assert_eq!(
            h.record_failure(2, T, t0),
            Some(Transition {
                up: false,
                source: Source::Passive
            })
        );
        assert!(!h.check(t0).0);
        assert!(h.passive_down_for(t0).is_some());
        // Stragglers do not extend the period.
        assert_eq!(h.record_failure(2, T, t0 + Duration::from_secs(5)), None);
        let later = t0 + T + Duration::from_millis(5);
        assert_eq!(
            h.check(later),
            (
                true,
                Some(Transition {
                    up: true,
                    source: Source::Passive
                })
            )
        );
        assert_eq!(
            h.check(later),
            (true, None),
            "the recovery is reported once"
        );
        // On probation one failure is enough.
        assert_eq!(
            h.record_failure(2, T, later),
            Some(Transition {
                up: false,
                source: Source::Passive
            })
        );
        assert!(!h.check(later).0);
    }

    #[test]
    fn success_clears_failures_and_probation() {
        let h = Health::default();
        let t0 = Instant::now();
        assert_eq!(h.record_failure(2, T, t0), None);
        h.record_success();
        assert_eq!(
            h.record_failure(2, T, t0),
            None,
            "count restarted after a success"
        );
        assert!(h.record_failure(2, T, t0).is_some());
        let later = t0 + T + Duration::from_millis(5);
        assert!(h.check(later).0);
        h.record_success();
        assert_eq!(
            h.record_failure(2, T, later),
            None,
            "probation ended by the success"
        );
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let h = Health::default();
        let t0 = Instant::now();
        assert_eq!(h.record_failure(2, T, t0), None);
        assert_eq!(
            h.record_failure(2, T, t0 + T + Duration::from_secs(1)),
            None
        );
        assert!(h.check(t0 + T + Duration::from_secs(1)).0);
    }

    #[test]
    fn max_fails_zero_disables_passive() {
        let h = Health::default();
        for _ in 0..10 {
            assert_eq!(h.record_failure(0, T, Instant::now()), None);
        }
        assert!(h.is_up());
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
        assert_eq!(
            h.record_probe(true, &cfg),
            None,
            "a pass breaks the failure streak"
        );
        assert_eq!(h.record_probe(false, &cfg), None);
        assert_eq!(h.record_probe(false, &cfg), None);
        assert_eq!(
            h.record_probe(false, &cfg),
            Some(Transition {
                up: false,
                source: Source::Active
            })
        );
        assert!(!h.is_up());
        assert_eq!(h.record_probe(true, &cfg), None);
        assert_eq!(
            h.record_probe(true, &cfg),
            Some(Transition {
                up: true,
                source: Source::Active
            })
        );
        assert!(h.is_up());
    }
}
