//! `FileConfig` → `Config`: applies defaults, parses units, resolves names and
//! paths, and collects *every* problem (not just the first) with its position.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use toml::Spanned;

use super::file::*;
use super::units::{parse_duration, parse_size};
use super::*;

/// Collects issues while walking the raw config.
struct Ctx<'a> {
    text: &'a str,
    issues: Vec<ConfigIssue>,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    fn at(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        let pos = Some(super::line_col(self.text, span.start));
        self.issues.push(ConfigIssue {
            pos,
            key: None,
            message: message.into(),
        });
    }

    fn key(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            pos: None,
            key: Some(key.to_string()),
            message: message.into(),
        });
    }

    fn duration(&mut self, v: &Option<SStr>, key: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|e| {
                self.at(s.span(), format!("{key}: {e}"));
                default
            }),
        }
    }

    fn size(&mut self, v: &Option<SStr>, key: &str, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => parse_size(s.get_ref()).unwrap_or_else(|e| {
                self.at(s.span(), format!("{key}: {e}"));
                default
            }),
        }
    }

    /// An integer in `[min, max]`.
    fn int(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> i64 {
        match v {
            None => default,
            Some(n) if (min..=max).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                self.at(
                    n.span(),
                    format!("{key}: {} is out of range ({min}..={max})", n.get_ref()),
                );
                default
            }
        }
    }

    /// A file that must exist and be readable; resolved against the working directory.
    fn readable_file(&mut self, v: &SStr, key: &str) -> PathBuf {
        let p = PathBuf::from(v.get_ref());
        if let Err(e) = std::fs::File::open(&p) {
            let hint = if key.ends_with("cert") || key.ends_with("key") {
                " (create a dev certificate with `wsgate gen-cert`)"
            } else {
                ""
            };
            self.at(
                v.span(),
                format!(
                    "{key}: cannot read {:?}: {e}{hint}",
                    p.display().to_string()
                ),
            );
        }
        p
    }
}

pub fn validate(path: &Path, text: &str, raw: FileConfig) -> Result<Config, ConfigError> {
    let mut cx = Ctx {
        text,
        issues: Vec::new(),
        warnings: Vec::new(),
    };
    let server = server(&mut cx, &raw.server);
    let log = log(&mut cx, &raw.log);
    let listeners = listeners(&mut cx, &raw.listener);
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| socket_addr(&mut cx, &a.addr, "admin.addr"));
    let upstreams = upstreams(&mut cx, &raw.upstream);
    let routes = routes(&mut cx, &raw.route, &upstreams);
    let echo = echo(&mut cx, raw.app.echo.as_ref());
    let chat = chat(&mut cx, raw.app.chat.as_ref());
    let cluster = raw.cluster.as_ref().map(|c| cluster(&mut cx, c));

    if let (Some(a), true) = (admin, admin.is_some_and(|a| a.port() != 0)) {
        if listeners.iter().any(|l| l.addr == a) {
            cx.key("admin.addr", format!("{a} is also a [[listener]] address"));
        }
    }
    if listeners.is_empty() && cx.issues.is_empty() {
        cx.key(
            "listener",
            "no [[listener]] configured: add one, e.g. [[listener]] addr = \"127.0.0.1:8080\"",
        );
    }
    if server.secret.is_none() && upstreams.values().any(|u| u.sticky == Sticky::Cookie) {
        cx.warnings.push(
            "server.secret is empty: sticky cookies use a key generated at start and do not survive a restart".into(),
        );
    }

    if !cx.issues.is_empty() {
        return Err(ConfigError {
            path: path.to_path_buf(),
            issues: cx.issues,
        });
    }
    Ok(Config {
        source: path.to_path_buf(),
        server,
        log,
        listeners,
        admin,
        upstreams,
        routes,
        echo,
        chat,
        cluster,
        warnings: cx.warnings,
    })
}

