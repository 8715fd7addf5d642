//! Rate limits in the config file: the raw `[limit.NAME]` table, the typed
//! [`LimitConfig`] it becomes, the `"N/s"` rate unit, and the checks on every
//! place that names a limit (`route.limits`, `listener.connection_limits`) or
//! sets a message rate (`app.chat.message_rate`, `upstream.X.ws_message_rate`).
//! Kept apart from `validate.rs` so the abuse-control keys live in one file.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::file::{LimitFile, SStr};
use super::validate::ctx::Ctx;

/// Tracked keys per limit when `max_keys` is not set (docs/limits.md).
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// The largest `N` of a rate: one event per nanosecond is as fine as the
/// buckets can count.
const MAX_COUNT: u64 = 1_000_000_000;

/// `N` events per `per` (`"20/s"`, `"100/m"`, `"5000/h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub per: Duration,
}

impl Rate {
    /// Parses `"N/s"`, `"N/m"` or `"N/h"` with `1 <= N <= 10^9`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || format!("rate {s:?} is not \"N/s\", \"N/m\" or \"N/h\" (e.g. \"20/s\")");
        let (n, unit) = s.trim().split_once('/').ok_or_else(err)?;
        let count: u64 = n.trim().parse().map_err(|_| err())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(err()),
        };
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(format!("rate {s:?}: N must be between 1 and {MAX_COUNT}"));
        }
        Ok(Self { count, per })
    }

    /// Time between two events at this rate: the GCRA emission interval.
    pub fn emission(&self) -> Duration {
        let nanos = self.per.as_nanos() / u128::from(self.count.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX).max(1))
    }
}

/// What a limit counts per.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The client address (the real one once PROXY / X-Forwarded-For apply).
    Ip,
    /// A request header's value; requests without it count per client address.
    Header(http::HeaderName),
    /// The authenticated subject; unauthenticated requests count per address.
    User,
    /// One bucket for the whole route.
    Route,
}

/// Where a limit's buckets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// In this process.
    Node,
    /// In the `[cluster]` Redis, shared by every node (per node while Redis is down).
    Cluster,
}

/// One validated `[limit.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    pub name: String,
    pub rate: Rate,
    /// Events allowed at once on a full bucket (at least 1).
    pub burst: u32,
    pub key: LimitKey,
    pub scope: LimitScope,
    /// Keys tracked at most; past it the fullest buckets are forgotten.
    pub max_keys: usize,
}

/// A per-connection message rate (`app.chat.message_rate`/`message_burst`,
/// `upstream.X.ws_message_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRate {
    pub rate: Rate,
    pub burst: u32,
}

/// The default burst of a rate: one period's worth (`"20/s"` → 20), capped.
fn default_burst(rate: Rate) -> u32 {
    u32::try_from(rate.count)
        .unwrap_or(u32::MAX)
        .clamp(1, 1_000_000)
}

/// Validates every `[limit.NAME]`.
pub(in crate::config) fn limits(
    cx: &mut Ctx,
    raw: &BTreeMap<String, Spanned<LimitFile>>,
    clustered: bool,
) -> BTreeMap<String, LimitConfig> {
    let mut out = BTreeMap::new();
    for (name, l) in raw {
        let span = l.span();
        let l = l.get_ref();
        let k = |s: &str| format!("limit.{name}.{s}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            cx.at(
                span.clone(),
                format!("limit.{name:?}: a limit name is letters, digits, '_' and '-'"),
            );
        }
        let rate = match Rate::parse(l.rate.get_ref()) {
            Ok(r) => r,
            Err(e) => {
                cx.at(l.rate.span(), format!("{}: {e}", k("rate")));
                continue;
            }
        };
        let burst = cx.int(
            &l.burst,
            &k("burst"),
            i64::from(default_burst(rate)),
            1,
            1_000_000,
        ) as u32;
        let key = match &l.key {
            None => LimitKey::Ip,
            Some(s) => match parse_key(s.get_ref()) {
                Some(key) => {
                    if let LimitKey::Header(h) = &key {
                        cx.header_key(s.span(), &k("key"), h.as_str());
                    }
                    key
                }
                None => {
                    cx.at(
                        s.span(),
                        format!(
                            "{}: {:?} is not one of \"ip\", \"header:NAME\", \"user\", \"route\"",
                            k("key"),
                            s.get_ref()
                        ),
                    );
                    LimitKey::Ip
                }
            },
        };
        let scope = match l.scope.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("node", _)) => LimitScope::Node,
            Some(("cluster", sp)) => {
                if !clustered {
                    cx.at(sp, format!("{}: \"cluster\" needs a [cluster] section (its Redis holds the buckets)", k("scope")));
                }
                LimitScope::Cluster
            }
            Some((other, sp)) => {
                cx.at(
                    sp,
                    format!(
                        "{}: {other:?} is not one of \"node\", \"cluster\"",
                        k("scope")
                    ),
                );
                LimitScope::Node
            }
        };
        let max_keys = cx.int(
            &l.max_keys,
            &k("max_keys"),
            DEFAULT_MAX_KEYS as i64,
            1,
            10_000_000,
        ) as usize;
        out.insert(
            name.clone(),
            LimitConfig {
                name: name.clone(),
                rate,
                burst,
                key,
                scope,
                max_keys,
            },
        );
    }
    out
}

