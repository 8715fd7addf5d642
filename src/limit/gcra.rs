//! The generic cell rate algorithm (GCRA), as pure arithmetic on one number
//! per bucket: its theoretical arrival time (TAT). A token bucket of `burst`
//! tokens refilled one per emission interval `T` is the same thing stated
//! differently, but GCRA needs no refill timer and no float: an event at `now`
//! is allowed when `max(tat, now) + T - burst·T <= now`, and then
//! `tat = max(tat, now) + T`. A bucket whose `tat <= now` is full again and
//! carries no information, which is what lets the tables forget idle keys.
//!
//! The same arithmetic runs in Redis for `scope = "cluster"` (see
//! `cluster.rs`), in microseconds there; here times are nanoseconds since an
//! arbitrary start.

use std::time::{Duration, Instant};

/// One limit's parameters, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// `T`: time between two events at the sustained rate.
    emission: u64,
    /// `burst · T`: how far ahead of `now` the TAT may run after an event.
    window: u64,
}

impl Gcra {
    /// `burst` is at least 1 (one event is always allowed on a full bucket).
    pub fn new(emission: Duration, burst: u32) -> Self {
        let emission = u64::try_from(emission.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            emission,
            window: emission.saturating_mul(u64::from(burst.max(1))),
        }
    }

    pub fn emission(&self) -> Duration {
        Duration::from_nanos(self.emission)
    }

    /// Decides an event at `now` on a bucket whose TAT is `tat` (use `now`,
    /// or anything earlier, for a bucket not tracked). `Ok(new_tat)` when it
    /// is allowed; `Err(wait)` in nanoseconds until it would be.
    pub fn decide(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let new_tat = tat.max(now).saturating_add(self.emission);
        let allow_at = new_tat.saturating_sub(self.window);
        if now < allow_at {
            Err(allow_at - now)
        } else {
            Ok(new_tat)
        }
    }
}

/// A single bucket with its own clock: per-connection message rates, where
/// the connection's task is the only user and no table is needed.
#[derive(Debug)]
pub struct Bucket {
    gcra: Gcra,
    start: Instant,
    tat: u64,
}

impl Bucket {
    pub fn new(gcra: Gcra) -> Self {
        Self {
            gcra,
            start: Instant::now(),
            tat: 0,
        }
    }

    /// Takes one token; `Err(wait)` when the bucket is empty.
    pub fn take(&mut self) -> Result<(), Duration> {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match self.gcra.decide(self.tat, now) {
            Ok(t) => {
                self.tat = t;
                Ok(())
            }
            Err(wait) => Err(Duration::from_nanos(wait)),
        }
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_sustained_rate() {
        // 10/s (T = 100 ms), burst 3.
        let g = Gcra::new(Duration::from_millis(100), 3);
        let mut tat = 0;
        let now = 1_000 * MS;
        for _ in 0..3 {
            tat = g.decide(tat, now).expect("within the burst");
        }
        // The fourth waits one emission interval.
        assert_eq!(g.decide(tat, now), Err(100 * MS));
        assert_eq!(g.decide(tat, now + 40 * MS), Err(60 * MS));
        let t = g.decide(tat, now + 100 * MS).expect("one token back");
        assert_eq!(g.decide(t, now + 100 * MS), Err(100 * MS));
    }

    #[test]
    fn a_full_bucket_is_the_same_as_no_bucket() {
        let g = Gcra::new(Duration::from_millis(100), 5);
        let mut tat = 0;
        for i in 0..5 {
            tat = g.decide(tat, 10 * MS * i).unwrap();
        }
        // Long after, the stored TAT is in the past: deciding on it equals
        // deciding on a fresh bucket.
        let later = 10_000 * MS;
        assert!(tat <= later);
        assert_eq!(g.decide(tat, later), g.decide(0, later));
    }

    #[test]
    fn denial_changes_nothing() {
        let g = Gcra::new(Duration::from_secs(1), 1);
        let tat = g.decide(0, 0).unwrap();
        assert!(g.decide(tat, 0).is_err());
        // Hammering while denied does not push the next allowed time out.
        assert_eq!(g.decide(tat, 999 * MS), Err(MS));
        assert!(g.decide(tat, 1000 * MS).is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(59)), 59);
    }

    #[test]
    fn bucket_takes_burst() {
        let mut b = Bucket::new(Gcra::new(Duration::from_secs(60), 2));
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        let wait = b.take().unwrap_err();
        assert!(wait > Duration::from_secs(59), "{wait:?}");
    }

    proptest::proptest! {
        /// Over any window of length d, no more than burst + d/T events pass.
        #[test]
        fn never_more_than_burst_plus_rate(
            burst in 1u32..20,
            t_ms in 1u64..200,
            gaps in proptest::collection::vec(0u64..50, 1..300),
        ) {
            let g = Gcra::new(Duration::from_millis(t_ms), burst);
            let mut tat = 0;
            let mut now = 0;
            let mut passed = Vec::new();
            for gap in gaps {
                now += gap * MS;
                if let Ok(t) = g.decide(tat, now) {
                    tat = t;
                    passed.push(now);
                }
            }
            for (i, start) in passed.iter().enumerate() {
                for (j, end) in passed.iter().enumerate().skip(i) {
                    let n = (j - i + 1) as u64;
                    let bound = u64::from(burst) + (end - start) / (t_ms * MS);
                    proptest::prop_assert!(n <= bound, "{n} events in {} ns", end - start);
                }
            }
        }
    }
}