fn server(cx: &mut Ctx, s: &ServerFile) -> ServerConfig {
    let node_id = match &s.node_id {
        Some(n)
            if n.get_ref().is_empty()
                || n.get_ref().len() > 64
                || n.get_ref().contains(char::is_whitespace) =>
        {
            cx.at(
                n.span(),
                "server.node_id: must be 1-64 characters without spaces",
            );
            default_node_id()
        }
        Some(n) => n.get_ref().clone(),
        None => default_node_id(),
    };
    let secret = s.secret.as_ref().and_then(|v| {
        if v.get_ref().is_empty() {
            return None;
        }
        match base64::engine::general_purpose::STANDARD.decode(v.get_ref().trim()) {
            Ok(b) if b.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(&b);
                Some(k)
            }
            Ok(b) => {
                cx.at(v.span(), format!("server.secret: decodes to {} bytes, need 32 (try `openssl rand -base64 32`)", b.len()));
                None
            }
            Err(_) => {
                cx.at(v.span(), "server.secret: not valid base64 (try `openssl rand -base64 32`)");
                None
            }
        }
    });
    ServerConfig {
        node_id,
        max_connections: cx.int(
            &s.max_connections,
            "server.max_connections",
            10_000,
            1,
            10_000_000,
        ) as usize,
        max_connections_per_ip: cx.int(
            &s.max_connections_per_ip,
            "server.max_connections_per_ip",
            0,
            0,
            10_000_000,
        ) as usize,
        header_timeout: cx.duration(
            &s.header_timeout,
            "server.header_timeout",
            Duration::from_secs(10),
        ),
        keepalive_timeout: cx.duration(
            &s.keepalive_timeout,
            "server.keepalive_timeout",
            Duration::from_secs(60),
        ),
        tls_handshake_timeout: cx.duration(
            &s.tls_handshake_timeout,
            "server.tls_handshake_timeout",
            Duration::from_secs(10),
        ),
        shutdown_grace: cx.duration(
            &s.shutdown_grace,
            "server.shutdown_grace",
            Duration::from_secs(30),
        ),
        max_request_head: cx
            .size(&s.max_request_head, "server.max_request_head", 64 * 1024)
            .clamp(0, 16 << 20) as usize,
        secret,
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wsgate".into());
    format!("{host}-{}", std::process::id())
}

fn log(cx: &mut Ctx, l: &LogFile) -> LogConfig {
    let format = match l.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("text", _)) => LogFormat::Text,
        Some(("json", _)) => LogFormat::Json,
        Some((other, span)) => {
            cx.at(
                span,
                format!("log.format: {other:?} is not one of \"text\", \"json\""),
            );
            LogFormat::Text
        }
    };
    LogConfig {
        format,
        access_log: l.access_log.unwrap_or(true),
    }
}

fn socket_addr(cx: &mut Ctx, v: &SStr, key: &str) -> Option<SocketAddr> {
    match v.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.at(
                v.span(),
                format!(
                    "{key}: {:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")",
                    v.get_ref()
                ),
            );
            None
        }
    }
}

fn listeners(cx: &mut Ctx, ls: &[Spanned<ListenerFile>]) -> Vec<ListenerConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, l) in ls.iter().enumerate() {
        let l = l.get_ref();
        let key = format!("listener[{i}]");
        let Some(addr) = socket_addr(cx, &l.addr, &format!("{key}.addr")) else {
            continue;
        };
        // Port 0 asks the OS for a free port; two of those never collide.
        if addr.port() != 0 && !seen.insert(addr) {
            cx.at(
                l.addr.span(),
                format!("{key}.addr: duplicate listener address {addr}"),
            );
        }
        let tls = l.tls.as_ref().map(|t| {
            let default = CertPaths {
                cert: cx.readable_file(&t.cert, &format!("{key}.tls.cert")),
                key: cx.readable_file(&t.key, &format!("{key}.tls.key")),
            };
            let sni = t
                .sni
                .iter()
                .enumerate()
                .filter_map(|(j, s)| {
                    let k = format!("{key}.tls.sni[{j}]");
                    let paths = CertPaths {
                        cert: cx.readable_file(&s.cert, &format!("{k}.cert")),
                        key: cx.readable_file(&s.key, &format!("{k}.key")),
                    };
                    match HostPattern::parse(s.host.get_ref()) {
                        Ok(h) => Some((h, paths)),
                        Err(e) => {
                            cx.at(s.host.span(), format!("{k}.host: {e}"));
                            None
                        }
                    }
                })
                .collect();
            let mut found = Vec::new();
            let client_auth = super::client_auth::parse(t, &format!("{key}.tls"), &mut found);
            found.into_iter().for_each(|(span, m)| cx.at(span, m));
            TlsConfig {
                default,
                sni,
                client_auth,
            }
        });
        out.push(ListenerConfig { addr, tls });
    }
    out
}

