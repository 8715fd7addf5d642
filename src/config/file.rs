//! The raw shape of `wsgate.toml`: serde structs that mirror the file exactly,
//! reject unknown keys, and keep source spans on every value that validation may
//! need to point at. Nothing here interprets a value; see `validate/`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string value remembered with where it stood in the file.
pub type SStr = Spanned<String>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
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
    #[serde(default)]
    pub limit: BTreeMap<String, Spanned<LimitFile>>,
    #[serde(default)]
    pub auth: BTreeMap<String, Spanned<AuthFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct ServerFile {
    pub node_id: Option<SStr>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
    pub header_timeout: Option<SStr>,
    pub send_timeout: Option<SStr>,
    pub keepalive_timeout: Option<SStr>,
    pub tls_handshake_timeout: Option<SStr>,
    pub tls_tickets: Option<bool>,
    /// nginx's `underscores_in_headers`: off drops fields named with `_`.
    pub underscores_in_headers: Option<bool>,
    pub shutdown_grace: Option<SStr>,
    pub drain_window: Option<SStr>,
    pub max_request_head: Option<SStr>,
    pub max_buffered: Option<SStr>,
    pub secret: Option<SStr>,
    pub trusted_proxies: Option<Vec<SStr>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct LogFile {
    pub format: Option<SStr>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct ListenerFile {
    pub addr: SStr,
    pub tls: Option<TlsFile>,
    pub connection_limits: Option<Vec<SStr>>,
    pub proxy_protocol: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct TlsFile {
    /// With `key`; or `acme` instead of both.
    pub cert: Option<SStr>,
    pub key: Option<SStr>,
    pub ocsp: Option<SStr>,
    #[serde(default)]
    pub sni: Vec<SniFile>,
    pub client_ca: Option<SStr>,
    pub client_auth: Option<SStr>,
    pub acme: Option<Spanned<AcmeFile>>,
}

/// `[listener.tls.acme]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct AcmeFile {
    pub directory: SStr,
    pub ca_root: Option<SStr>,
    pub contact: Option<Vec<SStr>>,
    pub domains: Spanned<Vec<SStr>>,
    pub challenge: Option<SStr>,
    pub cache: SStr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct SniFile {
    pub host: SStr,
    pub cert: SStr,
    pub key: SStr,
    pub ocsp: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct AdminFile {
    pub addr: SStr,
}

/// `"host:port"` or `{ addr = "host:port", weight = N, max_conns = N }`. Not
/// `#[serde(untagged)]`: untagged buffers the value and `Spanned` cannot be
/// deserialized from the buffer, so every entry failed to parse. The entry is
/// read as a spanned TOML value and split by hand; values inside a table carry
/// the table's position.
#[derive(Debug)]
pub enum ServerEntryFile {
    Addr(SStr),
    Table(ServerTableFile),
}

impl<'de> Deserialize<'de> for ServerEntryFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, expecting = "a table")]
        struct Raw {
            addr: String,
            weight: Option<i64>,
            max_conns: Option<i64>,
        }
        let v = Spanned::<toml::Value>::deserialize(d)?;
        let span = v.span();
        match v.into_inner() {
            toml::Value::String(s) => Ok(ServerEntryFile::Addr(Spanned::new(span, s))),
            toml::Value::Table(t) => {
                let raw: Raw = toml::Value::Table(t)
                    .try_into()
                    .map_err(|e: toml::de::Error| D::Error::custom(e.message()))?;
                Ok(ServerEntryFile::Table(ServerTableFile {
                    addr: Spanned::new(span.clone(), raw.addr),
                    weight: raw.weight.map(|w| Spanned::new(span.clone(), w)),
                    max_conns: raw.max_conns.map(|m| Spanned::new(span, m)),
                }))
            }
            other => Err(D::Error::custom(format!(
                "a server is \"host:port\" or {{ addr = \"host:port\", weight = N, max_conns = N }}, not a {}",
                other.type_str()
            ))),
        }
    }
}

