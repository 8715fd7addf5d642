//! What the admin listener reports about this process: readiness (started,
//! draining, degraded while Redis is unreachable or while a listener's ACME
//! certificate has not been issued yet), the metrics text with the
//! upstream states refreshed, and the `/status` document. The gateway knows
//! all of it; `server::admin` only serves it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};

use super::Gateway;
use crate::server::admin::AdminView;

/// What `/readyz` reports.
#[derive(Default)]
pub(super) struct Readiness {
    started: AtomicBool,
    /// Why, by the part that is degraded (the chat bus, the cluster rate
    /// limits), while a dependency (Redis) is unreachable.
    degraded: Mutex<BTreeMap<&'static str, String>>,
}

impl Readiness {
    pub(super) fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub(super) fn set_degraded(&self, part: &'static str, reason: Option<String>) {
        let mut d = self.degraded.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(r) => d.insert(part, r),
            None => d.remove(part),
        };
    }

    /// Every degraded part's reason, joined.
    pub(super) fn degraded(&self) -> Option<String> {
        let d = self.degraded.lock().unwrap_or_else(|e| e.into_inner());
        (!d.is_empty()).then(|| d.values().cloned().collect::<Vec<_>>().join("; "))
    }

    fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// Mirrors the cluster bus's Redis status into `/readyz` and
/// `wsgate_cluster_redis_up` until the gateway is gone.
pub(super) async fn watch_cluster(
    mut status: tokio::sync::watch::Receiver<Option<String>>,
    gw: Weak<Gateway>,
) {
    loop {
        let reason = status.borrow_and_update().clone();
        let Some(g) = gw.upgrade() else { return };
        g.metrics.cluster_redis_up.set(i64::from(reason.is_none()));
        g.readiness.set_degraded("cluster", reason);
        drop(g);
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Mirrors the cluster rate limits' Redis status into `/readyz` ("degraded:
/// rate limits per node ...") until the gateway is gone.
pub(super) async fn watch_limits(
    mut status: tokio::sync::watch::Receiver<Option<String>>,
    gw: Weak<Gateway>,
) {
    loop {
        let reason = status.borrow_and_update().clone();
        let Some(g) = gw.upgrade() else { return };
        g.readiness.set_degraded("limits", reason);
        drop(g);
        if status.changed().await.is_err() {
            return;
        }
    }
}

impl Gateway {
    /// ACME listeners with no certificate to serve yet (a first start whose
    /// CA is not reached, with an empty cache): every handshake on them
    /// fails, so a balancer should not send clients here.
    fn missing_certificates(&self) -> Option<String> {
        let snap = self.snapshot();
        let missing: Vec<String> = snap
            .config
            .listeners
            .iter()
            .filter_map(|l| match &l.tls.as_ref()?.default {
                crate::config::ListenerCert::Acme(a)
                    if self.acme.find(a).is_none_or(|s| s.key().is_none()) =>
                {
                    Some(format!(
                        "listener {} has no certificate yet (ACME: {})",
                        l.addr,
                        a.domains.join(", ")
                    ))
                }
                _ => None,
            })
            .collect();
        (!missing.is_empty()).then(|| missing.join("; "))
    }
}

impl AdminView for Gateway {
    fn metrics_text(&self) -> String {
        self.refresh_cert_expiry(&self.snapshot());
        let table = self.proxy.table();
        self.metrics
            .set_upstreams(table.pools.values().flat_map(|pool| {
                pool.backends()
                    .iter()
                    .map(move |b| (pool.name(), &*b.addr, b.health().is_up(), b.inflight()))
            }));
        // Read at scrape time: the sessions' reads only touch the budget.
        let buffered = i64::try_from(self.apps.budget.buffered()).unwrap_or(i64::MAX);
        self.metrics.ws_buffered_bytes.set(buffered);
        self.metrics.render()
    }

    fn header_timeout(&self) -> std::time::Duration {
        self.server_ctx.config.load().header_timeout
    }

    fn not_ready_reason(&self) -> Option<String> {
        if !self.readiness.is_started() {
            Some("starting".into())
        } else if self.shutdown.is_draining() {
            Some("draining".into())
        } else {
            let why: Vec<String> = self
                .readiness
                .degraded()
                .into_iter()
                .chain(self.missing_certificates())
                .collect();
            (!why.is_empty()).then(|| format!("degraded: {}", why.join("; ")))
        }
    }

    fn status(&self) -> serde_json::Value {
        let snap = self.snapshot();
        let listeners: Vec<_> = self
            .listener_addrs()
            .into_iter()
            .map(|(addr, tls)| {
                serde_json::json!({ "addr": addr.to_string(), "tls": tls, "connections": self.metrics.listener_count(&addr.to_string()) })
            })
            .collect();
        let upstreams: serde_json::Map<String, serde_json::Value> = snap
            .table
            .pools
            .iter()
            .map(|(name, pool)| {
                let servers: Vec<_> = pool
                    .backends()
                    .iter()
                    .map(|b| serde_json::json!({ "addr": &*b.addr, "weight": b.weight, "up": b.health().is_up(), "inflight": b.inflight(), "max_conns": b.max_conns() }))
                    .collect();
                (name.clone(), serde_json::json!({ "servers": servers }))
            })
            .collect();
        let cluster = match &snap.config.cluster {
            None => serde_json::json!({ "enabled": false }),
            Some(c) => {
                serde_json::json!({ "enabled": true, "redis": c.redis.describe(), "degraded": self.readiness.degraded() })
            }
        };
        let limits: serde_json::Map<String, serde_json::Value> = snap
            .config
            .limits
            .keys()
            .filter_map(|name| snap.limits.get(name))
            .map(|l| {
                let c = l.config();
                (
                    l.name().to_string(),
                    serde_json::json!({ "tracked_keys": l.tracked_keys(), "max_keys": c.max_keys, "cluster": l.is_cluster() }),
                )
            })
            .collect();
        serde_json::json!({
            "node": self.node_id,
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "ready": self.not_ready_reason().is_none(),
            "connections": self.limits.active(),
            "listeners": listeners,
            "sessions": self.metrics.session_counts(),
            "upstreams": upstreams,
            "cluster": cluster,
            "limits": limits,
        })
    }
}
