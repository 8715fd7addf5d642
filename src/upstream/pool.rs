//! A pool of upstream servers for one `[upstream.NAME]`: the servers with their
//! stable ids, load counters and health, the balancing state, and the pooled
//! keep-alive connections used to reach them.
//!
//! The proxy asks a pool for a server in two steps: [`Pool::affinity`] reads what
//! the request carries that may pin it (a sealed cookie, the client address, a
//! header or query value), then [`Pool::select`] picks a usable server, honouring
//! that affinity when it can and falling back to `balance` when it cannot. After
//! the attempt the proxy reports back ([`Pool::report_success`] /
//! [`Pool::report_failure`]), which feeds passive health.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

use super::balance::{rendezvous, stable_hash, SmoothWrr};
use super::conns::ConnPool;
use super::health::{Health, Source, Transition};
use super::sticky::{self, SealKey, Token};
use crate::config::{Balance, Sticky, UpstreamConfig};
use crate::metrics::StatusCounters;

/// A server's identity, derived from its address (never its position in the
/// list), so reordering the config or adding servers keeps sticky ids valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId(pub u64);

impl BackendId {
    pub fn of(addr: &str) -> Self {
        BackendId(stable_hash(&[b"wsgate-backend", addr.as_bytes()]))
    }
}

/// What outlives a reload for a server that stays: its load and its health.
#[derive(Debug, Default)]
struct BackendState {
    /// In-flight HTTP requests plus open spliced sessions (for `least_conn`).
    inflight: AtomicUsize,
    health: Health,
}

#[derive(Debug)]
pub struct Backend {
    pub id: BackendId,
    /// `host:port`.
    pub addr: String,
    pub weight: u32,
    state: Arc<BackendState>,
    /// Idle keep-alive HTTP connections to it.
    pub conns: Arc<ConnPool>,
    /// `wsgate_upstream_requests_total` counters of this server by status.
    pub requests: StatusCounters,
}

/// Counts one request or session against a backend while alive.
#[derive(Debug)]
pub struct InflightGuard(Arc<BackendState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Backend {
    pub fn inflight(&self) -> usize {
        self.state.inflight.load(Ordering::Acquire)
    }

    /// Counts a request or session until the guard is dropped.
    pub fn track(&self) -> InflightGuard {
        self.state.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.state.clone())
    }

    pub fn health(&self) -> &Health {
        &self.state.health
    }
}

/// What a request carries that may pin it to a server.
#[derive(Debug, Clone, Default)]
pub enum Affinity {
    /// Nothing: `balance` decides.
    #[default]
    None,
    /// `ip`, `header:NAME`, `query:NAME`: rendezvous-hash this key.
    Hash(Vec<u8>),
    /// `cookie`: the authentic, unexpired tokens the request presented (usually
    /// zero or one), read at `now` (unix seconds).
    Cookie { tokens: Vec<Token>, now: u64 },
}

/// The server chosen for one attempt.
#[derive(Debug, Clone)]
pub struct Choice {
    pub backend: Arc<Backend>,
    /// The response must carry a (new) sticky cookie naming `backend`: the
    /// request had no usable token, or its token is due for renewal.
    pub issue_cookie: bool,
}

/// Up or down, for status pages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Up,
    Down,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
        }
    }
}

/// One server's state as [`Pool::status`] reports it.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    pub id: BackendId,
    pub addr: String,
    pub weight: u32,
    /// Whether balancing and stickiness may use it.
    pub state: ServerState,
    /// The active check's verdict; `None` when no `[upstream.X.health]` is set.
    pub active_up: Option<bool>,
    /// How much longer passive health holds it down.
    pub passive_down_for: Option<Duration>,
    /// In-flight requests plus open spliced sessions.
    pub inflight: usize,
}

pub struct Pool {
    pub cfg: UpstreamConfig,
    backends: Vec<Arc<Backend>>,
    weights: Vec<u32>,
    wrr: SmoothWrr,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.cfg.name)
            .field("backends", &self.backends)
            .finish()
    }
}

