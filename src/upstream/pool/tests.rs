//! Pool selection end to end on real pools: rendezvous movement and weights,
//! balancing with health, cookie affinity, transition logs, reload carry-over.

use std::time::Duration;

use super::*;
use crate::config::ServerEntry;
use crate::logging::tests::logs_of;
use crate::upstream::backend::InflightGuard;

const SECRET: [u8; 32] = [3; 32];

fn cfg(servers: &[(&str, u32)], balance: Balance, sticky: Sticky) -> UpstreamConfig {
    UpstreamConfig {
        name: "api".into(),
        servers: servers
            .iter()
            .map(|(a, w)| ServerEntry {
                addr: a.to_string(),
                weight: *w,
                max_conns: 0,
            })
            .collect(),
        balance,
        sticky,
        sticky_cookie: "wsgate_sticky".into(),
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        ws_idle_timeout: Duration::from_secs(1),
        max_fails: 1,
        fail_timeout: Duration::from_secs(60),
        retries: 1,
        health: None,
        ws_inspect: false,
        ws_max_message_size: 1 << 20,
        ws_ping_interval: Duration::ZERO,
        ws_message_rate: None,
        tls: None,
        protocol: Default::default(),
    }
}

fn addrs(n: usize) -> Vec<(String, u32)> {
    (0..n)
        .map(|i| (format!("10.0.0.{}:80", i + 1), 1))
        .collect()
}

fn pool_of(servers: &[(String, u32)], balance: Balance, sticky: Sticky) -> Pool {
    let s: Vec<(&str, u32)> = servers.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    Pool::new(cfg(&s, balance, sticky), None, &SECRET).expect("pool")
}

fn pick(p: &Pool, key: &[u8]) -> String {
    p.select(&Affinity::Hash(key.to_vec()), &[])
        .map(|c| c.backend.addr.to_string())
        .unwrap_or_default()
}

/// Issue 5's movement figure, on real pools and real backend ids: adding a
/// fourth server to three must move about 1/4 of the keys, and only to it.
#[test]
fn consistent_hash_moves_about_a_quarter_of_keys_from_three_to_four() {
    let three = pool_of(&addrs(3), Balance::RoundRobin, Sticky::Ip);
    let four = pool_of(&addrs(4), Balance::RoundRobin, Sticky::Ip);
    let new = &addrs(4)[3].0;
    let mut moved = 0u32;
    for k in 0..10_000u32 {
        let key = format!("user-{k}");
        let (a, b) = (pick(&three, key.as_bytes()), pick(&four, key.as_bytes()));
        if a != b {
            assert_eq!(&b, new, "a key may only move to the new server");
            moved += 1;
        }
    }
    let frac = f64::from(moved) / 10_000.0;
    println!(
        "rendezvous 3 -> 4 servers: {moved} of 10000 keys moved ({:.2}%)",
        frac * 100.0
    );
    assert!(frac > 0.20 && frac <= 0.30, "moved {frac}");
}

#[test]
fn hashing_respects_weights() {
    let servers = vec![
        ("10.0.0.1:80".to_string(), 1),
        ("10.0.0.2:80".to_string(), 3),
    ];
    let p = pool_of(&servers, Balance::RoundRobin, Sticky::Ip);
    let heavy = (0..10_000u32)
        .filter(|k| pick(&p, &k.to_le_bytes()) == "10.0.0.2:80")
        .count();
    // Expect 75%.
    assert!((7_000..8_000).contains(&heavy), "weight 3 of 4 got {heavy}");
}

#[test]
fn hashing_skips_down_and_excluded_servers_only_for_their_keys() {
    let p = pool_of(&addrs(3), Balance::RoundRobin, Sticky::Ip);
    let before: Vec<String> = (0..300u32).map(|k| pick(&p, &k.to_le_bytes())).collect();
    let down = p.backends()[0].clone();
    p.report_failure(&down);
    for (k, was) in before.iter().enumerate() {
        let now = pick(&p, &(k as u32).to_le_bytes());
        assert_ne!(now, &*down.addr);
        if *was != *down.addr {
            assert_eq!(&now, was, "keys of healthy servers stay put");
        }
    }
    let aff = Affinity::Hash(b"k".to_vec());
    let first = p.select(&aff, &[]).unwrap().backend.id;
    let second = p.select(&aff, &[first]).unwrap().backend.id;
    assert_ne!(first, second);
}

