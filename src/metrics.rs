//! Prometheus metrics (docs/operations.md lists them) in one explicit registry (no globals), rendered
//! as text by the admin listener. Point-in-time values (upstream state, process
//! memory and file descriptors) are refreshed at scrape time.

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod labels;

pub use labels::*;

pub struct Metrics {
    registry: Registry,
    pub connections_active: Family<ListenerLabel, Gauge>,
    /// Connections accepted, before any limit, PROXY header or handshake
    /// (nginx's `accepts`, HAProxy's `conn_tot`).
    pub connections_accepted: Family<ListenerLabel, Counter>,
    pub http_requests: Family<RouteStatus, Counter>,
    pub http_duration: Histogram,
    pub ws_sessions_active: Family<RouteLabel, Gauge>,
    pub ws_handshakes: Family<RouteResult, Counter>,
    /// Token checks per route: ok, missing, invalid, expired, forbidden, callout_*.
    pub auth: Family<RouteResult, Counter>,
    pub ws_messages: Family<RouteDirection, Counter>,
    pub ws_close_codes: Family<RouteCode, Counter>,
    /// Wire bytes of inspected spliced sessions, per route and direction.
    pub ws_bytes: Family<RouteDirection, Counter>,
    /// Bytes of unfinished messages app sessions hold (`server.max_buffered`
    /// budget); set at scrape time from the budget.
    pub ws_buffered_bytes: Gauge,
    /// App sessions the budget closed (1013).
    pub ws_budget_closed: Counter,
    /// Bytes of byte-spliced sessions moved by `splice(2)`, not copied.
    pub splice_zero_copy_bytes: Counter,
    /// WebSocket sessions a drain closed, by kind.
    pub drain_closed: Family<DrainKind, Counter>,
    pub proxy_header_refused: Family<Reason, Counter>,
    /// TLS handshakes that failed (`error`) or ran out of time (`timeout`).
    pub tls_handshake_failures: Family<Reason, Counter>,
    pub upstream_up: Family<UpstreamServer, Gauge>,
    pub upstream_inflight: Family<UpstreamServer, Gauge>,
    pub upstream_requests: Family<UpstreamServerStatus, Counter>,
    pub bytes: Family<Direction, Counter>,
    pub cluster_redis_up: Gauge,
    /// Requests, handshakes, connections and messages refused by a rate limit.
    pub limited: Family<LimitLabel, Counter>,
    pub process_rss: Gauge<f64, AtomicU64>,
    /// Each listener certificate's `notAfter`, Unix seconds.
    pub tls_cert_expiry: Family<ListenerHost, Gauge>,
    pub acme_orders: Family<AcmeOrder, Counter>,
    pub process_open_fds: Gauge,
    /// The same gauges as the families above, by label, for `/status`.
    by_listener: dashmap::DashMap<String, Gauge>,
    by_route: dashmap::DashMap<String, Gauge>,
    /// `bytes{direction}`'s two series, looked up once.
    bytes_in: Counter,
    bytes_out: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("wsgate");
        let m = Self {
            connections_active: Family::default(),
            connections_accepted: Family::default(),
            http_requests: Family::default(),
            http_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ws_sessions_active: Family::default(),
            ws_handshakes: Family::default(),
            auth: Family::default(),
            ws_messages: Family::default(),
            ws_close_codes: Family::default(),
            ws_bytes: Family::default(),
            ws_buffered_bytes: Gauge::default(),
            ws_budget_closed: Counter::default(),
            splice_zero_copy_bytes: Counter::default(),
            drain_closed: Family::default(),
            proxy_header_refused: Family::default(),
            tls_handshake_failures: Family::default(),
            upstream_up: Family::default(),
            upstream_inflight: Family::default(),
            tls_cert_expiry: Family::default(),
            acme_orders: Family::default(),
            upstream_requests: Family::default(),
            bytes: Family::default(),

            cluster_redis_up: Gauge::default(),
            limited: Family::default(),
            process_rss: Gauge::default(),
            process_open_fds: Gauge::default(),
            by_listener: dashmap::DashMap::new(),
            by_route: dashmap::DashMap::new(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            registry: Registry::default(),
        };
        let bytes_in = m
            .bytes
            .get_or_create(&Direction { direction: "in" })
            .clone();
        let bytes_out = m
            .bytes
            .get_or_create(&Direction { direction: "out" })
            .clone();
        r.register(
            "connections_active",
            "Open client connections",
            m.connections_active.clone(),
        );
        r.register(
            "connections_accepted",
            "Client connections accepted, before any limit, PROXY header or TLS handshake",
            m.connections_accepted.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests answered",
            m.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of the body)",
            m.http_duration.clone(),
        );
        r.register(
            "ws_sessions_active",
            "Live WebSocket sessions",
            m.ws_sessions_active.clone(),
        );
        r.register(
            "ws_handshakes",
            "WebSocket handshakes by result",
            m.ws_handshakes.clone(),
        );
        r.register(
            "auth",
            "Access decisions of auth and auth_request routes, by route and result",
            m.auth.clone(),
        );
        r.register(
            "ws_messages",
            "WebSocket messages (app sessions, inspected splices)",
            m.ws_messages.clone(),
        );
        r.register(
            "ws_close_codes",
            "WebSocket close codes seen",
            m.ws_close_codes.clone(),
        );
        r.register(
            "ws_bytes",
            "WebSocket wire bytes of inspected splices",
            m.ws_bytes.clone(),
        );
        r.register(
            "ws_buffered_bytes",
            "Bytes of unfinished WebSocket messages held by app sessions (server.max_buffered)",
            m.ws_buffered_bytes.clone(),
        );
        r.register(
            "ws_budget_closed",
            "App WebSocket sessions closed (1013) because server.max_buffered was exceeded",
            m.ws_budget_closed.clone(),
        );
        r.register(
            "splice_zero_copy_bytes",
            "Bytes of byte-spliced WebSocket sessions moved by splice(2), without a copy through user space",
            m.splice_zero_copy_bytes.clone(),
        );
        r.register(
            "drain_closed",
            "WebSocket sessions closed by a drain (1012 for app and inspect; splice: cut at shutdown_grace)",
            m.drain_closed.clone(),
        );
        r.register(
            "proxy_header_refused",
            "Connections closed for their PROXY header: untrusted (a peer outside server.trusted_proxies), malformed, timeout",
            m.proxy_header_refused.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Client TLS handshakes that failed (error), timed out (timeout) or were closed before they ended (eof)",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "upstream_up",
            "Upstream server usable (1) or down (0)",
            m.upstream_up.clone(),
        );
        r.register(
            "upstream_inflight",
            "Requests and spliced WebSocket sessions in flight to an upstream server (what its max_conns bounds)",
            m.upstream_inflight.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to upstream servers by status",
            m.upstream_requests.clone(),
        );
        r.register(
            "bytes",
            "Bytes relayed, by direction (in = from clients)",
            m.bytes.clone(),
        );
        r.register(
            "cluster_redis_up",
            "Redis reachable (1) or not (0); 0 when not clustered",
            m.cluster_redis_up.clone(),
        );
        r.register(
            "limited",
            "Events refused by a rate limit, by limit and kind",
            m.limited.clone(),
        );
        r.register(
            "tls_cert_expiry_seconds",
            "When each listener certificate expires (notAfter), Unix seconds",
            m.tls_cert_expiry.clone(),
        );
        r.register(
            "acme_orders",
            "ACME orders finished, by the certificate's first domain and result (ok, error)",
            m.acme_orders.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident set size",
            m.process_rss.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors",
            m.process_open_fds.clone(),
        );
        Self {
            registry: r,
            bytes_in,
            bytes_out,
            ..m
        }
    }

    /// Replaces every `upstream_up` and `upstream_inflight` series with
    /// `servers`: (upstream, server, up, in flight). Called by whoever knows
    /// the pools (the admin view) before a render, so servers removed by a
    /// reload disappear.
    pub fn set_upstreams<'a>(
        &self,
        servers: impl IntoIterator<Item = (&'a str, &'a str, bool, usize)>,
    ) {
        self.upstream_up.clear();
        self.upstream_inflight.clear();
        for (upstream, server, up, inflight) in servers {
            let l = UpstreamServer {
                upstream: upstream.to_string(),
                server: server.to_string(),
            };
            self.upstream_up.get_or_create(&l).set(i64::from(up));
            let inflight = i64::try_from(inflight).unwrap_or(i64::MAX);
            self.upstream_inflight.get_or_create(&l).set(inflight);
        }
    }

    /// Replaces every `tls_cert_expiry_seconds` series with `certs`:
    /// (listener, host, notAfter). Called at start and after each reload, so
    /// certificates a reload removed disappear.
    pub fn set_cert_expiry(&self, certs: &[(String, String, std::time::SystemTime)]) {
        self.tls_cert_expiry.clear();
        for (listener, host, t) in certs {
            let secs = t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            let l = ListenerHost {
                listener: listener.clone(),
                host: host.clone(),
            };
            self.tls_cert_expiry.get_or_create(&l).set(secs);
        }
    }

    /// Renders the registry as Prometheus text after refreshing the process's
    /// point-in-time values (memory, file descriptors).
    pub fn render(&self) -> String {
        if let Some(rss) = process_rss_bytes() {
            self.process_rss.set(rss as f64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.process_open_fds.set(fds.count() as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The live-sessions gauge of `route`, registered for `/status` too.
    fn session_gauge(&self, route: &str) -> Gauge {
        let g = self
            .ws_sessions_active
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .clone();
        self.by_route
            .entry(route.to_string())
            .or_insert_with(|| g.clone());
        g
    }

    /// The open-connections gauge of a listener, to be looked up once per
    /// listener rather than once per connection.
    pub fn connection_gauge(&self, listener: &str) -> Gauge {
        let g = self
            .connections_active
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .clone();
        self.by_listener
            .entry(listener.to_string())
            .or_insert_with(|| g.clone());
        g
    }

    /// The accepted-connections counter of a listener, looked up once per
    /// listener.
    pub fn accepted_counter(&self, listener: &str) -> Counter {
        self.connections_accepted
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .clone()
    }

    /// The `wsgate_limited_total` series of `limit` and `kind`, to be kept by
    /// whoever counts (a lookup per event would clone the labels).
    pub fn limited(&self, limit: &str, kind: &'static str) -> Counter {
        let c = self
            .limited
            .get_or_create(&LimitLabel {
                limit: limit.to_string(),
                kind,
            })
            .clone();
        c
    }

    pub fn listener_count(&self, listener: &str) -> i64 {
        self.by_listener.get(listener).map(|g| g.get()).unwrap_or(0)
    }

    pub fn session_counts(&self) -> std::collections::BTreeMap<String, i64> {
        self.by_route
            .iter()
            .map(|e| (e.key().clone(), e.value().get()))
            .collect()
    }

    /// A request answered before any route was chosen: a refused head
    /// (400, 431) or a connection over a cap (503, 429). No access line
    /// is written for it, so this count is where it shows.
    pub fn unrouted(&self, status: u16) {
        self.http_requests
            .get_or_create(&RouteStatus {
                route: "-".into(),
                status,
            })
            .inc();
    }

    pub fn add_bytes(&self, direction: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        match direction {
            "in" => self.bytes_in.inc_by(n),
            "out" => self.bytes_out.inc_by(n),
            _ => self.bytes.get_or_create(&Direction { direction }).inc_by(n),
        };
    }
}

/// Counters of one label set by status code, each looked up in its family on
/// first use and then kept: a family lookup clones and hashes the labels,
/// which per request showed in profiles. A handful of statuses per route or
/// server, so a few slots, each filled once and then only read: counting a
/// cached status takes no lock. Statuses beyond the slots are still counted,
/// through a family lookup each time.
#[derive(Debug, Default)]
pub struct StatusCounters([OnceLock<(u16, Counter)>; STATUS_SLOTS]);

/// Distinct statuses cached per [`StatusCounters`].
const STATUS_SLOTS: usize = 8;

impl StatusCounters {
    /// Adds one to the counter for `status`; `lookup` finds it in its family.
    pub fn inc(&self, status: u16, lookup: impl FnOnce() -> Counter) {
        for (i, slot) in self.0.iter().enumerate() {
            match slot.get() {
                Some((s, c)) if *s == status => {
                    c.inc();
                    return;
                }
                Some(_) => {}
                None => {
                    let c = lookup();
                    c.inc();
                    // Cache it in the first free slot. Racing threads may fill
                    // slots meanwhile: one that cached this same status first
                    // holds the same series, so either copy counts alike.
                    for slot in &self.0[i..] {
                        let (s, _) = slot.get_or_init(|| (status, c.clone()));
                        if *s == status {
                            return;
                        }
                    }
                    return;
                }
            }
        }
        lookup().inc();
    }
}

/// A route's metric handles (kept with the route, so rebuilt on reload; the
/// series themselves live in [`Metrics`] and carry on).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    requests: StatusCounters,
    sessions: OnceLock<Gauge>,
    handshakes_ok: OnceLock<Counter>,
}

impl RouteMetrics {
    /// Counts an answered HTTP request on the route labelled `route`.
    pub fn request(&self, m: &Metrics, route: &str, status: u16) {
        self.requests.inc(status, || {
            m.http_requests
                .get_or_create(&RouteStatus {
                    route: route.to_string(),
                    status,
                })
                .clone()
        });
    }

    /// A guard counting one live WebSocket session on the route.
    pub fn session(&self, m: &Metrics, route: &str) -> GaugeGuard {
        GaugeGuard::new(self.sessions.get_or_init(|| m.session_gauge(route)).clone())
    }

    /// Counts a WebSocket handshake: `result` is `ok` or the refusal's status.
    pub fn handshake(&self, m: &Metrics, route: &str, result: Result<(), u16>) {
        let lookup = |result: String| {
            m.ws_handshakes
                .get_or_create(&RouteResult {
                    route: route.to_string(),
                    result,
                })
                .clone()
        };
        match result {
            Ok(()) => self.handshakes_ok.get_or_init(|| lookup("ok".into())).inc(),
            Err(status) => lookup(status.to_string()).inc(),
        };
    }
}

/// Resident set size from `/proc/self/status` (`VmRSS`, in kB).
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Adds one to a gauge while alive.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