fn upstreams(
    cx: &mut Ctx,
    ups: &BTreeMap<String, Spanned<UpstreamFile>>,
) -> BTreeMap<String, UpstreamConfig> {
    ups.iter()
        .map(|(name, u)| (name.clone(), upstream(cx, name, u)))
        .collect()
}

fn upstream(cx: &mut Ctx, name: &str, u: &Spanned<UpstreamFile>) -> UpstreamConfig {
    let span = u.span();
    let u = u.get_ref();
    let k = |s: &str| format!("upstream.{name}.{s}");
    let servers = servers(cx, name, &u.servers);
    if servers.is_empty() && u.servers.get_ref().is_empty() {
        cx.at(
            span,
            format!("{}: at least one server is required", k("servers")),
        );
    }
    let balance = match u.balance.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
        None | Some(("round_robin", _)) => Balance::RoundRobin,
        Some(("least_conn", _)) => Balance::LeastConn,
        Some(("random", _)) => Balance::Random,
        Some((other, sp)) => {
            cx.at(
                sp,
                format!(
                    "{}: {other:?} is not one of round_robin, least_conn, random",
                    k("balance")
                ),
            );
            Balance::RoundRobin
        }
    };
    let sticky = u
        .sticky
        .as_ref()
        .map(|s| sticky(cx, s, &k("sticky")))
        .unwrap_or(Sticky::None);
    let sticky_cookie = match &u.sticky_cookie {
        Some(c) if !valid_token(c.get_ref()) => {
            cx.at(
                c.span(),
                format!(
                    "{}: {:?} is not a valid cookie name",
                    k("sticky_cookie"),
                    c.get_ref()
                ),
            );
            String::new()
        }
        Some(c) => c.get_ref().clone(),
        None => "wsgate_sticky".into(),
    };
    let health = u.health.as_ref().map(|h| HealthConfig {
        path: match &h.path {
            Some(p) if !p.get_ref().starts_with('/') => {
                cx.at(
                    p.span(),
                    format!("{}: must start with '/'", k("health.path")),
                );
                "/".into()
            }
            Some(p) => p.get_ref().clone(),
            None => "/healthz".into(),
        },
        interval: cx.duration(&h.interval, &k("health.interval"), Duration::from_secs(5)),
        timeout: cx.duration(&h.timeout, &k("health.timeout"), Duration::from_secs(2)),
        healthy: cx.int(&h.healthy, &k("health.healthy"), 2, 1, 1000) as u32,
        unhealthy: cx.int(&h.unhealthy, &k("health.unhealthy"), 3, 1, 1000) as u32,
    });
    UpstreamConfig {
        name: name.to_string(),
        servers,
        balance,
        sticky,
        sticky_cookie,
        connect_timeout: cx.duration(
            &u.connect_timeout,
            &k("connect_timeout"),
            Duration::from_secs(3),
        ),
        response_timeout: cx.duration(
            &u.response_timeout,
            &k("response_timeout"),
            Duration::from_secs(60),
        ),
        ws_idle_timeout: cx.duration(
            &u.ws_idle_timeout,
            &k("ws_idle_timeout"),
            Duration::from_secs(600),
        ),
        max_fails: cx.int(&u.max_fails, &k("max_fails"), 3, 0, 1000) as u32,
        fail_timeout: cx.duration(&u.fail_timeout, &k("fail_timeout"), Duration::from_secs(10)),
        retries: cx.int(&u.retries, &k("retries"), 1, 0, 10) as u32,
        health,
        ws_inspect: u.ws_inspect.unwrap_or(false),
        ws_max_message_size: cx.size(&u.ws_max_message_size, &k("ws_max_message_size"), 16 << 20),
        ws_ping_interval: cx.duration(&u.ws_ping_interval, &k("ws_ping_interval"), Duration::ZERO),
    }
}

