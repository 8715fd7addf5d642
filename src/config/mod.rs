//! Configuration: `wsgate.toml` → [`FileConfig`](file::FileConfig) (raw serde,
//! unknown keys rejected) → [`Config`] (validated, typed, every default applied).
//!
//! ```text
//! wsgate.toml --toml/serde--> FileConfig --validate--> Config
//! ```
//! Request-time code only ever sees [`Config`]; it never re-checks an option that
//! validation already settled. Errors carry the file position of the offending
//! value so `wsgate check` can print `PATH:LINE:COL: message`.

mod acme;
mod auth;
mod auth_request;
pub mod client_addr;
mod client_auth;
mod file;
mod limits;
mod messages;
pub use messages::known;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use acme::{AcmeChallenge, AcmeConfig};
pub use auth::{AuthConfig, RouteAuth};
pub use auth_request::{AuthRequestConfig, CacheKeyPart};
pub use client_addr::TrustedProxies;
pub use client_auth::{load_roots, roots_from_pem, ClientAuthConfig, RootsError};
pub use limits::{LimitConfig, LimitKey, LimitScope, MessageRate, Rate, DEFAULT_MAX_KEYS};
pub use validate::validate;

/// One problem found in a config file, with its position when one applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// 1-based line and column of the value at fault.
    pub pos: Option<(usize, usize)>,
    /// Dotted key path, used when there is no position (e.g. a missing table).
    pub key: Option<String>,
    pub message: String,
}

/// Everything wrong with one config file. Displayed one issue per line in the
/// `PATH:LINE:COL: message` form (docs/config.md).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (&issue.pos, &issue.key) {
                (Some((l, c)), _) => write!(f, "{p}:{l}:{c}: {}", issue.message)?,
                (None, Some(k)) => write!(f, "{p}: {k}: {}", issue.message)?,
                (None, None) => write!(f, "{p}: {}", issue.message)?,
            }
        }
        Ok(())
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for reload and messages).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<SocketAddr>,
    /// Line and column of `admin.addr` (as [`ListenerConfig::addr_at`]).
    pub admin_at: (usize, usize),
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub echo: EchoConfig,
    pub chat: ChatConfig,
    pub cluster: Option<ClusterConfig>,
    /// `[limit.NAME]` by name.
    pub limits: BTreeMap<String, LimitConfig>,
    /// `[auth.NAME]` token verifiers, keys loaded.
    pub auth: BTreeMap<String, AuthConfig>,
    /// Non-fatal remarks `check` prints (e.g. an empty sticky secret).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: String,
    pub max_connections: usize,
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
    pub header_timeout: Duration,
    /// How long a write to a client may wait for it to take a byte (nginx's
    /// `send_timeout`); past it the connection is closed.
    pub send_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// TLS session tickets on listeners (the session cache is always on).
    pub tls_tickets: bool,
    /// Keep request fields whose names contain `_` (nginx's
    /// `underscores_in_headers`); off, they are dropped: `X_User_Id` reads as
    /// `X-User-Id` to CGI, WSGI, PHP and Rack, past the gateway's stripping.
    pub underscores_in_headers: bool,
    pub shutdown_grace: Duration,
    /// On drain, WebSocket sessions (apps, inspected splices) are closed
    /// spread over this window instead of all at once; at most `shutdown_grace`.
    pub drain_window: Duration,
    /// Largest request head (request line plus headers) accepted; larger → 431.
    pub max_request_head: usize,
    /// Bytes of unfinished WebSocket messages all app sessions may hold
    /// together; over it the sessions holding the most are closed with 1013.
    pub max_buffered: u64,
    /// Key for sealed sticky cookies; `None` means one is generated per start.
    pub secret: Option<Redacted<[u8; 32]>>,
    /// Peers whose PROXY header and `X-Forwarded-For` are believed.
    pub trusted_proxies: TrustedProxies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub access_log: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Names of `[limit.NAME]`s (key ip) every new connection is checked against.
    pub connection_limits: Vec<String>,
    /// Each connection starts with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
    /// Line and column of `addr` in the file, for an error found only when
    /// a reload binds it.
    pub addr_at: (usize, usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A DER OCSP response stapled with `cert` (listener certificates only).
    pub ocsp: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate served when no `sni` entry matches.
    pub default: ListenerCert,
    pub sni: Vec<(HostPattern, CertPaths)>,
    /// mTLS: client certificates asked for and verified.
    pub client_auth: Option<ClientAuthConfig>,
}

/// Where a listener's default certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerCert {
    /// PEM files (`cert`, `key`, optional `ocsp`), re-read on reload.
    Files(CertPaths),
    /// An ACME CA, renewed in the background (`[listener.tls.acme]`).
    Acme(AcmeConfig),
}

