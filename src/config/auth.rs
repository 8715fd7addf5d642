//! `[auth.NAME]` token verifiers and the routes' `auth` keys: the raw shape,
//! validation with positions, and the typed [`AuthConfig`]. Keys are loaded
//! here (through `crate::auth::keys`), so a missing secret or an unusable PEM
//! is a `PATH:LINE:COL` error like any other, and a reload re-reads them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::file::{AuthFile, SStr};
use super::units::parse_duration;
use super::{line_col, ConfigIssue};
use crate::auth::keys::{load_jwks, load_pem, KeySet, SecretSource};
use crate::auth::TokenSource;

pub use crate::auth::AuthConfig;

/// A route's `auth` and `auth_claims_to_headers`.
#[derive(Debug, Clone)]
pub struct RouteAuth {
    /// The `[auth.NAME]` that checks the route's requests.
    pub verifier: String,
    /// Header → claim, sent upstream from the verified token.
    pub claims_to_headers: Vec<(HeaderName, String)>,
}

/// Issues found in this file's part of the config.
pub(super) struct Issues<'a> {
    pub text: &'a str,
    pub issues: &'a mut Vec<ConfigIssue>,
}

impl Issues<'_> {
    fn at(&mut self, span: std::ops::Range<usize>, message: String) {
        self.issues.push(ConfigIssue {
            pos: Some(line_col(self.text, span.start)),
            key: None,
            message,
        });
    }
}

/// Validates every `[auth.NAME]` and loads its keys.
pub(super) fn auths(
    cx: &mut Issues,
    raw: &BTreeMap<String, Spanned<AuthFile>>,
) -> BTreeMap<String, AuthConfig> {
    raw.iter()
        .filter_map(|(name, a)| Some((name.clone(), auth(cx, name, a)?)))
        .collect()
}

fn auth(cx: &mut Issues, name: &str, a: &Spanned<AuthFile>) -> Option<AuthConfig> {
    let k = |s: &str| format!("auth.{name}.{s}");
    let before = cx.issues.len();
    let span = a.span();
    let a = a.get_ref();
    let mut keys = KeySet::default();
    if let Some(s) = &a.hmac_secret {
        match s
            .get_ref()
            .parse::<SecretSource>()
            .and_then(|src| src.load())
        {
            Ok(secret) => keys.hmac = Some(secret),
            Err(e) => cx.at(s.span(), format!("{}: {e}", k("hmac_secret"))),
        }
    }
    for p in a.public_keys.iter().flatten() {
        match load_pem(std::path::Path::new(p.get_ref())) {
            Ok(key) => keys.pem.push(key),
            Err(e) => cx.at(p.span(), format!("{}: {e}", k("public_keys"))),
        }
    }
    if let Some(j) = &a.jwks {
        match load_jwks(std::path::Path::new(j.get_ref())) {
            Ok(list) => keys.jwks = list,
            Err(e) => cx.at(j.span(), format!("{}: {e}", k("jwks"))),
        }
    }
    if a.hmac_secret.is_none()
        && a.public_keys.as_ref().is_none_or(Vec::is_empty)
        && a.jwks.is_none()
    {
        cx.at(
            span.clone(),
            format!("auth.{name}: needs at least one of hmac_secret, public_keys, jwks"),
        );
    }
    let leeway = match &a.leeway {
        None => Duration::from_secs(30),
        Some(l) => parse_duration(l.get_ref()).unwrap_or_else(|e| {
            cx.at(l.span(), format!("{}: {e}", k("leeway")));
            Duration::ZERO
        }),
    };
    let token_from = match &a.token_from {
        None => TokenSource::defaults(),
        Some(list) => {
            if list.is_empty() {
                cx.at(
                    span.clone(),
                    format!("{}: must not be empty", k("token_from")),
                );
            }
            list.iter()
                .filter_map(|s| {
                    TokenSource::parse(s.get_ref()).or_else(|| {
                        cx.at(
                            s.span(),
                            format!(
                                "{}: {:?} is not \"header\", \"query:NAME\" or \"cookie:NAME\"",
                                k("token_from"),
                                s.get_ref()
                            ),
                        );
                        None
                    })
                })
                .collect()
        }
    };
    let text = |v: &Option<SStr>, key: &str, cx: &mut Issues| match v {
        Some(s) if s.get_ref().is_empty() => {
            cx.at(s.span(), format!("{}: must not be empty", k(key)));
            None
        }
        other => other.as_ref().map(|s| s.get_ref().clone()),
    };
    let issuer = text(&a.issuer, "issuer", cx);
    let audience = text(&a.audience, "audience", cx);
    (cx.issues.len() == before).then(|| AuthConfig {
        name: name.to_string(),
        keys: Arc::new(keys),
        issuer,
        audience,
        leeway,
        token_from,
    })
}