impl Pool {
    /// Builds a pool. `previous` lets a reload keep health state and in-flight
    /// counts for servers that stay (matched by id, so by address).
    pub fn new(cfg: UpstreamConfig, previous: Option<&Pool>) -> Self {
        let backends: Vec<Arc<Backend>> = cfg
            .servers
            .iter()
            .map(|s| {
                let id = BackendId::of(&s.addr);
                let state = previous
                    .and_then(|p| p.backend(id))
                    .map(|old| old.state.clone())
                    .unwrap_or_default();
                Arc::new(Backend {
                    id,
                    addr: s.addr.clone(),
                    weight: s.weight,
                    state,
                    conns: ConnPool::new(s.addr.clone(), cfg.connect_timeout),
                    requests: StatusCounters::default(),
                })
            })
            .collect();
        let weights = backends.iter().map(|b| b.weight).collect();
        Self {
            wrr: SmoothWrr::new(backends.len()),
            weights,
            backends,
            cfg,
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn backend(&self, id: BackendId) -> Option<Arc<Backend>> {
        self.backends.iter().find(|b| b.id == id).cloned()
    }

    /// The key sealing this pool's cookies, derived from the gateway's secret.
    pub fn seal_key(&self, secret: &[u8; 32]) -> SealKey {
        SealKey::derive(secret, &self.cfg.name)
    }

    /// Reads the request's affinity under this pool's `sticky` mode.
    pub fn affinity(
        &self,
        secret: &[u8; 32],
        client: IpAddr,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Affinity {
        match &self.cfg.sticky {
            Sticky::Cookie => {
                let now = sticky::now();
                let tokens = sticky::tokens_in(
                    headers,
                    &self.cfg.sticky_cookie,
                    &self.seal_key(secret),
                    now,
                );
                Affinity::Cookie { tokens, now }
            }
            mode => sticky::hash_key(mode, client, headers, query)
                .map_or(Affinity::None, Affinity::Hash),
        }
    }

    /// Chooses a usable server not in `exclude` (the servers already tried for
    /// this request). `None` when every candidate is down: the caller answers
    /// 502 at once rather than waiting for one to come back.
    pub fn select(&self, affinity: &Affinity, exclude: &[BackendId]) -> Option<Choice> {
        let usable = |b: &Backend| !exclude.contains(&b.id) && self.is_up(b);
        match affinity {
            Affinity::Cookie { tokens, now } => {
                // A token naming a server that is gone, down or already tried
                // is ignored: choose again and issue a new cookie.
                let pinned = tokens.iter().find_map(|t| {
                    self.backend(t.backend)
                        .filter(|b| usable(b))
                        .map(|b| (b, t.needs_refresh(*now)))
                });
                match pinned {
                    Some((backend, refresh)) => Some(Choice {
                        backend,
                        issue_cookie: refresh,
                    }),
                    None => self.balance(usable).map(|backend| Choice {
                        backend,
                        issue_cookie: true,
                    }),
                }
            }
            Affinity::Hash(key) => {
                // Fixed weights, health filter: a key only moves when its server
                // goes down (and comes back when it returns).
                let cands = self.backends.iter().filter(|b| usable(b));
                rendezvous(key, cands, |b| b.id.0, |b| b.weight).map(|b| Choice {
                    backend: b.clone(),
                    issue_cookie: false,
                })
            }
            Affinity::None => self.balance(usable).map(|backend| Choice {
                backend,
                issue_cookie: false,
            }),
        }
    }

    /// The `Set-Cookie` value a response must carry for `choice`, if any.
    pub fn sticky_cookie(
        &self,
        secret: &[u8; 32],
        choice: &Choice,
        secure: bool,
    ) -> Option<HeaderValue> {
        if !choice.issue_cookie || self.cfg.sticky != Sticky::Cookie {
            return None;
        }
        sticky::set_cookie(
            &self.cfg.sticky_cookie,
            &self.seal_key(secret),
            choice.backend.id,
            sticky::now(),
            secure,
        )
    }

    fn balance(&self, usable: impl Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        match self.cfg.balance {
            Balance::RoundRobin => self
                .wrr
                .pick(&self.weights, |i| usable(&self.backends[i]))
                .map(|i| self.backends[i].clone()),
            Balance::LeastConn => self.least_conn(usable),
            Balance::Random => self.two_choices(usable),
        }
    }

    /// Lowest `inflight / weight`; ties broken by smooth weighted round robin so
    /// equally loaded servers share by weight (nginx's `least_conn`).
    fn least_conn(&self, usable: impl Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        // Compared as inflight_a * weight_b < inflight_b * weight_a, scaled to
        // one common integer so ties are exact.
        let load = |b: &Backend| {
            (b.inflight() as u64).saturating_mul(1_000_000) / u64::from(b.weight.max(1))
        };
        let min = self
            .backends
            .iter()
            .filter(|b| usable(b))
            .map(|b| load(b))
            .min()?;
        self.wrr
            .pick(&self.weights, |i| {
                let b = &self.backends[i];
                usable(b) && load(b) == min
            })
            .map(|i| self.backends[i].clone())
    }

    /// Power of two choices: two random picks weighted by `weight`, keep the
    /// less loaded relative to its weight. Near least-connections quality
    /// without shared state.
    fn two_choices(&self, usable: impl Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        let cands: Vec<&Arc<Backend>> = self.backends.iter().filter(|b| usable(b)).collect();
        let total: u64 = cands.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let draw = || {
            let mut r = rand::random::<u64>() % total;
            for b in &cands {
                let w = u64::from(b.weight);
                if r < w {
                    return *b;
                }
                r -= w;
            }
            cands[cands.len() - 1]
        };
        let (a, b) = (draw(), draw());
        let la = a.inflight() as u64 * u64::from(b.weight);
        let lb = b.inflight() as u64 * u64::from(a.weight);
        Some(if la <= lb { a.clone() } else { b.clone() })
    }

    /// Usable now? Logs the passive recovery this check may notice.
    fn is_up(&self, b: &Backend) -> bool {
        let (up, change) = b.health().check(Instant::now());
        if let Some(t) = change {
            self.log_transition(b, t);
        }
        up
    }

    /// Reports an attempt's failure to passive health; logs when it takes the
    /// server down.
    pub fn report_failure(&self, b: &Backend) {
        if let Some(t) =
            b.health()
                .record_failure(self.cfg.max_fails, self.cfg.fail_timeout, Instant::now())
        {
            self.log_transition(b, t);
        }
    }

    pub fn report_success(&self, b: &Backend) {
        b.health().record_success();
    }

    /// Logs a state change of one server. Always at warn: operators want to
    /// see both a server leaving and it coming back.
    pub fn log_transition(&self, b: &Backend, t: Transition) {
        let state = if t.up {
            ServerState::Up
        } else {
            ServerState::Down
        };
        let usable = b.health().peek(Instant::now());
        match t.source {
            Source::Passive if !t.up => tracing::warn!(
                upstream = %self.cfg.name, server = %b.addr, state = state.as_str(), source = t.source.as_str(),
                usable, down_for = ?self.cfg.fail_timeout, "upstream server state changed"
            ),
            _ => tracing::warn!(
                upstream = %self.cfg.name, server = %b.addr, state = state.as_str(), source = t.source.as_str(),
                usable, "upstream server state changed"
            ),
        }
    }

    /// Every server's current state (for `/status` and metrics).
    pub fn status(&self) -> Vec<ServerStatus> {
        let now = Instant::now();
        self.backends
            .iter()
            .map(|b| ServerStatus {
                id: b.id,
                addr: b.addr.clone(),
                weight: b.weight,
                state: if self.is_up(b) {
                    ServerState::Up
                } else {
                    ServerState::Down
                },
                active_up: self.cfg.health.as_ref().map(|_| b.health().active_up()),
                passive_down_for: b.health().passive_down_for(now),
                inflight: b.inflight(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerEntry;

    fn cfg(servers: &[(&str, u32)], balance: Balance, sticky: Sticky) -> UpstreamConfig {
        UpstreamConfig {
            name: "api".into(),
            servers: servers
                .iter()
                .map(|(a, w)| ServerEntry {
                    addr: a.to_string(),
                    weight: *w,
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
        }
    }

    fn addrs(n: usize) -> Vec<(String, u32)> {
        (0..n)
            .map(|i| (format!("10.0.0.{}:80", i + 1), 1))
            .collect()
    }

    fn pool_of(servers: &[(String, u32)], balance: Balance, sticky: Sticky) -> Pool {
        let s: Vec<(&str, u32)> = servers.iter().map(|(a, w)| (a.as_str(), *w)).collect();
        Pool::new(cfg(&s, balance, sticky), None)
    }

    fn pick(p: &Pool, key: &[u8]) -> String {
        p.select(&Affinity::Hash(key.to_vec()), &[])
            .map(|c| c.backend.addr.clone())
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
            assert_ne!(now, down.addr);
            if *was != down.addr {
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
            .map(|_| p.select(&Affinity::None, &[]).unwrap().backend.addr.clone())
            .collect();
        assert_eq!(seq, ["a:1", "a:1", "b:1", "a:1", "c:1", "a:1", "a:1"]);
        p.report_failure(&p.backends()[0].clone());
        for _ in 0..10 {
            assert_ne!(p.select(&Affinity::None, &[]).unwrap().backend.addr, "a:1");
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
                .entry(p.select(&Affinity::None, &[]).unwrap().backend.addr.clone())
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
        let secret = [3u8; 32];
        let target = p.backends()[2].clone();
        let now = sticky::now();
        let token = sticky::encode(
            &p.seal_key(&secret),
            target.id,
            now + sticky::TOKEN_TTL.as_secs(),
        );
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("wsgate_sticky={token}")).unwrap(),
        );
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let aff = p.affinity(&secret, ip, &h, None);
        for _ in 0..10 {
            let c = p.select(&aff, &[]).unwrap();
            assert_eq!(c.backend.id, target.id);
            assert!(!c.issue_cookie);
            assert!(p.sticky_cookie(&secret, &c, false).is_none());
        }
        // A token naming a server that is not in the pool.
        let stranger = sticky::encode(&p.seal_key(&secret), BackendId::of("10.9.9.9:1"), now + 100);
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("wsgate_sticky={stranger}")).unwrap(),
        );
        let c = p.select(&p.affinity(&secret, ip, &h, None), &[]).unwrap();
        assert!(c.issue_cookie);
        assert!(p.sticky_cookie(&secret, &c, false).is_some());
        // The pinned server goes down.
        p.report_failure(&target);
        let c = p.select(&aff, &[]).unwrap();
        assert_ne!(c.backend.id, target.id);
        assert!(c.issue_cookie);
    }

    /// Captures what `f` logs, as text.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
        text
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
        let p = Pool::new(c, None);
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
            p.status();
            p.status();
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
        assert!(p.select(&Affinity::None, &[]).is_none());
        assert!(p.select(&Affinity::Hash(b"x".to_vec()), &[]).is_none());
        assert!(p
            .status()
            .iter()
            .all(|s| s.state == ServerState::Down && s.passive_down_for.is_some()));
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
        let q = Pool::new(cfg(&s, Balance::RoundRobin, Sticky::None), Some(&p));
        let same = q.backend(b.id).unwrap();
        assert_eq!(same.weight, 5);
        assert_eq!(same.inflight(), 1);
        assert!(!same.health().is_up());
    }
}