/// A host name to match: exact (`api.example.test`) or a wildcard
/// (`*.example.test`, matching one or more labels in front). Lower-cased when built.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// Stored as the suffix including the leading dot: `.example.test`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let valid = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if let Some(rest) = s.strip_prefix("*.") {
            if valid(rest) {
                return Ok(HostPattern::Wildcard(format!(".{rest}")));
            }
        } else if valid(&s) {
            return Ok(HostPattern::Exact(s));
        }
        Err(format!(
            "host {s:?} is not a host name or \"*.domain\" wildcard"
        ))
    }

    /// `host` must already be lower-case and without port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    Random,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    None,
    Cookie,
    Ip,
    Header(http::HeaderName),
    Query(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// `host:port`, resolved at connect time.
    pub addr: String,
    pub weight: u32,
    /// Requests and WebSocket sessions in flight to it at once (nginx's
    /// `max_conns`, HAProxy's `maxconn`); 0 = no limit.
    pub max_conns: u32,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub servers: Vec<ServerEntry>,
    pub balance: Balance,
    pub sticky: Sticky,
    pub sticky_cookie: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub ws_idle_timeout: Duration,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub retries: u32,
    pub health: Option<HealthConfig>,
    pub ws_inspect: bool,
    pub ws_max_message_size: u64,
    /// Zero: no keepalive pings from the gateway.
    pub ws_ping_interval: Duration,
    /// Client → upstream messages per session (inspected splices only).
    pub ws_message_rate: Option<MessageRate>,
    /// TLS to the servers (`https://`/`wss://` servers or `tls = true`).
    pub tls: Option<UpstreamTlsConfig>,
    /// The HTTP version proxied requests use (WebSocket tunnels are always
    /// HTTP/1.1 upgrades).
    pub protocol: UpstreamProtocol,
}

/// `[upstream.NAME] protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over keep-alive connections.
    #[default]
    H1,
    /// HTTP/2 over TLS (ALPN `h2`): one multiplexed connection per server.
    H2,
    /// HTTP/2 in cleartext, prior knowledge.
    H2c,
}

/// TLS from the gateway to an upstream's servers (docs/tls.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// PEM trust roots for the servers' certificates; `None`: the system's.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and checked against the certificate; `None`: each
    /// server's host.
    pub server_name: Option<String>,
    /// A client certificate presented to the servers (mTLS).
    pub client: Option<CertPaths>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppKind {
    Echo,
    Chat,
}

impl AppKind {
    pub fn name(self) -> &'static str {
        match self {
            AppKind::Echo => "echo",
            AppKind::Chat => "chat",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    Upstream(String),
    App(AppKind),
    Static(PathBuf),
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub host: Option<HostPattern>,
    /// Always starts with `/`.
    pub path: String,
    pub target: RouteTarget,
    pub strip_prefix: bool,
    pub websocket: bool,
    /// Allowed `Origin` values for WebSocket upgrades; `None` allows any.
    pub origins: Option<Vec<String>>,
    /// The listeners (their `addr` as configured) whose requests this route
    /// takes; empty: every listener's.
    pub listeners: Vec<std::net::SocketAddr>,
    /// Names of the `[limit.NAME]`s requests and handshakes must pass, in order.
    pub limits: Vec<String>,
    /// `auth` / `auth_claims_to_headers`: requests need a valid token.
    pub auth: Option<RouteAuth>,
    /// An auth callout every request and handshake passes first.
    pub auth_request: Option<AuthRequestConfig>,
}

impl RouteConfig {
    /// A WebSocket route to `app` at `path`, on any host, with nothing else
    /// set: what unit tests route to.
    #[cfg(test)]
    pub fn test_app(path: &str, app: AppKind) -> Self {
        Self {
            host: None,
            path: path.into(),
            target: RouteTarget::App(app),
            strip_prefix: false,
            websocket: true,
            origins: None,
            listeners: Vec::new(),
            limits: Vec::new(),
            auth: None,
            auth_request: None,
        }
    }

