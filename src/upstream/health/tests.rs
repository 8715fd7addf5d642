//! Passive and active health state machines, driven with explicit instants.

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