/// Headers a token's claims may not be written to: the ones the gateway or
/// HTTP itself owns, and (a claim's name being stripped from clients on every
/// route) the ones every client needs or the gateway sets.
const RESERVED: [&str; 15] = [
    // Framing and hop-by-hop: the proxy's own.
    "host",
    "connection",
    "upgrade",
    "content-length",
    "content-type",
    "transfer-encoding",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    // Credentials and what browsers say about the page.
    "authorization",
    "cookie",
    "origin",
    // The gateway's client-address fields.
    "forwarded",
    "x-real-ip",
];

/// Name prefixes the gateway's own fields share: `X-Forwarded-*`,
/// `X-Client-Cert-*` (mTLS), `X-Original-*` (auth callouts), `Sec-WebSocket-*`.
const RESERVED_PREFIXES: [&str; 4] = [
    "x-forwarded-",
    "x-client-cert-",
    "x-original-",
    "sec-websocket-",
];

fn reserved(name: &str) -> bool {
    RESERVED.contains(&name)
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        || super::client_addr::CLIENT_CLAIMS.contains(&name)
}

/// A route's `auth` (must name an `[auth.NAME]`) and `auth_claims_to_headers`.
pub(super) fn route_auth(
    cx: &mut Issues,
    key: &str,
    auth: Option<&SStr>,
    claims: Option<&Spanned<BTreeMap<String, SStr>>>,
    known: &BTreeMap<String, Spanned<AuthFile>>,
) -> Option<RouteAuth> {
    let Some(a) = auth else {
        if let Some(c) = claims {
            cx.at(
                c.span(),
                format!("{key}.auth_claims_to_headers: needs `auth` on the route"),
            );
        }
        return None;
    };
    if !known.contains_key(a.get_ref()) {
        let names = super::known(known.keys());
        cx.at(
            a.span(),
            format!("{key}.auth: no [auth.{}] is defined ({names})", a.get_ref()),
        );
        return None;
    }
    let mut claims_to_headers = Vec::new();
    for (h, claim) in claims.map(|c| c.get_ref().iter()).into_iter().flatten() {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) if !reserved(name.as_str()) => {
                if claim.get_ref().is_empty() {
                    cx.at(
                        claim.span(),
                        format!("{key}.auth_claims_to_headers.{h}: empty claim name"),
                    );
                } else {
                    claims_to_headers.push((name, claim.get_ref().clone()));
                }
            }
            _ => cx.at(
                claim.span(),
                format!("{key}.auth_claims_to_headers: {h:?} is not a header name a claim may set"),
            ),
        }
    }
    Some(RouteAuth {
        verifier: a.get_ref().clone(),
        claims_to_headers,
    })
}

