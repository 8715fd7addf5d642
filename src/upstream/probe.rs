//! Active health checks: a background task per pool with `[upstream.X.health]`
//! that probes every server (`GET path`) each `interval` and feeds the verdicts
//! to each server's [`Health`](super::health::Health) record, logging the
//! transitions through the pool.

use std::sync::Arc;

use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use super::pool::Pool;
use crate::config::HealthConfig;

type ProbeClient = Client<HttpConnector, Empty<bytes::Bytes>>;

/// Runs the active health check of `pool` until `stop` is cancelled. The first
/// round starts at once; servers are probed concurrently so one slow server does
/// not delay the verdict on the others.
pub async fn run_active_checks(pool: Arc<Pool>, cfg: HealthConfig, stop: CancellationToken) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.timeout));
    connector.set_nodelay(true);
    let client: ProbeClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let round = join_all(pool.backends().iter().map(|b| {
            let client = &client;
            let cfg = &cfg;
            async move { (b, probe(client, &b.addr, cfg).await) }
        }));
        let results = tokio::select! {
            _ = stop.cancelled() => return,
            r = round => r,
        };
        for (b, ok) in results {
            if let Some(t) = b.health().record_probe(ok, &cfg) {
                pool.log_transition(b, t);
            }
        }
    }
}

/// One probe: `GET path`, passing on 2xx/3xx within `timeout`.
async fn probe(client: &ProbeClient, addr: &str, cfg: &HealthConfig) -> bool {
    let Ok(uri) = format!("http://{addr}{}", cfg.path).parse::<http::Uri>() else {
        return false;
    };
    let check = async {
        let resp = client.get(uri).await.ok()?;
        let status = resp.status();
        // Drain so the pooled connection can be reused by the next probe.
        let _ = resp.into_body().collect().await;
        Some(status.is_success() || status.is_redirection())
    };
    matches!(
        tokio::time::timeout(cfg.timeout, check).await,
        Ok(Some(true))
    )
}
