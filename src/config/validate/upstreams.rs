//! `[upstream.NAME]`: servers, weights, balancing, stickiness, health and
//! the WebSocket options of a pool.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::ctx::Ctx;
use super::upstream_tls::{protocol, split_scheme, upstream_tls, Schemes};
use crate::config::file::*;
use crate::config::*;

pub(super) fn upstreams(
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
    let max_conns = cx.int(&u.max_conns, &k("max_conns"), 0, 0, MAX_CONNS) as u32;
    let (servers, schemes) = servers(cx, name, &u.servers, max_conns);
    let tls = upstream_tls(cx, name, u, &schemes);
    let protocol = protocol(cx, name, u, tls.is_some());
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
            // The probe's request could not be made, and the pool, though
            // healthy, would be marked down with no word why.
            Some(p) if !super::is_request_path(p.get_ref()) => {
                cx.at(
                    p.span(),
                    format!(
                        "{}: {:?} {}",
                        k("health.path"),
                        p.get_ref(),
                        super::NOT_A_PATH
                    ),
                );
                "/".into()
            }
            Some(p) => p.get_ref().clone(),
            None => "/healthz".into(),
        },
        interval: cx.positive_duration(&h.interval, &k("health.interval"), Duration::from_secs(5)),
        timeout: cx.positive_duration(&h.timeout, &k("health.timeout"), Duration::from_secs(2)),
        healthy: cx.int(&h.healthy, &k("health.healthy"), 2, 1, 1000) as u32,
        unhealthy: cx.int(&h.unhealthy, &k("health.unhealthy"), 3, 1, 1000) as u32,
    });
    let size = inspected(
        cx,
        &u.ws_max_message_size,
        &k("ws_max_message_size"),
        u.ws_inspect,
    );
    let ws_max_message_size = cx.positive_size(&size, &k("ws_max_message_size"), 16 << 20);
    let ping = inspected(
        cx,
        &u.ws_ping_interval,
        &k("ws_ping_interval"),
        u.ws_inspect,
    );
    let ws_ping_interval = cx.interval_or_off(&ping, &k("ws_ping_interval"), Duration::ZERO);
    UpstreamConfig {
        name: name.to_string(),
        servers,
        balance,
        sticky,
        sticky_cookie,
        connect_timeout: cx.positive_duration(
            &u.connect_timeout,
            &k("connect_timeout"),
            Duration::from_secs(3),
        ),
        response_timeout: cx.positive_duration(
            &u.response_timeout,
            &k("response_timeout"),
            Duration::from_secs(60),
        ),
        ws_idle_timeout: cx.positive_duration(
            &u.ws_idle_timeout,
            &k("ws_idle_timeout"),
            Duration::from_secs(600),
        ),
        max_fails: cx.int(&u.max_fails, &k("max_fails"), 3, 0, 1000) as u32,
        fail_timeout: cx.positive_duration(
            &u.fail_timeout,
            &k("fail_timeout"),
            Duration::from_secs(10),
        ),
        retries: cx.int(&u.retries, &k("retries"), 1, 0, 10) as u32,
        health,
        ws_inspect: u.ws_inspect.unwrap_or(false),
        ws_max_message_size,
        ws_ping_interval,
        ws_message_rate: crate::config::limits::ws_message_rate(
            cx,
            u.ws_message_rate.as_ref(),
            name,
            u.ws_inspect.unwrap_or(false),
        ),
        tls,
        protocol,
    }
}

/// A message setting's value, or an error when the splice would not see
/// messages to apply it to (as for `ws_message_rate`): accepted silently, a
/// 1 KiB limit or a ping interval read as in force while nothing applied it.
/// A ping interval of "0" (off, the default) asks for nothing and passes.
fn inspected(cx: &mut Ctx, v: &Option<SStr>, key: &str, inspect: Option<bool>) -> Option<SStr> {
    match v {
        Some(s) if inspect != Some(true) && s.get_ref().trim() != "0" => {
            cx.at(
                s.span(),
                format!("{key}: needs ws_inspect = true (a byte splice does not see messages)"),
            );
            None
        }
        _ => v.clone(),
    }
}

/// The largest `max_conns`: far past any descriptor limit, so a typo of a
/// few digits too many is caught rather than read as "no limit" in effect.
const MAX_CONNS: i64 = 1_000_000;

