//! The algorithms on plain candidates: nginx's WRR sequence, rendezvous
//! movement, least-conn ties, P2C draws with a seeded generator.

use super::*;

#[test]
fn smooth_wrr_is_smooth_and_weighted() {
    let w = SmoothWrr::new(3);
    let seq: Vec<usize> = (0..7)
        .map(|_| w.pick(&[5, 1, 1], |_| true).unwrap())
        .collect();
    // nginx's documented sequence for weights 5,1,1: a a b a c a a
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn smooth_wrr_skips_unusable() {
    let w = SmoothWrr::new(2);
    for _ in 0..5 {
        assert_eq!(w.pick(&[1, 1], |i| i == 1), Some(1));
    }
    assert_eq!(w.pick(&[1, 1], |_| false), None);
}

#[test]
fn smooth_wrr_with_one_server_picks_it_while_usable() {
    let w = SmoothWrr::new(1);
    assert_eq!(w.pick(&[3], |_| true), Some(0));
    assert_eq!(w.pick(&[3], |_| false), None);
    // Grown by a reload to two servers: the sequence starts afresh.
    let seq: Vec<_> = (0..4).map(|_| w.pick(&[1, 1], |_| true)).collect();
    assert_eq!(seq, vec![Some(0), Some(1), Some(0), Some(1)]);
}

#[test]
fn rendezvous_moves_about_one_in_n_plus_one() {
    let three: Vec<u64> = vec![1, 2, 3];
    let four: Vec<u64> = vec![1, 2, 3, 4];
    let mut moved = 0;
    for k in 0..10_000u32 {
        let key = k.to_le_bytes();
        let a = rendezvous(&key, three.iter(), |x| *x, |_| 1).unwrap();
        let b = rendezvous(&key, four.iter(), |x| *x, |_| 1).unwrap();
        if a != b {
            assert_eq!(*b, 4, "a key may only move to the new server");
            moved += 1;
        }
    }
    let frac = f64::from(moved) / 10_000.0;
    assert!(frac > 0.20 && frac <= 0.30, "moved {frac}");
}

struct S(u32, usize);

impl Load for S {
    fn weight(&self) -> u32 {
        self.0
    }
    fn inflight(&self) -> usize {
        self.1
    }
}

/// A small deterministic generator (splitmix64) for the random picks.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(x)
    }
}

#[test]
fn two_choices_draws_by_weight_and_keeps_the_less_loaded() {
    let idle = [S(1, 0), S(3, 0)];
    let mut r = rng(7);
    let mut hits = [0u32; 2];
    // With no load the first draw wins ties, so the pick follows weights.
    for _ in 0..10_000 {
        hits[two_choices(&idle, |_| true, &mut r).unwrap()] += 1;
    }
    assert!((7_000..8_000).contains(&hits[1]), "{hits:?}");
    // Loaded relative to its weight, the heavy server loses whenever the
    // light one is drawn at all: 1 - (3/4)^2 of the time.
    let busy = [S(1, 0), S(3, 9)];
    let light = (0..10_000)
        .filter(|_| two_choices(&busy, |_| true, &mut r) == Some(0))
        .count();
    assert!((4_000..4_800).contains(&light), "{light}");
    assert_eq!(two_choices(&busy, |s| s.0 == 3, &mut r), Some(1));
    assert_eq!(two_choices(&busy, |_| false, &mut r), None);
    assert_eq!(two_choices(&[S(0, 0)], |_| true, &mut r), None);
}

#[test]
fn least_conn_picks_lowest_load_per_weight_and_shares_ties() {
    let wrr = SmoothWrr::new(2);
    let servers = [S(1, 1), S(2, 1)];
    assert_eq!(least_conn(&servers, &[1, 2], &wrr, |_| true), Some(1));
    let tied = [S(1, 1), S(2, 2)];
    let picks: Vec<usize> = (0..3)
        .map(|_| least_conn(&tied, &[1, 2], &wrr, |_| true).unwrap())
        .collect();
    assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    assert_eq!(least_conn(&tied, &[1, 2], &wrr, |_| false), None);
}

/// Loads that other workers change between `least_conn`'s two passes: the
/// server at the minimum in the first is still picked, never "none" (which
/// the pool would answer as every server down).
#[test]
fn least_conn_picks_even_when_loads_move_between_its_passes() {
    struct Moving(std::cell::Cell<usize>);
    impl Load for Moving {
        fn weight(&self) -> u32 {
            1
        }
        fn inflight(&self) -> usize {
            // Each look sees one more request in flight.
            let n = self.0.get();
            self.0.set(n + 1);
            n
        }
    }
    let servers = [Moving(Default::default()), Moving(Default::default())];
    let wrr = SmoothWrr::new(2);
    assert!(least_conn(&servers, &[1, 1], &wrr, |_| true).is_some());
}
