//! The raw shape of `wsgate.toml`: serde structs that mirror the file exactly,
//! reject unknown keys, and keep source spans on every value that validation may
//! need to point at. Nothing here interprets a value; see `validate.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string value remembered with where it stood in the file.
pub type SStr = Spanned<String>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub listener: Vec<Spanned<ListenerFile>>,
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub upstream: BTreeMap<String, Spanned<UpstreamFile>>,
    #[serde(default)]
    pub route: Vec<Spanned<RouteFile>>,
    #[serde(default)]
    pub app: AppsFile,
    pub cluster: Option<ClusterFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub node_id: Option<SStr>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
    pub header_timeout: Option<SStr>,
    pub keepalive_timeout: Option<SStr>,
    pub tls_handshake_timeout: Option<SStr>,
    pub shutdown_grace: Option<SStr>,
    pub max_request_head: Option<SStr>,
    pub secret: Option<SStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub format: Option<SStr>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub addr: SStr,
    pub tls: Option<TlsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: SStr,
    pub key: SStr,
    #[serde(default)]
    pub sni: Vec<SniFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniFile {
    pub host: SStr,
    pub cert: SStr,
    pub key: SStr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub addr: SStr,
}

/// A server is `"host:port"` or `{ addr = "host:port", weight = N }`. Spans do
/// not survive serde's untagged enums, so errors point at the `servers` array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ServerEntryFile {
    Addr(String),
    Table(ServerTableFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTableFile {
    pub addr: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub servers: Spanned<Vec<ServerEntryFile>>,
    pub balance: Option<SStr>,
    pub sticky: Option<SStr>,
    pub sticky_cookie: Option<SStr>,
    pub connect_timeout: Option<SStr>,
    pub response_timeout: Option<SStr>,
    pub ws_idle_timeout: Option<SStr>,
    pub max_fails: Option<Spanned<i64>>,
    pub fail_timeout: Option<SStr>,
    pub retries: Option<Spanned<i64>>,
    pub health: Option<HealthFile>,
    pub ws_inspect: Option<bool>,
    pub ws_max_message_size: Option<SStr>,
    pub ws_ping_interval: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub path: Option<SStr>,
    pub interval: Option<SStr>,
    pub timeout: Option<SStr>,
    pub healthy: Option<Spanned<i64>>,
    pub unhealthy: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub host: Option<SStr>,
    pub path: SStr,
    pub upstream: Option<SStr>,
    pub app: Option<SStr>,
    pub root: Option<SStr>,
    pub strip_prefix: Option<bool>,
    pub websocket: Option<bool>,
    pub origins: Option<Vec<SStr>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppsFile {
    pub echo: Option<EchoFile>,
    pub chat: Option<ChatFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoFile {
    pub max_message_size: Option<SStr>,
    pub compression: Option<bool>,
    pub ping_interval: Option<SStr>,
    pub idle_timeout: Option<SStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatFile {
    pub history: Option<Spanned<i64>>,
    pub max_message_size: Option<SStr>,
    pub ping_interval: Option<SStr>,
    pub send_queue: Option<Spanned<i64>>,
    pub push_token: Option<SStr>,
    pub poll_idle_timeout: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub redis: SStr,
    pub heartbeat: Option<SStr>,
}
