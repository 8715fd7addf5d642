//! Active health checks: a background task per pool with `[upstream.X.health]`
//! that probes every server (`GET path`) each `interval` and feeds the verdicts
//! to each server's [`Health`](super::health::Health) record, logging the
//! transitions through the pool. Probes go over each server's own keep-alive
//! connections (`conns`), so a TLS upstream is checked over TLS, with the
//! certificate verified exactly as for traffic.

use std::sync::Arc;

use futures_util::future::join_all;
use http::{header, HeaderValue, Request};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::backend::Backend;
use super::pool::Pool;
use crate::config::HealthConfig;

/// Runs the active health check of `pool` until `stop` is cancelled. The first
/// round starts at once; servers are probed concurrently so one slow server does
/// not delay the verdict on the others.
pub async fn run_active_checks(pool: Arc<Pool>, cfg: HealthConfig, stop: CancellationToken) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let round = join_all(pool.backends().iter().map(|b| {
            let cfg = &cfg;
            async move { (b, probe(b, cfg).await) }
        }));
        let results = tokio::select! {
            _ = stop.cancelled() => return,
            r = round => r,
        };
        // A probe that could not even open a socket here has no verdict.
        for (b, ok) in results.into_iter().filter_map(|(b, ok)| Some((b, ok?))) {
            if let Some(t) = b.health().record_probe(ok, &cfg) {
                pool.log_transition(b, t);
            }
        }
    }
}

/// One probe: `GET path` (`Host` the server's address), passing on 2xx/3xx
/// within `timeout`, connecting (and the TLS handshake) included. `None`
/// when the gateway itself was short of sockets: no verdict on the server.
async fn probe(b: &Backend, cfg: &HealthConfig) -> Option<bool> {
    let Ok(host) = HeaderValue::from_str(&b.addr) else {
        return Some(false);
    };
    let Ok(req) = Request::get(cfg.path.as_str())
        .header(header::HOST, host)
        .body(crate::body::empty())
    else {
        return Some(false);
    };
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let resp = match tokio::time::timeout_at(deadline, b.conns.send(req)).await {
        Err(_) => return Some(false),
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(server = %b.addr, error = %e, "health probe failed");
            return (!e.is_local_shortage()).then_some(false);
        }
    };
    let status = resp.status();
    // The status is the verdict. A short body is read to its end, so the
    // connection goes back to the pool; a longer or slower one is dropped
    // with its connection. Reading it whole held a server's whole output
    // for `timeout` (hundreds of MB from one streaming endpoint), and failed
    // a server that had answered 200.
    let _ = tokio::time::timeout_at(deadline, drain(resp.into_body())).await;
    Some(status.is_success() || status.is_redirection())
}

/// The most of a probe's response body read (HAProxy reads a check's answer
/// into one 16 KiB buffer).
const MAX_BODY: usize = 16 * 1024;

/// Reads `body` to its end, unless it is longer than [`MAX_BODY`].
async fn drain<B: http_body::Body>(body: B) {
    let mut body = std::pin::pin!(body);
    let mut left = MAX_BODY;
    while let Some(Ok(frame)) = body.frame().await {
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let Some(rest) = left.checked_sub(bytes::Buf::remaining(data)) else {
            return;
        };
        left = rest;
    }
}