#[derive(Debug)]
pub struct ServerTableFile {
    pub addr: SStr,
    pub weight: Option<Spanned<i64>>,
    pub max_conns: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
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
    /// Each server's `max_conns` unless its entry sets its own.
    pub max_conns: Option<Spanned<i64>>,
    pub health: Option<HealthFile>,
    pub ws_inspect: Option<bool>,
    pub ws_max_message_size: Option<SStr>,
    pub ws_ping_interval: Option<SStr>,
    pub ws_message_rate: Option<SStr>,
    /// TLS to every server (also implied by `https://` / `wss://` servers).
    pub tls: Option<Spanned<bool>>,
    pub tls_ca: Option<SStr>,
    pub tls_server_name: Option<SStr>,
    pub tls_client_cert: Option<SStr>,
    pub tls_client_key: Option<SStr>,
    /// `h1`, `h2` (over TLS, ALPN) or `h2c` (cleartext HTTP/2).
    pub protocol: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct HealthFile {
    pub path: Option<SStr>,
    pub interval: Option<SStr>,
    pub timeout: Option<SStr>,
    pub healthy: Option<Spanned<i64>>,
    pub unhealthy: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RouteFile {
    pub host: Option<SStr>,
    pub path: SStr,
    pub upstream: Option<SStr>,
    pub app: Option<SStr>,
    pub root: Option<SStr>,
    pub strip_prefix: Option<bool>,
    pub websocket: Option<bool>,
    pub origins: Option<Vec<SStr>>,
    pub listeners: Option<Vec<SStr>>,
    pub limits: Option<Vec<SStr>>,
    pub auth: Option<SStr>,
    pub auth_claims_to_headers: Option<Spanned<BTreeMap<String, SStr>>>,
    pub auth_request: Option<SStr>,
    pub auth_request_path: Option<SStr>,
    pub auth_request_headers: Option<Vec<SStr>>,
    pub auth_request_cache: Option<SStr>,
    pub auth_request_cache_key: Option<Spanned<Vec<SStr>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct AppsFile {
    pub echo: Option<EchoFile>,
    pub chat: Option<ChatFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct EchoFile {
    pub max_message_size: Option<SStr>,
    pub compression: Option<bool>,
    pub ping_interval: Option<SStr>,
    pub idle_timeout: Option<SStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct ChatFile {
    pub history: Option<Spanned<i64>>,
    pub history_ttl: Option<SStr>,
    pub history_memory: Option<SStr>,
    pub max_message_size: Option<SStr>,
    pub ping_interval: Option<SStr>,
    pub send_queue: Option<Spanned<i64>>,
    pub push_token: Option<SStr>,
    pub poll_idle_timeout: Option<SStr>,
    pub max_rooms_per_connection: Option<Spanned<i64>>,
    pub max_rooms: Option<Spanned<i64>>,
    pub max_rooms_per_ip: Option<Spanned<i64>>,
    pub max_poll_sessions: Option<Spanned<i64>>,
    pub max_poll_sessions_per_ip: Option<Spanned<i64>>,
    pub message_rate: Option<SStr>,
    pub message_burst: Option<Spanned<i64>>,
    pub auth: Option<SStr>,
    pub user_claim: Option<SStr>,
    pub anonymous: Option<Spanned<bool>>,
    pub guest_rooms: Option<Spanned<Vec<String>>>,
    pub max_connections_per_user: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct ClusterFile {
    pub redis: Option<SStr>,
    pub redis_cluster: Option<Spanned<Vec<SStr>>>,
    pub sentinels: Option<Spanned<Vec<SStr>>>,
    pub sentinel_master: Option<SStr>,
    pub heartbeat: Option<SStr>,
    pub room_ttl: Option<SStr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(text: &str) -> Result<Vec<ServerEntryFile>, toml::de::Error> {
        #[derive(Deserialize)]
        struct Up {
            servers: Vec<ServerEntryFile>,
        }
        toml::from_str::<Up>(text).map(|u| u.servers)
    }

    #[test]
    fn server_entries_are_strings_or_tables() {
        let s = servers(r#"servers = ["127.0.0.1:3000", { addr = "127.0.0.1:3001", weight = 2 }]"#)
            .unwrap();
        assert!(
            matches!(&s[0], ServerEntryFile::Addr(a) if a.get_ref() == "127.0.0.1:3000" && a.span().start > 0)
        );
        assert!(matches!(&s[1], ServerEntryFile::Table(t)
            if t.addr.get_ref() == "127.0.0.1:3001" && t.weight.as_ref().map(|w| *w.get_ref()) == Some(2)));
        assert!(servers(r#"servers = [{ addr = "a:1", wieght = 2 }]"#).is_err());
        assert!(servers("servers = [3000]").is_err());
    }
}

/// `[limit.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct LimitFile {
    pub rate: SStr,
    pub burst: Option<Spanned<i64>>,
    pub key: Option<SStr>,
    pub scope: Option<SStr>,
    pub max_keys: Option<Spanned<i64>>,
}

/// `[auth.NAME]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct AuthFile {
    pub hmac_secret: Option<SStr>,
    pub public_keys: Option<Vec<SStr>>,
    pub jwks: Option<SStr>,
    pub issuer: Option<SStr>,
    pub audience: Option<SStr>,
    pub leeway: Option<SStr>,
    pub token_from: Option<Vec<SStr>>,
}
