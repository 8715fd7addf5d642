//! What an inspected session is given: its limits and timers
//! ([`InspectConfig`], from the upstream's config) and its route's metric
//! handles ([`InspectMetrics`], looked up once per session).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::limit::gcra::Gcra;
use crate::metrics::RouteCode;
use crate::shutdown::Pace;

/// Limits and timers of one inspected session (from the upstream's config).
#[derive(Debug, Clone)]
pub struct InspectConfig {
    pub max_message_size: u64,
    /// Zero: no keepalive pings.
    pub ping_interval: Duration,
    /// No byte either way for this long closes the session with 1001.
    pub idle_timeout: Duration,
    /// `ws_message_rate`: client messages faster than this close the session.
    pub message_rate: Option<Gcra>,
    /// When the client's token expires (`exp` plus leeway), if it has one.
    pub expires: Option<std::time::SystemTime>,
    /// The reconnect hint of a drain close (1012 `reconnect <ms>`).
    pub pace: Arc<Pace>,
}

/// The reason text of a close frame the gateway injects.
#[derive(Debug, Clone, Copy)]
pub(super) enum CloseReason {
    Text(&'static str),
    /// A drain: `reconnect <ms>`.
    Reconnect(u64),
}

impl CloseReason {
    pub(super) const NONE: Self = Self::Text("");

    pub(super) fn append_to(self, out: &mut Vec<u8>) {
        match self {
            Self::Text(t) => out.extend_from_slice(t.as_bytes()),
            Self::Reconnect(ms) => out.extend_from_slice(format!("reconnect {ms}").as_bytes()),
        }
    }
}

/// The route's counters, looked up once per session.
#[derive(Clone)]
pub struct InspectMetrics {
    pub route: String,
    /// Messages from the client (`in`) and from the upstream (`out`).
    pub messages: [Counter; 2],
    /// Wire bytes from the client (`in`) and from the upstream (`out`).
    pub bytes: [Counter; 2],
    pub close_codes: Family<RouteCode, Counter>,
    /// `wsgate_limited_total{limit="upstream.NAME",kind="message"}`, when
    /// the upstream has a `ws_message_rate`.
    pub limited: Option<Counter>,
}

impl InspectMetrics {
    /// Counters for `route` from the gateway's registry.
    pub fn for_route(m: &crate::metrics::Metrics, route: &str) -> Self {
        use crate::metrics::RouteDirection;
        // One lookup per statement: a family's read guard lives to the end of
        // its statement, and a second `get_or_create` may need the write lock.
        let counter = |f: &Family<RouteDirection, Counter>, direction| {
            let c = f
                .get_or_create(&RouteDirection {
                    route: route.to_string(),
                    direction,
                })
                .clone();
            c
        };
        let msg_in = counter(&m.ws_messages, "in");
        let msg_out = counter(&m.ws_messages, "out");
        let bytes_in = counter(&m.ws_bytes, "in");
        let bytes_out = counter(&m.ws_bytes, "out");
        Self {
            route: route.to_string(),
            messages: [msg_in, msg_out],
            bytes: [bytes_in, bytes_out],
            close_codes: m.ws_close_codes.clone(),
            limited: None,
        }
    }

    pub(super) fn close_code(&self, code: u16) {
        self.close_codes
            .get_or_create(&RouteCode::new(self.route.clone(), code))
            .inc();
    }
}