/// `[app.chat] auth` (must name an `[auth.NAME]`) with `user_claim`,
/// `anonymous` and `guest_rooms`, which mean nothing without it.
pub(super) fn chat_auth(
    cx: &mut Issues,
    c: &super::file::ChatFile,
    known: &BTreeMap<String, Spanned<AuthFile>>,
) -> Option<super::ChatAuthConfig> {
    let Some(a) = &c.auth else {
        let without = [
            c.user_claim.as_ref().map(|s| (s.span(), "user_claim")),
            c.anonymous.as_ref().map(|s| (s.span(), "anonymous")),
            c.guest_rooms.as_ref().map(|s| (s.span(), "guest_rooms")),
        ];
        for (span, k) in without.into_iter().flatten() {
            cx.at(span, format!("app.chat.{k}: needs app.chat.auth"));
        }
        return None;
    };
    if !known.contains_key(a.get_ref()) {
        let names = super::known(known.keys());
        cx.at(
            a.span(),
            format!(
                "app.chat.auth: no [auth.{}] is defined ({names})",
                a.get_ref()
            ),
        );
        return None;
    }
    let user_claim = match &c.user_claim {
        Some(u) if u.get_ref().is_empty() => {
            cx.at(u.span(), "app.chat.user_claim: must not be empty".into());
            return None;
        }
        Some(u) => u.get_ref().clone(),
        None => "sub".into(),
    };
    let guest_rooms = match &c.guest_rooms {
        Some(g) => {
            if let Some(bad) = g.get_ref().iter().find(|p| !valid_room_pattern(p)) {
                cx.at(
                    g.span(),
                    format!(
                        "app.chat.guest_rooms: {bad:?} is not a room name or a prefix ending in *"
                    ),
                );
            }
            g.get_ref().clone()
        }
        None => vec!["*".into()],
    };
    Some(super::ChatAuthConfig {
        verifier: a.get_ref().clone(),
        user_claim,
        anonymous: c.anonymous.as_ref().is_some_and(|b| *b.get_ref()),
        guest_rooms,
    })
}

/// A room pattern: a room name, or a prefix of one followed by `*`.
fn valid_room_pattern(p: &str) -> bool {
    let name = p.strip_suffix('*').unwrap_or(p);
    (name.is_empty() && p == "*")
        || (!name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// A listener and `[auth.users]`, then `rest`: parsed, or its error.
    fn with_users(rest: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n[auth.users]\nhmac_secret = \"base64:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\"\n{rest}"
        );
        crate::config::parse(Path::new("t.toml"), &text).map_err(|e| e.to_string())
    }

    fn check(chat: &str) -> Result<crate::config::Config, String> {
        with_users(&format!("[app.chat]\n{chat}"))
    }

    fn check_claims(claims: &str) -> Result<crate::config::Config, String> {
        with_users(&format!(
            "[[route]]\npath = \"/\"\napp = \"echo\"\nauth = \"users\"\nauth_claims_to_headers = {{ {claims} }}\n"
        ))
    }

    #[test]
    fn chat_auth_keys_and_their_defaults() {
        let cfg =
            check("auth = \"users\"\nanonymous = true\nmax_connections_per_user = 3\n").unwrap();
        let a = cfg.chat.auth.as_ref().unwrap();
        assert_eq!(
            (a.verifier.as_str(), a.user_claim.as_str(), a.anonymous),
            ("users", "sub", true)
        );
        assert_eq!(a.guest_rooms, vec!["*"]);
        assert_eq!(cfg.chat.max_connections_per_user, 3);
        assert!(check("").unwrap().chat.auth.is_none());
    }

    #[test]
    fn chat_auth_errors_name_key_and_position() {
        let e = check("auth = \"nope\"\n").unwrap_err();
        assert!(
            e.starts_with("t.toml:6:8: app.chat.auth: no [auth.nope]"),
            "{e}"
        );
        let e = check("anonymous = true\n").unwrap_err();
        assert!(
            e.contains("t.toml:6:13: app.chat.anonymous: needs app.chat.auth"),
            "{e}"
        );
        let e = check("auth = \"users\"\nguest_rooms = [\"lobby\", \"bad room\"]\n").unwrap_err();
        assert!(
            e.contains("t.toml:7:15: app.chat.guest_rooms: \"bad room\""),
            "{e}"
        );
        let e = check("max_connections_per_user = -1\n").unwrap_err();
        assert!(e.contains("app.chat.max_connections_per_user"), "{e}");
    }

    /// A claim's header is stripped from clients on every route: naming one
    /// the gateway or every client needs (credentials, forwarding fields)
    /// would take it from all of them.
    #[test]
    fn claims_may_not_take_the_gateways_or_the_clients_fields() {
        assert!(check_claims("\"X-User-Id\" = \"sub\"").is_ok());
        for name in [
            "Authorization",
            "X-Forwarded-For",
            "X-Forwarded-Port",
            "True-Client-IP",
            "Cookie",
            "X-Client-Cert-Subject",
            "X-Original-URI",
            "Host",
        ] {
            let e = check_claims(&format!("{name:?} = \"sub\"")).unwrap_err();
            assert!(
                e.contains("is not a header name a claim may set"),
                "{name}: {e}"
            );
        }
    }
}
