//! `FileConfig` → `Config`: applies defaults, parses units, resolves names and
//! paths, and collects *every* problem (not just the first) with its position.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use toml::Spanned;

use super::file::*;
use super::*;

/// The smallest `server.max_request_head`: hyper's HTTP/1.1 read buffer
/// cannot be smaller (its `max_buf_size` minimum).
const MIN_REQUEST_HEAD: u64 = 8 << 10;
/// The largest `server.max_request_head`.
const MAX_REQUEST_HEAD: u64 = 16 << 20;
/// The smallest `server.max_buffered`: a few sessions' ordinary reads (one is
/// at most 64 KiB) must fit, or every large read would close sessions.
const MIN_BUFFERED: u64 = 1 << 20;
/// The largest `server.max_buffered` (1 TiB): beyond any memory it could
/// protect; a larger value is more likely a typo than a wish.
const MAX_BUFFERED: u64 = 1 << 40;

pub(super) mod ctx;
mod routes;
mod upstream_tls;
mod upstreams;

pub(super) use self::ctx::Ctx;
use self::routes::{chat, cluster, echo, routes};
use self::upstreams::upstreams;

pub fn validate(
    path: &Path,
    text: &str,
    raw: FileConfig,
    checks: Checks,
) -> Result<Config, ConfigError> {
    let mut cx = Ctx {
        path,
        text,
        checks,
        issues: Vec::new(),
        warnings: Vec::new(),
        underscores: raw.server.underscores_in_headers.unwrap_or(false),
    };
    let server = server(&mut cx, &raw.server);
    let log = log(&mut cx, &raw.log);
    let limits = super::limits::limits(&mut cx, &raw.limit, raw.cluster.is_some());
    let listeners = listeners(&mut cx, &raw.listener, &limits);
    // An empty list that was meant to hold entries was said wrong already:
    // "no proxy is trusted" on top would send the reader the wrong way.
    let bad_entry = |i: &ConfigIssue| i.message.starts_with("server.trusted_proxies[");
    if !cx.issues.iter().any(bad_entry) {
        for (span, m) in client_addr::proxy_protocol(&raw.listener, &server.trusted_proxies) {
            cx.at(span, m);
        }
    }
    let admin = raw.admin.as_ref().and_then(|a| {
        let addr = socket_addr(&mut cx, &a.addr, "admin.addr")?;
        cx.try_bind(&a.addr, "admin.addr", addr);
        Some(addr)
    });
    let upstreams = upstreams(&mut cx, &raw.upstream);
    let auth = crate::config::auth::auths(
        &mut crate::config::auth::Issues {
            text,
            issues: &mut cx.issues,
        },
        &raw.auth,
    );
    let addrs: Vec<std::net::SocketAddr> = listeners.iter().map(|l| l.addr).collect();
    let routes = routes(&mut cx, &raw.route, &upstreams, &limits, &raw.auth, &addrs);
    let echo = echo(&mut cx, raw.app.echo.as_ref());
    let chat = chat(&mut cx, raw.app.chat.as_ref(), &raw.auth);
    let cluster = raw.cluster.as_ref().map(|c| cluster(&mut cx, c));

    if let (Some(a), true) = (admin, admin.is_some_and(|a| a.port() != 0)) {
        if let Some(l) = listeners.iter().find(|l| overlaps(l.addr, a)) {
            let msg = if l.addr == a {
                format!("{a} is also a [[listener]] address")
            } else {
                format!("{a} and the [[listener]] at {} cannot both listen: a wildcard address takes its port on every interface", l.addr)
            };
            match raw.admin.as_ref() {
                Some(f) => cx.at(f.addr.span(), format!("admin.addr: {msg}")),
                None => cx.key("admin.addr", msg),
            }
        }
    }
    if listeners.is_empty() && cx.issues.is_empty() {
        cx.key(
            "listener",
            "no [[listener]] configured: add one, e.g. [[listener]] addr = \"127.0.0.1:8080\"",
        );
    }
    if chat.auth.is_none() {
        let behind_callout_only = |r: &&RouteConfig| {
            matches!(r.target, RouteTarget::App(AppKind::Chat))
                && r.auth_request.is_some()
                && r.auth.is_none()
        };
        for r in routes.iter().filter(behind_callout_only) {
            cx.warnings.push(format!(
                "the chat route {:?} is behind auth_request alone: a callout names no user, so the chat takes ?user= and any client the service allows can be any user; add auth to the route, or set [app.chat] auth",
                r.path
            ));
        }
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
        admin_at: raw
            .admin
            .as_ref()
            .map_or((0, 0), |a| super::line_col(text, a.addr.span().start)),
        upstreams,
        routes,
        echo,
        chat,
        cluster,
        limits,
        auth,
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
    let shutdown_grace = cx.positive_duration(
        &s.shutdown_grace,
        "server.shutdown_grace",
        Duration::from_secs(30),
    );
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
        header_timeout: cx.positive_duration(
            &s.header_timeout,
            "server.header_timeout",
            Duration::from_secs(10),
        ),
        send_timeout: cx.positive_duration(
            &s.send_timeout,
            "server.send_timeout",
            Duration::from_secs(60),
        ),
        keepalive_timeout: cx.positive_duration(
            &s.keepalive_timeout,
            "server.keepalive_timeout",
            Duration::from_secs(60),
        ),
        tls_handshake_timeout: cx.positive_duration(
            &s.tls_handshake_timeout,
            "server.tls_handshake_timeout",
            Duration::from_secs(10),
        ),
        tls_tickets: s.tls_tickets.unwrap_or(true),
        underscores_in_headers: cx.underscores,
        shutdown_grace,
        drain_window: drain_window(cx, s, shutdown_grace),
        max_request_head: cx.size_in(
            &s.max_request_head,
            "server.max_request_head",
            64 * 1024,
            MIN_REQUEST_HEAD,
            MAX_REQUEST_HEAD,
        ) as usize,
        max_buffered: cx.size_in(
            &s.max_buffered,
            "server.max_buffered",
            1 << 30,
            MIN_BUFFERED,
            MAX_BUFFERED,
        ),
        secret: secret.map(crate::config::Redacted),
        trusted_proxies: {
            let (t, issues) = client_addr::trusted_proxies(s.trusted_proxies.as_deref());
            issues.into_iter().for_each(|(span, m)| cx.at(span, m));
            t
        },
    }
}

