//! `[[route]]` and the apps' and cluster's sections.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::ctx::Ctx;
use crate::config::file::*;
use crate::config::*;

/// A route's `listeners`: each the `addr` of a `[[listener]]`, as written.
fn route_listeners(
    cx: &mut Ctx,
    names: Option<&Vec<SStr>>,
    key: &str,
    listeners: &[std::net::SocketAddr],
) -> Vec<std::net::SocketAddr> {
    let mut on = Vec::new();
    for n in names.into_iter().flatten() {
        match n.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) if listeners.contains(&a) => {
                if !on.contains(&a) {
                    on.push(a);
                }
            }
            _ => cx.at(
                n.span(),
                format!(
                    "{key}.listeners: {:?} is no [[listener]]'s addr (write it as the listener does, IP:port)",
                    n.get_ref()
                ),
            ),
        }
    }
    on.sort();
    on
}

pub(super) fn routes(
    cx: &mut Ctx,
    rs: &[Spanned<RouteFile>],
    ups: &BTreeMap<String, UpstreamConfig>,
    limits: &BTreeMap<String, LimitConfig>,
    auths: &BTreeMap<String, Spanned<crate::config::file::AuthFile>>,
    listeners: &[std::net::SocketAddr],
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
        if let Some(why) = unmatchable(r.path.get_ref()) {
            cx.at(
                r.path.span(),
                format!("{key}.path: {:?} {why}", r.path.get_ref()),
            );
            continue;
        }
        let host = match r
            .host
            .as_ref()
            .map(|h| (h, HostPattern::parse(h.get_ref())))
        {
            None => None,
            Some((_, Ok(h))) => Some(h),
            // Reported once: without its host the route would read as a
            // duplicate of another route whose host is missing or bad too.
            Some((h, Err(e))) => {
                cx.at(h.span(), format!("{key}.host: {e}"));
                continue;
            }
        };
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
                let known = crate::config::known(ups.keys());
                cx.at(
                    u.span(),
                    format!(
                        "{key}.upstream: no [upstream.{}] is defined ({known})",
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
        let on = route_listeners(cx, r.listeners.as_ref(), &key, listeners);
        if !seen.insert((host.clone(), r.path.get_ref().clone(), on.clone())) {
            cx.at(
                r.path.span(),
                format!("{key}.path: another route already has this host and path"),
            );
        }
        for o in r.origins.iter().flatten() {
            if !is_origin(o.get_ref()) {
                cx.at(
                    o.span(),
                    format!("{key}.origins: {:?} is not an origin (scheme://host[:port], or \"null\"): no browser sends it, so every handshake would be refused", o.get_ref()),
                );
            }
        }
        let origins = r.origins.as_ref().map(|os| {
            os.iter()
                .map(|o| o.get_ref().trim_end_matches('/').to_string())
                .collect()
        });
        let auth = crate::config::auth::route_auth(
            &mut crate::config::auth::Issues {
                text: cx.text,
                issues: &mut cx.issues,
            },
            &key,
            r.auth.as_ref(),
            r.auth_claims_to_headers.as_ref(),
            auths,
        );
        let mut found = Vec::new();
        let auth_request =
            crate::config::auth_request::parse(r, &key, ups, cx.underscores, &mut found);
        found.into_iter().for_each(|(span, m)| cx.at(span, m));
        if auth_request
            .as_ref()
            .is_some_and(|a| !a.cache_ttl.is_zero())
            && r.auth_request_cache_key.is_none()
        {
            cx.warnings.push(format!(
                "{key}.auth_request_cache: decisions are cached per Authorization, Cookie and Sec-WebSocket-Protocol; if the auth service decides by anything else (an API key, a query token, the path), name it in auth_request_cache_key, or clients that differ only there share decisions"
            ));
        }
        out.push(RouteConfig {
            host,
            path: r.path.get_ref().clone(),
            target,
            strip_prefix: r.strip_prefix.unwrap_or(false),
            websocket: r.websocket.unwrap_or(true),
            origins,
            listeners: on,
            limits: crate::config::limits::route_limits(cx, r.limits.as_ref(), &key, limits),
            auth,
            auth_request,
        });
    }
    out
}

pub(super) fn echo(cx: &mut Ctx, e: Option<&EchoFile>) -> EchoConfig {
    let d = EchoFile::default();
    let e = e.unwrap_or(&d);
    EchoConfig {
        max_message_size: cx.positive_size(
            &e.max_message_size,
            "app.echo.max_message_size",
            16 << 20,
        ),
        compression: e.compression.unwrap_or(true),
        ping_interval: cx.interval_or_off(
            &e.ping_interval,
            "app.echo.ping_interval",
            Duration::ZERO,
        ),
        idle_timeout: cx.positive_duration(
            &e.idle_timeout,
            "app.echo.idle_timeout",
            Duration::from_secs(600),
        ),
    }
}

/// Characters below which a `push_token` is warned of: the push API takes
/// any caller with it, and a short one falls to guessing (HMAC secrets are
/// refused below 32 bytes; a token in use is not refused, only told).
const SHORT_PUSH_TOKEN: usize = 16;

fn warn_short_push_token(cx: &mut Ctx, c: &ChatFile) {
    let Some(len) = c.push_token.as_ref().map(|t| t.get_ref().chars().count()) else {
        return;
    };
    if (1..SHORT_PUSH_TOKEN).contains(&len) {
        cx.warnings.push(format!(
            "app.chat.push_token: {len} characters can be guessed; use a random one of 32 or more (`openssl rand -base64 32`)"
        ));
    }
}

pub(super) fn chat(
    cx: &mut Ctx,
    c: Option<&ChatFile>,
    auths: &BTreeMap<String, Spanned<AuthFile>>,
) -> ChatConfig {
    let d = ChatFile::default();
    let c = c.unwrap_or(&d);
    warn_short_push_token(cx, c);
    let auth = crate::config::auth::chat_auth(
        &mut crate::config::auth::Issues {
            text: cx.text,
            issues: &mut cx.issues,
        },
        c,
        auths,
    );
    ChatConfig {
        auth,
        max_connections_per_user: cx.int(
            &c.max_connections_per_user,
            "app.chat.max_connections_per_user",
            0,
            0,
            1_000_000,
        ) as usize,
        history: cx.int(&c.history, "app.chat.history", 100, 0, 100_000) as usize,
        history_ttl: cx.duration(&c.history_ttl, "app.chat.history_ttl", Duration::ZERO),
        history_memory: cx.positive_size(
            &c.history_memory,
            "app.chat.history_memory",
            256 * 1024 * 1024,
        ),
        max_message_size: cx.positive_size(
            &c.max_message_size,
            "app.chat.max_message_size",
            64 * 1024,
        ),
        ping_interval: cx.interval_or_off(
            &c.ping_interval,
            "app.chat.ping_interval",
            Duration::from_secs(30),
        ),
        send_queue: cx.int(&c.send_queue, "app.chat.send_queue", 1024, 1, 1_000_000) as usize,
        push_token: c
            .push_token
            .as_ref()
            .map(|t| t.get_ref().clone())
            .filter(|t| !t.is_empty())
            .map(crate::config::Redacted),
        poll_idle_timeout: cx.positive_duration(
            &c.poll_idle_timeout,
            "app.chat.poll_idle_timeout",
            Duration::from_secs(60),
        ),
        max_rooms_per_connection: cx.int(
            &c.max_rooms_per_connection,
            "app.chat.max_rooms_per_connection",
            128,
            1,
            10_000,
        ) as usize,
        max_rooms: cx.int(&c.max_rooms, "app.chat.max_rooms", 10_000, 1, 10_000_000) as usize,
        max_rooms_per_ip: cx.int(
            &c.max_rooms_per_ip,
            "app.chat.max_rooms_per_ip",
            1_000,
            0,
            10_000_000,
        ) as usize,
        max_poll_sessions: cx.int(
            &c.max_poll_sessions,
            "app.chat.max_poll_sessions",
            10_000,
            1,
            10_000_000,
        ) as usize,
        max_poll_sessions_per_ip: cx.int(
            &c.max_poll_sessions_per_ip,
            "app.chat.max_poll_sessions_per_ip",
            100,
            0,
            10_000_000,
        ) as usize,
        message_rate: crate::config::limits::chat_message_rate(
            cx,
            c.message_rate.as_ref(),
            &c.message_burst,
        ),
    }
}

/// A Redis URL that the Redis client will take at startup: checked here so
/// that `wsgate check` refuses what would stop the gateway. The URL is shown
/// without its password.
fn redis_url(cx: &mut Ctx, key: &str, v: &SStr) {
    let url = v.get_ref();
    let shown = crate::config::messages::without_userinfo(url);
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://"))
    {
        cx.at(
            v.span(),
            format!("{key}: \"{shown}\" is not a redis:// URL"),
        );
    } else if url.starts_with("rediss://") {
        cx.at(
            v.span(),
            format!("{key}: \"{shown}\": TLS to Redis (rediss://) is not supported; use redis:// (a TLS tunnel such as stunnel can carry it)"),
        );
    } else if redis::Client::open(url.as_str()).is_err() {
        cx.at(
            v.span(),
            format!(
                "{key}: \"{shown}\" is not a valid Redis URL (e.g. \"redis://[user:password@]host:6379[/db]\")"
            ),
        );
    }
}

fn url_list(cx: &mut Ctx, key: &str, v: &Spanned<Vec<SStr>>) -> Vec<String> {
    if v.get_ref().is_empty() {
        cx.at(v.span(), format!("{key}: needs at least one URL"));
    }
    for s in v.get_ref() {
        redis_url(cx, key, s);
    }
    v.get_ref().iter().map(|s| s.get_ref().clone()).collect()
}

/// Exactly one of `redis` (one server), `redis_cluster` (seed URLs) and
/// `sentinels` (with `sentinel_master`).
fn redis_target(cx: &mut Ctx, c: &ClusterFile) -> RedisTarget {
    let set: Vec<(&str, std::ops::Range<usize>)> = [
        c.redis.as_ref().map(|v| ("cluster.redis", v.span())),
        c.redis_cluster
            .as_ref()
            .map(|v| ("cluster.redis_cluster", v.span())),
        c.sentinels
            .as_ref()
            .map(|v| ("cluster.sentinels", v.span())),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some((key, span)) = set.get(1) {
        cx.at(
            span.clone(),
            format!(
                "{key}: set only one of cluster.redis, cluster.redis_cluster and cluster.sentinels"
            ),
        );
    }
    if let (None, Some(m)) = (&c.sentinels, &c.sentinel_master) {
        cx.at(m.span(), "cluster.sentinel_master: needs cluster.sentinels");
    }
    if let Some(url) = &c.redis {
        redis_url(cx, "cluster.redis", url);
        RedisTarget::Single(url.get_ref().clone())
    } else if let Some(seeds) = &c.redis_cluster {
        RedisTarget::Cluster(url_list(cx, "cluster.redis_cluster", seeds))
    } else if let Some(list) = &c.sentinels {
        let sentinels = url_list(cx, "cluster.sentinels", list);
        let master = match &c.sentinel_master {
            Some(m) => m.get_ref().clone(),
            None => {
                cx.at(list.span(), "cluster.sentinels: needs cluster.sentinel_master (the monitored master's name)");
                String::new()
            }
        };
        RedisTarget::Sentinel { sentinels, master }
    } else {
        cx.key(
            "cluster",
            "needs cluster.redis (one server), cluster.redis_cluster (seed URLs) or cluster.sentinels",
        );
        RedisTarget::Single(String::new())
    }
}

pub(super) fn cluster(cx: &mut Ctx, c: &ClusterFile) -> ClusterConfig {
    let redis = redis_target(cx, c);
    let heartbeat = cx.duration(&c.heartbeat, "cluster.heartbeat", Duration::from_secs(2));
    if heartbeat < Duration::from_millis(100) {
        if let Some(h) = &c.heartbeat {
            cx.at(h.span(), "cluster.heartbeat: must be at least 100ms");
        }
    }
    let room_ttl = cx.positive_duration(
        &c.room_ttl,
        "cluster.room_ttl",
        Duration::from_secs(7 * 24 * 3600),
    );
    ClusterConfig {
        redis,
        heartbeat,
        room_ttl,
    }
}

/// Why a route path could never match a request: requests are matched by
/// their path alone, checked and normalized first (`proxy::path`: no dot
/// segments, no empty ones), so such a route would be dead.
/// An escape no routed request path has: `%` not followed by two hex
/// digits (such requests are refused), or an escaped unreserved character
/// (requests are decoded of those before routing: `/%61pi/` is `/api/`).
fn escape_no_request_keeps(path: &str) -> Option<&'static str> {
    for (i, _) in path.match_indices('%') {
        let hex = path
            .get(i + 1..i + 3)
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            None => return Some("has a % that is not an escape (%XX); requests with one are refused"),
            Some(c) if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => {
                return Some("escapes a character requests are decoded of before routing (write it as it is: /%61pi/ is /api/)")
            }
            Some(_) => {}
        }
    }
    None
}

fn unmatchable(path: &str) -> Option<&'static str> {
    if path.contains(['?', '#']) {
        return Some("holds a query or fragment; a route matches the path alone");
    }
    if !super::is_request_path(path) {
        return Some(super::NOT_A_PATH);
    }
    if let Some(why) = escape_no_request_keeps(path) {
        return Some(why);
    }
    // A prefix may end in `/`; every segment before it must be one a
    // normalized request path can have.
    let body = path.strip_suffix('/').unwrap_or(path);
    body.split('/')
        .skip(1)
        .any(|s| s.is_empty() || s == "." || s == "..")
        .then_some("has an empty, . or .. segment, which no request path keeps")
}

/// What a browser can send as `Origin` (RFC 6454 §7): `null`, or a scheme
/// and host with an optional port; a trailing `/` is tolerated (it is
/// trimmed before comparing). `""` stands for no `Origin` at all.
fn is_origin(o: &str) -> bool {
    // `""` admits a client that sends no `Origin` (not a browser).
    if o == "null" || o.is_empty() {
        return true;
    }
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c));
    scheme_ok
        && !host_port.is_empty()
        && !host_port.contains(['/', '?', '#', '@', ' '])
        && host_port.parse::<http::uri::Authority>().is_ok()
}