fn parse_key(s: &str) -> Option<LimitKey> {
    match s {
        "ip" => Some(LimitKey::Ip),
        "user" => Some(LimitKey::User),
        "route" => Some(LimitKey::Route),
        _ => {
            let h = s.strip_prefix("header:")?.trim();
            http::HeaderName::from_bytes(h.as_bytes())
                .ok()
                .map(LimitKey::Header)
        }
    }
}

/// `route[i].limits`: every name must be a `[limit.NAME]`.
pub(in crate::config) fn route_limits(
    cx: &mut Ctx,
    names: Option<&Vec<SStr>>,
    key: &str,
    defs: &BTreeMap<String, LimitConfig>,
) -> Vec<String> {
    refs(cx, names, &format!("{key}.limits"), defs, |_| None)
}

/// `listener[i].connection_limits`: named limits keyed by `ip` (a new
/// connection has no header, user or route yet).
pub(in crate::config) fn connection_limits(
    cx: &mut Ctx,
    names: Option<&Vec<SStr>>,
    key: &str,
    defs: &BTreeMap<String, LimitConfig>,
) -> Vec<String> {
    refs(cx, names, &format!("{key}.connection_limits"), defs, |d| {
        (d.key != LimitKey::Ip).then(|| {
            format!(
                "[limit.{}] counts per {:?}, but a new connection has only its address: use key = \"ip\"",
                d.name,
                key_name(&d.key)
            )
        })
    })
}

fn key_name(k: &LimitKey) -> String {
    match k {
        LimitKey::Ip => "ip".into(),
        LimitKey::Header(h) => format!("header:{h}"),
        LimitKey::User => "user".into(),
        LimitKey::Route => "route".into(),
    }
}

fn refs(
    cx: &mut Ctx,
    names: Option<&Vec<SStr>>,
    key: &str,
    defs: &BTreeMap<String, LimitConfig>,
    unfit: impl Fn(&LimitConfig) -> Option<String>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names.into_iter().flatten() {
        let name = n.get_ref();
        match defs.get(name) {
            // Defined, but wrong: said at the definition.
            None if cx.reported(&format!("limit.{name}")) => {}
            None => {
                let known = super::known(defs.keys());
                cx.at(
                    n.span(),
                    format!("{key}: no [limit.{name}] is defined ({known})"),
                );
            }
            Some(d) => {
                if let Some(why) = unfit(d) {
                    cx.at(n.span(), format!("{key}: {why}"));
                } else if out.contains(name) {
                    cx.at(n.span(), format!("{key}: {name:?} is listed twice"));
                } else {
                    out.push(name.clone());
                }
            }
        }
    }
    out
}

/// `app.chat.message_rate` with `message_burst` (default: one period's worth).
pub(in crate::config) fn chat_message_rate(
    cx: &mut Ctx,
    rate: Option<&SStr>,
    burst: &Option<Spanned<i64>>,
) -> Option<MessageRate> {
    let Some(r) = rate else {
        if let Some(b) = burst {
            cx.at(
                b.span(),
                "app.chat.message_burst: set app.chat.message_rate too",
            );
        }
        return None;
    };
    let rate = Rate::parse(r.get_ref())
        .map_err(|e| cx.at(r.span(), format!("app.chat.message_rate: {e}")))
        .ok()?;
    let burst = cx.int(
        burst,
        "app.chat.message_burst",
        i64::from(default_burst(rate)),
        1,
        1_000_000,
    ) as u32;
    Some(MessageRate { rate, burst })
}

/// `upstream.NAME.ws_message_rate` (burst: one period's worth); needs
/// `ws_inspect`, the only splice that sees messages.
pub(in crate::config) fn ws_message_rate(
    cx: &mut Ctx,
    rate: Option<&SStr>,
    name: &str,
    inspect: bool,
) -> Option<MessageRate> {
    let r = rate?;
    let key = format!("upstream.{name}.ws_message_rate");
    let rate = Rate::parse(r.get_ref())
        .map_err(|e| cx.at(r.span(), format!("{key}: {e}")))
        .ok()?;
    if !inspect {
        cx.at(
            r.span(),
            format!("{key}: needs ws_inspect = true (a byte splice does not see messages)"),
        );
        return None;
    }
    Some(MessageRate {
        rate,
        burst: default_burst(rate),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let r = Rate::parse("20/s").unwrap();
        assert_eq!(r.emission(), Duration::from_millis(50));
        assert_eq!(
            Rate::parse("6/m").unwrap().emission(),
            Duration::from_secs(10)
        );
        assert_eq!(
            Rate::parse(" 3600 / h ").unwrap().emission(),
            Duration::from_secs(1)
        );
        for bad in ["", "20", "20/d", "x/s", "0/s", "-1/s", "2000000000/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key("ip"), Some(LimitKey::Ip));
        assert_eq!(
            parse_key("header:X-Api-Key"),
            Some(LimitKey::Header(http::HeaderName::from_static("x-api-key")))
        );
        assert_eq!(parse_key("header:"), None);
        assert_eq!(parse_key("cookie"), None);
    }
}
