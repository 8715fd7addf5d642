//! Measurement helpers: HDR latency histograms and their percentiles in
//! microseconds, the run clock carried in messages, and RSS / CPU time of the
//! measured processes read from /proc.

use std::time::Instant;

use hdrhistogram::Histogram;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram")
}

pub fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

pub fn us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0
}

pub fn read_rss_kb(pids: &str) -> u64 {
    pids.split(',')
        .filter(|p| !p.is_empty())
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                        l.split_whitespace()
                            .nth(1)
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                })
                .unwrap_or(0)
        })
        .sum()
}

/// User + system CPU time of the given pids in microseconds (from /proc, at the
/// kernel's 100 Hz tick). CPU per message is far less sensitive to other
/// tenants on the machine than messages per second.
pub fn cpu_us(pids: &str) -> u64 {
    pids.split(',')
        .filter(|p| !p.is_empty())
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            // fields 14 and 15 of stat(5); `after` starts at field 3
            let t = |i: usize| {
                f.get(i - 3)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            (t(14) + t(15)) * 10_000
        })
        .sum()
}