fn servers(cx: &mut Ctx, name: &str, list: &Spanned<Vec<ServerEntryFile>>) -> Vec<ServerEntry> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, s) in list.get_ref().iter().enumerate() {
        let key = format!("upstream.{name}.servers[{i}]");
        let (addr, weight) = match s {
            ServerEntryFile::Addr(a) => (a, 1),
            ServerEntryFile::Table(t) => (
                &t.addr,
                cx.int(&t.weight, &format!("{key}.weight"), 1, 1, 1000) as u32,
            ),
        };
        if !valid_host_port(addr.get_ref()) {
            cx.at(
                addr.span(),
                format!(
                    "{key}: {:?} is not host:port (e.g. \"127.0.0.1:3000\")",
                    addr.get_ref()
                ),
            );
            continue;
        }
        if !seen.insert(addr.get_ref().clone()) {
            cx.at(
                addr.span(),
                format!("{key}: server {} listed twice", addr.get_ref()),
            );
            continue;
        }
        out.push(ServerEntry {
            addr: addr.get_ref().clone(),
            weight,
        });
    }
    out
}

fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok_and(|p| p != 0)
                && HostPattern::parse(host).is_ok_and(|h| matches!(h, HostPattern::Exact(_)))
        }
        None => false,
    }
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn sticky(cx: &mut Ctx, s: &SStr, key: &str) -> Sticky {
    let v = s.get_ref().as_str();
    match v {
        "none" => Sticky::None,
        "cookie" => Sticky::Cookie,
        "ip" => Sticky::Ip,
        _ => {
            if let Some(h) = v.strip_prefix("header:") {
                if let Ok(name) = http::HeaderName::from_bytes(h.trim().as_bytes()) {
                    return Sticky::Header(name);
                }
            } else if let Some(q) = v.strip_prefix("query:") {
                if !q.trim().is_empty() {
                    return Sticky::Query(q.trim().to_string());
                }
            }
            cx.at(
                s.span(),
                format!(
                    "{key}: {v:?} is not one of none, cookie, ip, \"header:NAME\", \"query:NAME\""
                ),
            );
            Sticky::None
        }
    }
}

