//! Rate limits over real sockets (spec §10, docs/limits.md): route limits on
//! requests and handshakes (429 + Retry-After), keys isolated by source
//! address, the key table bounded under a flood of distinct keys, connection
//! limits closing before TLS, cluster scope across two nodes sharing a real
//! `redis-server`, and message rates (chat, inspected splices). Nothing
//! sleeps to synchronise: every wait polls against a deadline.
//!
//! This crate root holds the shared helpers; the tests are in `tests/limits/`:
//! [`requests`] (route limits, keys, config errors), [`key_table`],
//! [`connections`], [`cluster`] and [`messages`].

mod common;

#[path = "limits/cluster.rs"]
mod cluster;
#[path = "limits/connections.rs"]
mod connections;
#[path = "limits/key_table.rs"]
mod key_table;
#[path = "limits/messages.rs"]
mod messages;
#[path = "limits/requests.rs"]
mod requests;

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use common::{connect_from, get, request, send_on, Cfg, Reply, TestGateway};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// `[limit.NAME]` with `rate` and `burst`, keyed by `key`.
fn limit(cfg: Cfg, name: &str, rate: &str, burst: i64, key: &str) -> Cfg {
    cfg.set(&format!("limit.{name}.rate"), rate)
        .set(&format!("limit.{name}.burst"), burst)
        .set(&format!("limit.{name}.key"), key)
}

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers))
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds")
}

async fn metrics(gw: &TestGateway) -> String {
    get(gw.admin(), "/metrics").await.text()
}

/// The value of one exact series in the metrics text (0 when absent).
fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn get_from(src: &str, addr: SocketAddr, path: &str) -> Reply {
    let s = connect_from(ip(src), addr).await;
    send_on(s, request("GET", path, &[], Bytes::new())).await
}
