//! Per-server health, fed by two sources:
//!
//! - **passive**: failures seen by real traffic (connect errors, timeouts,
//!   broken responses). `max_fails` of them within `fail_timeout` mark the
//!   server down for `fail_timeout`. When that period ends the server is back on
//!   *probation*: its next failure marks it down again at once (nginx behaves the
//!   same way), its next success clears the record.
//! - **active**: a background `GET path` every `interval` (the probes live in
//!   `upstream::probe`, which feeds [`Health::record_probe`]); a 2xx/3xx answer
//!   within `timeout` passes; `unhealthy` consecutive failures take the server
//!   down, `healthy` consecutive passes bring it back.
//!
//! A server is usable when neither source holds it down. Balancing and
//! stickiness only consult [`Health::check`], which is lock-free; the state
//! changes themselves are reported back as [`Transition`]s so that the pool, which
//! knows the upstream's name, can log them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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
        // A load first: most successes find nothing to clear, and a swap
        // would write the flag's line on every one of them.
        if self.dirty.load(Ordering::Acquire) && self.dirty.swap(false, Ordering::AcqRel) {
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

#[cfg(test)]
mod tests;