/// `server.drain_window`: closes are paced within the grace, never past it
/// (a window longer than the grace would be cut short by the hard stop).
fn drain_window(cx: &mut Ctx, s: &ServerFile, grace: Duration) -> Duration {
    let window = cx.duration(
        &s.drain_window,
        "server.drain_window",
        Duration::from_secs(10).min(grace),
    );
    if let Some(v) = &s.drain_window {
        if window > grace {
            cx.at(
                v.span(),
                format!(
                    "server.drain_window: {} is longer than server.shutdown_grace ({} ms); closes would be cut short",
                    v.get_ref(),
                    grace.as_millis()
                ),
            );
            return grace;
        }
    }
    window
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

/// What a path a request could never carry is told (after the path): one
/// hyper would not send or take as is, with a space or another byte a
/// request must percent-encode.
const NOT_A_PATH: &str =
    "is not a request path (spaces and other reserved bytes must be percent-encoded)";

fn is_request_path(path: &str) -> bool {
    path.parse::<http::uri::PathAndQuery>().is_ok()
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

fn listeners(
    cx: &mut Ctx,
    ls: &[Spanned<ListenerFile>],
    limits: &std::collections::BTreeMap<String, LimitConfig>,
) -> Vec<ListenerConfig> {
    let mut seen: Vec<(SocketAddr, String)> = Vec::new();
    let mut acme_seen: Vec<(AcmeConfig, String)> = Vec::new();
    let mut out = Vec::new();
    let has_plain = ls.iter().any(|l| l.get_ref().tls.is_none());
    for (i, l) in ls.iter().enumerate() {
        let l = l.get_ref();
        let key = format!("listener[{i}]");
        let Some(addr) = socket_addr(cx, &l.addr, &format!("{key}.addr")) else {
            continue;
        };
        // Port 0 asks the OS for a free port; two of those never collide.
        let clash = (addr.port() != 0)
            .then(|| seen.iter().find(|(o, _)| overlaps(*o, addr)))
            .flatten();
        match clash {
            Some((o, _)) if *o == addr => cx.at(
                l.addr.span(),
                format!("{key}.addr: duplicate listener address {addr}"),
            ),
            Some((o, other)) => cx.at(
                l.addr.span(),
                format!("{key}.addr: {addr} and {other}.addr ({o}) cannot both listen: a wildcard address takes its port on every interface"),
            ),
            None => {
                seen.push((addr, key.clone()));
                cx.try_bind(&l.addr, &format!("{key}.addr"), addr);
            }
        }
        let span = ls[i].span();
        let tls = l.tls.as_ref().map(|t| {
            let default = listener_cert(cx, t, &key, span, has_plain);
            let sni = sni_certs(cx, t, &key);
            let mut found = Vec::new();
            let client_auth = super::client_auth::parse(t, &format!("{key}.tls"), &mut found);
            found.into_iter().for_each(|(span, m)| cx.at(span, m));
            TlsConfig {
                default,
                sni,
                client_auth,
            }
        });
        if let (Some(t), Some(ListenerCert::Acme(a))) = (&l.tls, tls.as_ref().map(|t| &t.default)) {
            acme_clash(cx, &mut acme_seen, a, t, &key);
        }
        let connection_limits =
            super::limits::connection_limits(cx, l.connection_limits.as_ref(), &key, limits);
        let proxy_protocol = client_addr::listener_proxy_protocol(l);
        out.push(ListenerConfig {
            addr,
            addr_at: super::line_col(cx.text, l.addr.span().start),
            tls,
            connection_limits,
            proxy_protocol,
        });
    }
    out
}

/// Two ACME tables for the same names in the same cache must be one: else
/// two renewal tasks order those names and write the same cache files (and
/// answer the same challenges). Equal tables share one certificate.
fn acme_clash(
    cx: &mut Ctx,
    seen: &mut Vec<(AcmeConfig, String)>,
    a: &AcmeConfig,
    t: &TlsFile,
    key: &str,
) {
    // The same names in another order are other files, but the same
    // certificate to the CA: ordered twice, a duplicate it counts.
    let sorted = |c: &AcmeConfig| {
        let mut d = c.domains.clone();
        d.sort();
        d
    };
    let same_files =
        |o: &AcmeConfig| o.directory == a.directory && o.cache == a.cache && sorted(o) == sorted(a);
    match seen.iter().find(|(o, _)| same_files(o)) {
        Some((o, other)) if o != a => {
            if let Some(span) = t.acme.as_ref().map(|s| s.span()) {
                cx.at(
                    span,
                    format!("{key}.tls.acme: the same directory, cache and domains as {other}.tls.acme, with other settings (or the domains in another order): both would order these names into the same cache; make the two tables equal (one certificate then serves both listeners) or give one its own cache"),
                );
            }
        }
        Some(_) => {}
        None => seen.push((a.clone(), key.to_string())),
    }
}

/// The listener's `[[listener.tls.sni]]` certificates. A host listed twice
/// (names are compared without case, as SNI is) is refused: only the first
/// would ever be served.
fn sni_certs(cx: &mut Ctx, t: &TlsFile, key: &str) -> Vec<(HostPattern, CertPaths)> {
    let mut out: Vec<(HostPattern, CertPaths)> = Vec::new();
    let mut first = Vec::new();
    for (j, s) in t.sni.iter().enumerate() {
        let k = format!("{key}.tls.sni[{j}]");
        let mut paths = cx.cert_pair(&s.cert, &s.key, &k);
        paths.ocsp = cx.ocsp_file(&s.ocsp, &k);
        let h = match HostPattern::parse(s.host.get_ref()) {
            Ok(h) => h,
            Err(e) => {
                cx.at(s.host.span(), format!("{k}.host: {e}"));
                continue;
            }
        };
        match out.iter().position(|(o, _)| *o == h) {
            Some(i) => cx.at(
                s.host.span(),
                format!(
                    "{k}.host: {:?} is already {key}.tls.sni[{}]'s host (names are compared without case)",
                    s.host.get_ref(),
                    first[i]
                ),
            ),
            None => {
                out.push((h, paths));
                first.push(j);
            }
        }
    }
    out
}

/// The listener's default certificate: `cert` + `key` (and `ocsp`), or
/// `[listener.tls.acme]`; exactly one of the two.
fn listener_cert(
    cx: &mut Ctx,
    t: &TlsFile,
    key: &str,
    listener: std::ops::Range<usize>,
    has_plain: bool,
) -> ListenerCert {
    let k = format!("{key}.tls");
    let placeholder = || {
        ListenerCert::Files(CertPaths {
            cert: Default::default(),
            key: Default::default(),
            ocsp: None,
        })
    };
    match (&t.cert, &t.key, &t.acme) {
        (None, None, Some(a)) => {
            if let Some(o) = &t.ocsp {
                cx.at(
                    o.span(),
                    format!("{k}.ocsp: not used with [listener.tls.acme] (the response would be for another certificate); remove it"),
                );
            }
            let mut found = Vec::new();
            let acme = super::acme::parse(a, &k, has_plain, &mut found);
            found.into_iter().for_each(|(span, m)| cx.at(span, m));
            acme.map(ListenerCert::Acme).unwrap_or_else(placeholder)
        }
        (Some(c), Some(kk), None) => {
            let mut paths = cx.cert_pair(c, kk, &k);
            paths.ocsp = cx.ocsp_file(&t.ocsp, &k);
            ListenerCert::Files(paths)
        }
        (_, _, Some(a)) => {
            cx.at(
                a.span(),
                format!("{k}.acme: use either cert/key or [listener.tls.acme], not both"),
            );
            placeholder()
        }
        (Some(c), None, None) => {
            cx.at(
                c.span(),
                format!("{k}.key: missing (the private key of {k}.cert)"),
            );
            placeholder()
        }
        (None, Some(kk), None) => {
            cx.at(
                kk.span(),
                format!("{k}.cert: missing (the certificate for {k}.key)"),
            );
            placeholder()
        }
        (None, None, None) => {
            cx.at(
                listener,
                format!("{k}: needs cert and key, or a [listener.tls.acme] table"),
            );
            placeholder()
        }
    }
}

/// Whether listening on both `a` and `b` must fail: the same address, or
/// the same port where one is a wildcard that covers the other (`[::]` takes
/// IPv4 too: the gateway leaves `IPV6_V6ONLY` at the system's default, off).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    // `[::ffff:127.0.0.1]` is 127.0.0.1 to the kernel.
    let (a, b) = (
        SocketAddr::new(a.ip().to_canonical(), a.port()),
        SocketAddr::new(b.ip().to_canonical(), b.port()),
    );
    let covers = |w: SocketAddr, o: SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv6() || w.is_ipv4() == o.is_ipv4())
    };
    a == b || covers(a, b) || covers(b, a)
}