/// The servers, and what each entry's scheme said about TLS (with its position).
/// `max_conns` is the pool's, for entries that do not set their own.
fn servers(
    cx: &mut Ctx,
    name: &str,
    list: &Spanned<Vec<ServerEntryFile>>,
    max_conns: u32,
) -> (Vec<ServerEntry>, Schemes) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut schemes = Vec::new();
    for (i, s) in list.get_ref().iter().enumerate() {
        let key = format!("upstream.{name}.servers[{i}]");
        let (addr, weight, max_conns) = match s {
            ServerEntryFile::Addr(a) => (a, 1, max_conns),
            ServerEntryFile::Table(t) => (
                &t.addr,
                cx.int(&t.weight, &format!("{key}.weight"), 1, 1, 1000) as u32,
                cx.int(
                    &t.max_conns,
                    &format!("{key}.max_conns"),
                    i64::from(max_conns),
                    0,
                    MAX_CONNS,
                ) as u32,
            ),
        };
        let (host_port, scheme) = match split_scheme(addr.get_ref()) {
            Ok(v) => v,
            Err(why) => {
                cx.at(
                    addr.span(),
                    format!("{key}: {:?}: {why}", shown(addr.get_ref())),
                );
                continue;
            }
        };
        if !valid_host_port(&host_port) {
            cx.at(
                addr.span(),
                format!(
                    "{key}: {:?} is not host:port or https://host:port, port 1-65535 (e.g. \"127.0.0.1:3000\")",
                    shown(addr.get_ref())
                ),
            );
            continue;
        }
        if !seen.insert(host_port.clone()) {
            cx.at(
                addr.span(),
                format!("{key}: server {host_port} listed twice"),
            );
            continue;
        }
        schemes.push((scheme, addr.span()));
        out.push(ServerEntry {
            addr: host_port,
            weight,
            max_conns,
        });
    }
    (out, schemes)
}

fn valid_host_port(s: &str) -> bool {
    // Port 0 is "any free port" to bind, and connects nowhere.
    if let Ok(a) = s.parse::<SocketAddr>() {
        return a.port() != 0;
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
                    cx.header_key(s.span(), key, name.as_str());
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

/// A server address as an error shows it: credentials in it
/// (`https://user:secret@host`, which no server address may carry) are
/// not repeated, as Redis URLs are shown without their password.
fn shown(addr: &str) -> std::borrow::Cow<'_, str> {
    let (scheme, rest) = match addr.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, addr),
    };
    // Everything up to the last `@`: a password may hold `/`, `?` or `#`.
    match rest.rsplit_once('@') {
        None => addr.into(),
        Some((_, host)) => match scheme {
            Some(s) => format!("{s}://***@{host}").into(),
            None => format!("***@{host}").into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::upstream_tls::tests::check;

    #[test]
    fn max_conns_is_the_pools_unless_a_server_sets_its_own() {
        let c = check("servers = [\"a:1\", { addr = \"b:1\", max_conns = 7 }]").unwrap();
        let limits: Vec<u32> = c.upstreams["api"]
            .servers
            .iter()
            .map(|s| s.max_conns)
            .collect();
        assert_eq!(limits, [0, 7], "no limit unless one is set");
        let c = check(
            "servers = [\"a:1\", { addr = \"b:1\", max_conns = 0 }, { addr = \"c:1\", weight = 2 }]\nmax_conns = 50",
        )
        .unwrap();
        let limits: Vec<u32> = c.upstreams["api"]
            .servers
            .iter()
            .map(|s| s.max_conns)
            .collect();
        assert_eq!(limits, [50, 0, 50]);
    }

    #[test]
    fn a_bad_max_conns_is_named_by_its_key_and_line() {
        let e = check("servers = [\"a:1\"]\nmax_conns = -1").unwrap_err();
        assert_eq!(
            e,
            "t.toml:5:13: upstream.api.max_conns: -1 is out of range (0..=1000000)"
        );
        let e = check("servers = [\"a:1\", { addr = \"b:1\", max_conns = 2000000 }]").unwrap_err();
        assert!(
            e.starts_with("t.toml:4:")
                && e.contains("upstream.api.servers[1].max_conns: 2000000 is out of range"),
            "{e}"
        );
        let e = check("servers = [{ addr = \"b:1\", max_conn = 2 }]").unwrap_err();
        assert!(e.contains("max_conn"), "{e}");
    }

    /// With underscored fields dropped (the default), a key naming one could
    /// never match: refused, by key and line.
    #[test]
    fn a_sticky_header_with_an_underscore_needs_underscores_in_headers() {
        let e = check("servers = [\"a:1\"]\nsticky = \"header:X_User\"").unwrap_err();
        assert!(
            e.starts_with("t.toml:5:10: upstream.api.sticky: header \"x_user\" has a '_'"),
            "{e}"
        );
        let allowed = "servers = [\"a:1\"]\nsticky = \"header:X_User\"\n[server]\nunderscores_in_headers = true";
        assert!(check(allowed).is_ok());
    }
}