#[test]
fn round_robin_follows_weights_and_skips_down() {
    let servers = vec![
        ("a:1".to_string(), 5),
        ("b:1".to_string(), 1),
        ("c:1".to_string(), 1),
    ];
    let p = pool_of(&servers, Balance::RoundRobin, Sticky::None);
    let seq: Vec<String> = (0..7)
        .map(|_| {
            p.select(&Affinity::None, &[])
                .unwrap()
                .backend
                .addr
                .to_string()
        })
        .collect();
    assert_eq!(seq, ["a:1", "a:1", "b:1", "a:1", "c:1", "a:1", "a:1"]);
    p.report_failure(&p.backends()[0].clone());
    for _ in 0..10 {
        assert_ne!(
            &*p.select(&Affinity::None, &[]).unwrap().backend.addr,
            "a:1"
        );
    }
}

#[test]
fn least_conn_prefers_lower_load_per_weight() {
    let servers = vec![("a:1".to_string(), 1), ("b:1".to_string(), 2)];
    let p = pool_of(&servers, Balance::LeastConn, Sticky::None);
    let (a, b) = (p.backends()[0].clone(), p.backends()[1].clone());
    let _g1 = a.track();
    assert_eq!(p.select(&Affinity::None, &[]).unwrap().backend.id, b.id);
    let _g2 = b.track();
    // a: 1/1, b: 1/2 → b still less loaded.
    assert_eq!(p.select(&Affinity::None, &[]).unwrap().backend.id, b.id);
    let _g3 = b.track();
    // a: 1/1, b: 2/2 → tie, both get picks.
    let picks: Vec<BackendId> = (0..6)
        .map(|_| p.select(&Affinity::None, &[]).unwrap().backend.id)
        .collect();
    assert!(picks.contains(&a.id) && picks.contains(&b.id));
}

#[test]
fn random_spreads_by_weight_and_avoids_load() {
    let servers = vec![
        ("a:1".to_string(), 1),
        ("b:1".to_string(), 1),
        ("c:1".to_string(), 1),
    ];
    let p = pool_of(&servers, Balance::Random, Sticky::None);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..3_000 {
        *counts
            .entry(
                p.select(&Affinity::None, &[])
                    .unwrap()
                    .backend
                    .addr
                    .to_string(),
            )
            .or_insert(0) += 1;
    }
    assert!(counts.values().all(|c| *c > 500), "{counts:?}");
    // A busy server only wins when drawn twice: about 1/9 of the time.
    let busy = p.backends()[0].clone();
    let _g: Vec<InflightGuard> = (0..5).map(|_| busy.track()).collect();
    let hits = (0..3_000)
        .filter(|_| p.select(&Affinity::None, &[]).unwrap().backend.id == busy.id)
        .count();
    assert!(hits < 600, "busy server picked {hits} times");
}

#[test]
fn cookie_affinity_pins_and_replaces_bad_tokens() {
    let p = pool_of(&addrs(3), Balance::RoundRobin, Sticky::Cookie);
    let target = p.backends()[2].clone();
    let now = sticky::now();
    let token = sticky::encode(p.seal_key(), target.id, now + sticky::TOKEN_TTL.as_secs());
    let mut h = HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&format!("wsgate_sticky={token}")).unwrap(),
    );
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let aff = p.affinity(ip, &h, None);
    for _ in 0..10 {
        let c = p.select(&aff, &[]).unwrap();
        assert_eq!(c.backend.id, target.id);
        assert!(!c.issue_cookie);
        assert!(p.sticky_cookie(&c, false).is_none());
    }
    // A token naming a server that is not in the pool.
    let stranger = sticky::encode(p.seal_key(), BackendId::of("10.9.9.9:1"), now + 100);
    h.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&format!("wsgate_sticky={stranger}")).unwrap(),
    );
    let c = p.select(&p.affinity(ip, &h, None), &[]).unwrap();
    assert!(c.issue_cookie);
    assert!(p.sticky_cookie(&c, false).is_some());
    // The pinned server goes down.
    p.report_failure(&target);
    let c = p.select(&aff, &[]).unwrap();
    assert_ne!(c.backend.id, target.id);
    assert!(c.issue_cookie);
}

