//! Unit tests of the metrics: series handles and labels.

use super::*;

fn series(family: &Family<RouteStatus, Counter>, status: u16) -> Counter {
    family
        .get_or_create(&RouteStatus {
            route: "r".into(),
            status,
        })
        .clone()
}

#[test]
fn status_counters_count_every_status_from_racing_threads() {
    let family = Family::<RouteStatus, Counter>::default();
    let counters = StatusCounters::default();
    let lookups = AtomicU64::new(0);
    // More distinct statuses than slots: the extra ones are still counted.
    let statuses = 200..(200 + 2 * STATUS_SLOTS as u16);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100 {
                    for status in statuses.clone() {
                        counters.inc(status, || {
                            lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            series(&family, status)
                        });
                    }
                }
            });
        }
    });
    for status in statuses {
        assert_eq!(series(&family, status).get(), 400, "status {status}");
    }
    // Cached statuses were looked up about once each, the others every time.
    let extra = 4 * 100 * STATUS_SLOTS as u64;
    let n = lookups.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n >= extra && n < extra + 4 * 100, "{n} lookups");
}

#[test]
fn close_codes_are_labelled_by_what_rfc_6455_defines() {
    let code = |c| RouteCode::new("/r".into(), c).code;
    assert_eq!(code(1000), "1000");
    assert_eq!(code(1015), "1015");
    assert_eq!(code(3003), "3xxx");
    assert_eq!(code(4321), "4xxx");
    assert_eq!(code(4001), "4001");
    assert_eq!(code(1016), "other");
    assert_eq!(code(0), "other");
}
