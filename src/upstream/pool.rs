//! A pool of upstream servers for one `[upstream.NAME]`: the servers with their
//! stable ids, load counters and health, the balancing state, and the pooled
//! HTTP client used to reach them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::balance::{rendezvous, stable_hash, SmoothWrr};
use super::health::Health;
use crate::config::{Balance, UpstreamConfig};
use crate::Body;

/// A server's identity, derived from its address (never its position in the
/// list), so reordering the config or adding servers keeps sticky ids valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId(pub u64);

impl BackendId {
    pub fn of(addr: &str) -> Self {
        BackendId(stable_hash(&[b"wsgate-backend", addr.as_bytes()]))
    }
}

#[derive(Debug)]
pub struct Backend {
    pub id: BackendId,
    /// `host:port`.
    pub addr: String,
    pub weight: u32,
    /// In-flight HTTP requests plus open spliced sessions (for `least_conn`).
    inflight: AtomicUsize,
    pub health: Health,
}

/// Counts one request or session against a backend while alive.
pub struct InflightGuard(Arc<Backend>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Backend {
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn track(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.clone())
    }
}

pub type HttpClient = Client<HttpConnector, Body>;

pub struct Pool {
    pub cfg: UpstreamConfig,
    backends: Vec<Arc<Backend>>,
    weights: Vec<u32>,
    wrr: SmoothWrr,
    client: HttpClient,
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
    /// counts for servers that stay.
    pub fn new(cfg: UpstreamConfig, previous: Option<&Pool>) -> Self {
        let backends: Vec<Arc<Backend>> = cfg
            .servers
            .iter()
            .map(|s| {
                let id = BackendId::of(&s.addr);
                match previous.and_then(|p| p.backend(id)) {
                    Some(old) if old.weight == s.weight => old,
                    _ => Arc::new(Backend {
                        id,
                        addr: s.addr.clone(),
                        weight: s.weight,
                        inflight: AtomicUsize::new(0),
                        health: Health::default(),
                    }),
                }
            })
            .collect();
        let weights = backends.iter().map(|b| b.weight).collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(connector);
        Self {
            wrr: SmoothWrr::new(backends.len()),
            weights,
            backends,
            cfg,
            client,
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

    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// Chooses a usable server not in `exclude`. With a sticky `key`, rendezvous
    /// hashing places the key; otherwise the pool's `balance` decides.
    pub fn select(&self, key: Option<&[u8]>, exclude: &[BackendId]) -> Option<Arc<Backend>> {
        let usable = |b: &Backend| !exclude.contains(&b.id) && b.health.is_up();
        if let Some(key) = key {
            let cands = self.backends.iter().filter(|b| usable(b));
            return rendezvous(key, cands, |b| b.id.0, |b| b.weight).cloned();
        }
        match self.cfg.balance {
            Balance::RoundRobin => self
                .wrr
                .pick(&self.weights, |i| usable(&self.backends[i]))
                .map(|i| self.backends[i].clone()),
            Balance::LeastConn => self.least_conn(usable),
            Balance::Random => self.two_choices(usable),
        }
    }

    /// Lowest `inflight / weight`; ties broken by round robin so equal servers share.
    fn least_conn(&self, usable: impl Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        let load = |b: &Backend| (b.inflight() as u64 * 1_000_000) / u64::from(b.weight.max(1));
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

    /// Power of two choices: two random (weighted) picks, keep the less loaded.
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

    /// Reports an attempt's failure; logs when it takes the server down.
    pub fn report_failure(&self, b: &Backend) {
        if b.health
            .record_failure(self.cfg.max_fails, self.cfg.fail_timeout)
        {
            tracing::warn!(upstream = %self.cfg.name, server = %b.addr, state = "down", source = "passive",
                fail_timeout = ?self.cfg.fail_timeout, "upstream server state changed");
        }
    }

    pub fn report_success(&self, b: &Backend) {
        b.health.record_success();
    }
}