#[test]
fn every_transition_is_logged_with_upstream_server_state_and_source() {
    let mut c = cfg(&[("10.0.0.1:80", 1)], Balance::RoundRobin, Sticky::None);
    c.fail_timeout = Duration::from_millis(1);
    let hc = crate::config::HealthConfig {
        path: "/".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        healthy: 1,
        unhealthy: 1,
    };
    let p = Pool::new(c, None, &SECRET).expect("pool");
    let b = p.backends()[0].clone();
    let down = logs_of(|| p.report_failure(&b));
    assert!(
        down.contains("WARN")
            && down.contains("upstream=api")
            && down.contains("server=10.0.0.1:80")
    );
    assert!(
        down.contains(r#"state="down""#) && down.contains(r#"source="passive""#),
        "{down}"
    );
    // The passive period (1 ms) ends; the next look reports the recovery once.
    let start = Instant::now();
    while !b.health().peek(Instant::now()) && start.elapsed() < Duration::from_secs(5) {
        std::thread::yield_now();
    }
    let up = logs_of(|| {
        p.is_up(&b);
        p.is_up(&b);
    });
    assert_eq!(
        up.matches(r#"state="up" source="passive""#).count(),
        1,
        "{up}"
    );
    let active = logs_of(|| {
        if let Some(t) = b.health().record_probe(false, &hc) {
            p.log_transition(&b, t);
        }
    });
    assert!(
        active.contains(r#"state="down" source="active" usable=false"#),
        "{active}"
    );
}

#[test]
fn all_down_selects_nothing() {
    let p = pool_of(&addrs(2), Balance::LeastConn, Sticky::None);
    for b in p.backends().to_vec() {
        p.report_failure(&b);
    }
    assert_eq!(
        p.select(&Affinity::None, &[]).err(),
        Some(Unavailable::Down)
    );
    let hashed = p.select(&Affinity::Hash(b"x".to_vec()), &[]);
    assert_eq!(hashed.err(), Some(Unavailable::Down));
    let now = Instant::now();
    assert!(p
        .backends()
        .iter()
        .all(|b| !p.is_up(b) && b.health().passive_down_for(now).is_some()));
}

#[test]
fn reload_keeps_state_of_servers_that_stay() {
    let p = pool_of(&addrs(2), Balance::RoundRobin, Sticky::None);
    let b = p.backends()[1].clone();
    p.report_failure(&b);
    let _g = b.track();
    let mut servers = addrs(3);
    servers[1].1 = 5; // weight changed: still the same server
    servers.swap(0, 2);
    let s: Vec<(&str, u32)> = servers.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    let q = Pool::new(
        cfg(&s, Balance::RoundRobin, Sticky::None),
        Some(&p),
        &SECRET,
    )
    .expect("pool");
    let same = q.backend(b.id).unwrap();
    assert_eq!(same.weight, 5);
    assert_eq!(same.inflight(), 1);
    assert!(!same.health().is_up());
}

fn pool_with_max(n: usize, max_conns: u32, balance: Balance, sticky: Sticky) -> Pool {
    let servers = addrs(n);
    let s: Vec<(&str, u32)> = servers.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    let mut c = cfg(&s, balance, sticky);
    c.servers.iter_mut().for_each(|e| e.max_conns = max_conns);
    Pool::new(c, None, &SECRET).expect("pool")
}

#[test]
fn a_server_at_max_conns_is_passed_over_until_a_place_frees() {
    for balance in [Balance::RoundRobin, Balance::LeastConn, Balance::Random] {
        let p = pool_with_max(2, 1, balance, Sticky::None);
        let first = p.select(&Affinity::None, &[]).expect("a server");
        let second = p.select(&Affinity::None, &[]).expect("the other server");
        assert_ne!(first.backend.id, second.backend.id, "{balance:?}");
        // Both are up, both are full: 503, not "all down".
        assert_eq!(
            p.select(&Affinity::None, &[]).err(),
            Some(Unavailable::Full)
        );
        let freed = first.backend.id;
        drop(first);
        let again = p.select(&Affinity::None, &[]).expect("the freed place");
        assert_eq!(again.backend.id, freed, "{balance:?}");
    }
}

#[test]
fn full_and_down_servers_together_are_full_and_a_full_key_moves_only_while_full() {
    let p = pool_with_max(2, 1, Balance::RoundRobin, Sticky::Ip);
    let key = Affinity::Hash(b"user-1".to_vec());
    let home = p.select(&key, &[]).expect("home").backend.id;
    let held = p.select(&key, &[]).expect("home is free again");
    assert_eq!(held.backend.id, home);
    // The key's server is full: it goes to the other for now...
    let away = p.select(&key, &[]).expect("the other server");
    assert_ne!(away.backend.id, home);
    drop((held, away));
    // ...and back once there is room.
    assert_eq!(p.select(&key, &[]).expect("home").backend.id, home);
    let other = p.backends().iter().find(|b| b.id != home).cloned();
    p.report_failure(&other.expect("two servers"));
    let _held = p.select(&key, &[]).expect("home");
    assert_eq!(p.select(&key, &[]).err(), Some(Unavailable::Full));
}

/// The look and the count are one step: threads racing for the last places
/// never hold more than `max_conns` at once.
#[test]
fn concurrent_requests_never_exceed_max_conns() {
    let p = std::sync::Arc::new(pool_with_max(1, 1, Balance::RoundRobin, Sticky::None));
    let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (p, over) = (p.clone(), over.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    if let Ok(c) = p.select(&Affinity::None, &[]) {
                        if c.backend.inflight() > 1 {
                            over.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert!(!over.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(p.backends()[0].inflight(), 0);
}

#[test]
fn try_track_refuses_at_max_conns_and_takes_a_freed_place() {
    let p = pool_with_max(1, 2, Balance::RoundRobin, Sticky::None);
    let b = p.backends()[0].clone();
    let held: Vec<InflightGuard> = (0..2).map(|_| b.try_track().expect("a place")).collect();
    assert!(b.try_track().is_none() && b.is_full());
    drop(held.into_iter().next());
    assert!(b.try_track().is_some());
}

/// A cookie-pinned client whose server is up but full is served elsewhere
/// for now and keeps its pin; one whose server is down is re-pinned.
#[test]
fn a_full_pinned_server_keeps_its_cookie() {
    let p = pool_with_max(2, 1, Balance::RoundRobin, Sticky::Cookie);
    let home = p.backends()[0].clone();
    let now = sticky::now();
    let token = sticky::encode(p.seal_key(), home.id, now + sticky::TOKEN_TTL.as_secs());
    let aff = Affinity::Cookie {
        tokens: vec![sticky::decode(p.seal_key(), &token, now).expect("token")],
        now,
    };
    let held = p.select(&aff, &[]).expect("home");
    assert_eq!(held.backend.id, home.id);
    let away = p.select(&aff, &[]).expect("the other server");
    assert_ne!(away.backend.id, home.id);
    assert!(!away.issue_cookie && p.sticky_cookie(&away, false).is_none());
    drop((held, away));
    p.report_failure(&home);
    assert!(p.select(&aff, &[]).expect("the other server").issue_cookie);
}
