//! One upstream server as a pool holds it: its stable [`BackendId`], address and
//! weight, its in-flight count and the `max_conns` bounding it
//! ([`Backend::try_track`], [`InflightGuard`]), its
//! health record, its idle keep-alive connections and its request counters.
//! The load and health outlive a reload for a server that stays ([`Backend::new`]
//! takes them over from the previous pool's entry).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::balance::{stable_hash, Load};
use super::conns::ConnPool;
use super::dial::Dialer;
use super::health::Health;
use super::tls::UpstreamTls;
use crate::config::ServerEntry;
use crate::metrics::StatusCounters;

/// A server's identity, derived from its address (never its position in the
/// list), so reordering the config or adding servers keeps sticky ids valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId(pub u64);

/// The servers one request has tried, in order (excluded from its next
/// pick). Inline up to four: most requests make one attempt, and a heap
/// allocation for each would be wasted.
pub type Tried = smallvec::SmallVec<[BackendId; 4]>;

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
    /// The pool's `response_timeout` in ms, as the longest wait between two
    /// reads of a response body: read through a request's guard, so that a
    /// proxied body carries no copy of it (set again by each reload).
    body_idle_ms: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
pub struct Backend {
    pub id: BackendId,
    /// `host:port`; shared, so a request naming its server (access log, errors,
    /// session logs) bumps a count instead of copying the text.
    pub addr: Arc<str>,
    pub weight: u32,
    /// In-flight requests and sessions it may take at once; 0: no limit.
    max_conns: usize,
    state: Arc<BackendState>,
    /// Idle keep-alive HTTP connections to it.
    pub conns: Arc<ConnPool>,
    /// `wsgate_upstream_requests_total` counters of this server by status.
    pub requests: StatusCounters,
}

/// Counts one request or session against a backend while alive.
#[derive(Debug)]
pub struct InflightGuard(Arc<BackendState>);

impl InflightGuard {
    /// The longest wait between two reads of a response body from this
    /// server (its pool's `response_timeout`).
    pub fn body_idle(&self) -> Duration {
        Duration::from_millis(self.0.body_idle_ms.load(Ordering::Relaxed))
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Backend {
    /// The server at `addr`. `previous` is the same server (same id) in the pool
    /// being replaced, whose load and health carry on.
    /// `tls`: the pool's TLS client side, when its servers speak TLS; `h2`:
    /// proxied requests go over HTTP/2 (`h2` or `h2c`).
    pub fn new(
        entry: &ServerEntry,
        (connect_timeout, response_timeout): (Duration, Duration),
        tls: Option<Arc<UpstreamTls>>,
        h2: bool,
        previous: Option<&Backend>,
    ) -> Self {
        let addr: Arc<str> = Arc::from(entry.addr.as_str());
        let state: Arc<BackendState> = previous.map(|b| b.state.clone()).unwrap_or_default();
        let ms = u64::try_from(response_timeout.as_millis()).unwrap_or(u64::MAX);
        state.body_idle_ms.store(ms, Ordering::Relaxed);
        Self {
            id: BackendId::of(&addr),
            weight: entry.weight,
            max_conns: entry.max_conns as usize,
            state,
            conns: ConnPool::new(Dialer::new(addr.clone(), connect_timeout, tls).with_h2(h2)),
            requests: StatusCounters::default(),
            addr,
        }
    }

    pub fn inflight(&self) -> usize {
        self.state.inflight.load(Ordering::Acquire)
    }

    /// Counts a request or session until the guard is dropped.
    pub fn track(&self) -> InflightGuard {
        self.state.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.state.clone())
    }

    /// [`Backend::track`] unless the server is at its `max_conns`. The check
    /// and the count are one step, so concurrent requests cannot both take
    /// the last place.
    pub fn try_track(&self) -> Option<InflightGuard> {
        if self.max_conns == 0 {
            return Some(self.track());
        }
        let max = self.max_conns;
        self.state
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InflightGuard(self.state.clone()))
    }

    /// Its `max_conns`; 0 when it has none.
    pub fn max_conns(&self) -> usize {
        self.max_conns
    }

    /// At its `max_conns` now (a hint for choosing: [`Backend::try_track`]
    /// decides).
    pub fn is_full(&self) -> bool {
        self.max_conns != 0 && self.inflight() >= self.max_conns
    }

    pub fn health(&self) -> &Health {
        &self.state.health
    }
}

impl Load for Backend {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn inflight(&self) -> usize {
        Backend::inflight(self)
    }
}