fn routes(
    cx: &mut Ctx,
    rs: &[Spanned<RouteFile>],
    ups: &BTreeMap<String, UpstreamConfig>,
) -> Vec<RouteConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in rs.iter().enumerate() {
        let span = r.span();
        let r = r.get_ref();
        let key = format!("route[{i}]");
        if !r.path.get_ref().starts_with('/') {
            cx.at(
                r.path.span(),
                format!("{key}.path: {:?} must start with '/'", r.path.get_ref()),
            );
            continue;
        }
        let host = r.host.as_ref().and_then(|h| {
            HostPattern::parse(h.get_ref())
                .map_err(|e| cx.at(h.span(), format!("{key}.host: {e}")))
                .ok()
        });
        let targets = [r.upstream.is_some(), r.app.is_some(), r.root.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if targets != 1 {
            cx.at(
                span.clone(),
                format!("{key}: a route needs exactly one of `upstream`, `app` or `root` (found {targets})"),
            );
            continue;
        }
        let target = if let Some(u) = &r.upstream {
            if !ups.contains_key(u.get_ref()) {
                let known: Vec<_> = ups.keys().map(String::as_str).collect();
                cx.at(
                    u.span(),
                    format!(
                        "{key}.upstream: no [upstream.{}] is defined (known: {known:?})",
                        u.get_ref()
                    ),
                );
                continue;
            }
            RouteTarget::Upstream(u.get_ref().clone())
        } else if let Some(a) = &r.app {
            match a.get_ref().as_str() {
                "echo" => RouteTarget::App(AppKind::Echo),
                "chat" => RouteTarget::App(AppKind::Chat),
                other => {
                    cx.at(
                        a.span(),
                        format!(
                            "{key}.app: unknown app {other:?} (built-in apps: \"echo\", \"chat\")"
                        ),
                    );
                    continue;
                }
            }
        } else if let Some(root) = &r.root {
            let p = PathBuf::from(root.get_ref());
            if !p.is_dir() {
                cx.at(
                    root.span(),
                    format!(
                        "{key}.root: {:?} is not a readable directory",
                        root.get_ref()
                    ),
                );
                continue;
            }
            RouteTarget::Static(p)
        } else {
            continue;
        };
        if !seen.insert((host.clone(), r.path.get_ref().clone())) {
            cx.at(
                r.path.span(),
                format!("{key}.path: another route already has this host and path"),
            );
        }
        let origins = r.origins.as_ref().map(|os| {
            os.iter()
                .map(|o| o.get_ref().trim_end_matches('/').to_string())
                .collect()
        });
        let mut found = Vec::new();
        let auth_request = super::auth_request::parse(r, &key, ups, &mut found);
        found.into_iter().for_each(|(span, m)| cx.at(span, m));
        out.push(RouteConfig {
            host,
            path: r.path.get_ref().clone(),
            target,
            strip_prefix: r.strip_prefix.unwrap_or(false),
            websocket: r.websocket.unwrap_or(true),
            origins,
            auth_request,
        });
    }
    out
}

fn echo(cx: &mut Ctx, e: Option<&EchoFile>) -> EchoConfig {
    let d = EchoFile::default();
    let e = e.unwrap_or(&d);
    EchoConfig {
        max_message_size: cx
            .size(&e.max_message_size, "app.echo.max_message_size", 16 << 20)
            .max(1),
        compression: e.compression.unwrap_or(true),
        ping_interval: cx.duration(&e.ping_interval, "app.echo.ping_interval", Duration::ZERO),
        idle_timeout: cx.duration(
            &e.idle_timeout,
            "app.echo.idle_timeout",
            Duration::from_secs(600),
        ),
    }
}

fn chat(cx: &mut Ctx, c: Option<&ChatFile>) -> ChatConfig {
    let d = ChatFile::default();
    let c = c.unwrap_or(&d);
    ChatConfig {
        history: cx.int(&c.history, "app.chat.history", 100, 0, 100_000) as usize,
        max_message_size: cx
            .size(&c.max_message_size, "app.chat.max_message_size", 64 * 1024)
            .max(1),
        ping_interval: cx.duration(
            &c.ping_interval,
            "app.chat.ping_interval",
            Duration::from_secs(30),
        ),
        send_queue: cx.int(&c.send_queue, "app.chat.send_queue", 1024, 1, 1_000_000) as usize,
        push_token: c
            .push_token
            .as_ref()
            .map(|t| t.get_ref().clone())
            .filter(|t| !t.is_empty()),
        poll_idle_timeout: cx.duration(
            &c.poll_idle_timeout,
            "app.chat.poll_idle_timeout",
            Duration::from_secs(60),
        ),
    }
}

fn cluster(cx: &mut Ctx, c: &ClusterFile) -> ClusterConfig {
    let url = c.redis.get_ref();
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://"))
    {
        cx.at(
            c.redis.span(),
            format!("cluster.redis: {url:?} is not a redis:// URL"),
        );
    }
    let heartbeat = cx.duration(&c.heartbeat, "cluster.heartbeat", Duration::from_secs(2));
    if heartbeat < Duration::from_millis(100) {
        if let Some(h) = &c.heartbeat {
            cx.at(h.span(), "cluster.heartbeat: must be at least 100ms");
        }
    }
    ClusterConfig {
        redis: url.clone(),
        heartbeat,
    }
}
