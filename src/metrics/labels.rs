//! The label sets of the metrics' families: which dimensions each series
//! has. Kept apart from the registry so the list of metrics reads alone.

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

/// An ACME order's outcome: `domain` is the certificate's first domain,
/// `result` is `ok` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcmeOrder {
    pub domain: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteResult {
    pub route: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteDirection {
    pub route: String,
    /// `in` = client → gateway, `out` = gateway → client.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCode {
    pub route: String,
    pub code: &'static str,
}

impl RouteCode {
    /// The codes RFC 6455 defines (1000–1015) and the one wsgate sends of
    /// its own (4001) as themselves; the ranges a peer picks from freely as
    /// `3xxx` (registered) and `4xxx` (private),
    /// anything else as `other`: a client choosing its close code must not
    /// choose how many series the route has.
    pub fn new(route: String, code: u16) -> Self {
        const DEFINED: [&str; 16] = [
            "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
            "1011", "1012", "1013", "1014", "1015",
        ];
        let code = match code {
            1000..=1015 => DEFINED[usize::from(code - 1000)],
            // The chat's own (token expired): wsgate's, not a peer's choice.
            4001 => "4001",
            3000..=3999 => "3xxx",
            4000..=4999 => "4xxx",
            _ => "other",
        };
        Self { route, code }
    }
}

/// What a drain closed: `app` (echo, chat), `inspect` (frame-aware splice),
/// `splice` (a byte splice cut when `shutdown_grace` ran out).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrainKind {
    pub kind: &'static str,
}

/// Why a connection was closed: for its PROXY header `untrusted` (a peer
/// outside `server.trusted_proxies`), `malformed`, `timeout`; for its TLS
/// handshake `error`, `timeout`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamServer {
    pub upstream: String,
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamServerStatus {
    pub upstream: String,
    pub server: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: String,
    /// `request`, `handshake`, `connection` or `message`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerHost {
    pub listener: String,
    /// The name the certificate is served for: `default`, a host or `*.suffix`.
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}