    /// A short name for logs and metric labels: the host (if any) and path.
    pub fn label(&self) -> String {
        match &self.host {
            Some(HostPattern::Exact(h)) => format!("{h}{}", self.path),
            Some(HostPattern::Wildcard(s)) => format!("*{s}{}", self.path),
            None => self.path.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EchoConfig {
    pub max_message_size: u64,
    pub compression: bool,
    /// Zero: no server pings.
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub history: usize,
    /// Messages older than this leave history; zero: kept by count only.
    pub history_ttl: Duration,
    /// Bytes of history one node keeps in memory over every room.
    pub history_memory: u64,
    pub max_message_size: u64,
    pub ping_interval: Duration,
    pub send_queue: usize,
    /// `None`: push disabled (403).
    pub push_token: Option<Redacted<String>>,
    pub poll_idle_timeout: Duration,
    /// Rooms one connection (WebSocket, SSE stream, poll session) may be in.
    pub max_rooms_per_connection: usize,
    /// Rooms one node keeps in memory at most (single node; a cluster keeps
    /// them in Redis).
    pub max_rooms: usize,
    /// Distinct rooms the connections of one client address may be in on this
    /// node; past it 429; 0 = no cap.
    pub max_rooms_per_ip: usize,
    /// Long-poll sessions this node keeps at most; past it 503.
    pub max_poll_sessions: usize,
    /// Long-poll sessions one client address may open; past it 429; 0 = no cap.
    pub max_poll_sessions_per_ip: usize,
    /// Client frames per WebSocket session; `None`: unlimited.
    pub message_rate: Option<MessageRate>,
    /// `auth`: sessions and requests must carry a token for this verifier.
    pub auth: Option<ChatAuthConfig>,
    /// Live sessions (WebSocket, SSE, poll) one user may hold on a node; 0 = no cap.
    pub max_connections_per_user: usize,
}

/// `[app.chat] auth` and the keys that only mean something with it.
#[derive(Debug, Clone)]
pub struct ChatAuthConfig {
    /// The `[auth.NAME]` that verifies chat tokens.
    pub verifier: String,
    /// The claim that names the user (`sub` by default).
    pub user_claim: String,
    /// Clients without a token get in as read-only `guest-…` users.
    pub anonymous: bool,
    /// Room patterns (`name` or `prefix*`) guests may join; `*` = any.
    pub guest_rooms: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub redis: RedisTarget,
    pub heartbeat: Duration,
    /// A room's ids, history and epoch in Redis expire this long after its
    /// last message; zero: never.
    pub room_ttl: Duration,
}

/// A secret in the config: its `Debug` shows no byte of it, so printing a
/// config (or a struct holding one) never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> std::ops::Deref for Redacted<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Which Redis the cluster runs on (`[cluster] redis` or `redis_cluster`).
/// Its `Debug` is [`RedisTarget::describe`]: a URL may hold a password.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server.
    Single(String),
    /// Seed URLs of a Redis Cluster.
    Cluster(Vec<String>),
    /// Sentinel URLs and the name of the master they monitor.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl RedisTarget {
    /// The URLs, for `/status` and messages, their passwords (the only way
    /// to give one) left out.
    pub fn describe(&self) -> String {
        let list = |urls: &[String]| {
            urls.iter()
                .map(|u| messages::without_userinfo(u))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            RedisTarget::Single(url) => messages::without_userinfo(url),
            RedisTarget::Cluster(seeds) => format!("cluster {}", list(seeds)),
            RedisTarget::Sentinel { sentinels, master } => {
                format!("sentinel master {master} via {}", list(sentinels))
            }
        }
    }
}

/// What validation tests beyond the file's own content. Certificates are
/// always loaded (and matched with their keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checks {
    /// Try to listen on every listener and admin address with a port other
    /// than 0, then release it (`wsgate check`): a taken address is reported
    /// at its position. Off when the gateway itself loads the file: it binds
    /// them anyway, and on reload its own listeners hold them.
    pub bind: bool,
}

/// Reads, parses and validates `path`. Relative paths inside the file resolve
/// against the current working directory (docs/config.md).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, Checks::default())
}

/// [`load`] with extra [`Checks`].
pub fn load_with(path: &Path, checks: Checks) -> Result<Config, ConfigError> {
    let text = crate::fsread::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        issues: vec![ConfigIssue {
            pos: None,
            key: None,
            message: format!("cannot read config file: {e}"),
        }],
    })?;
    parse_with(path, &text, checks)
}

/// Parses and validates config text; `path` is only used for messages and as
/// [`Config::source`].
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_with(path, text, Checks::default())
}

/// [`parse`] with extra [`Checks`].
pub fn parse_with(path: &Path, text: &str, checks: Checks) -> Result<Config, ConfigError> {
    let issue = |e: &toml::de::Error, key: String| {
        // Hidden first: plain_types rewords some messages around the value.
        let said = messages::hide_secret_value(&key, e.message().trim());
        let said = messages::plain_types(&said);
        let message = if key.is_empty() {
            said
        } else {
            format!("{key}: {said}")
        };
        ConfigError {
            path: path.to_path_buf(),
            issues: vec![ConfigIssue {
                pos: e.span().map(|s| line_col(text, s.start)),
                key: None,
                message: message + &messages::duplicate_key(e, text),
            }],
        }
    };
    let de = toml::Deserializer::parse(text).map_err(|e| issue(&e, String::new()))?;
    // Through serde_path_to_error: toml's own message names a value's line
    // but not its key ("invalid type: string, expected i64").
    let raw: file::FileConfig = serde_path_to_error::deserialize(de)
        .map_err(|e| issue(e.inner(), messages::key_path(e.path())))?;
    validate(path, text, raw, checks)
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests;
