//! How the config's problems are worded and its secrets shown: toml's
//! deserializer messages given the key they are about and TOML's words for
//! types, the names a dangling reference could have meant, a key naming a
//! header no request carries, and Redis URLs without their passwords.

/// ` `name``, after toml's "duplicate key", which names no key: the key's
/// text at the error's span.
pub(super) fn duplicate_key(e: &toml::de::Error, text: &str) -> String {
    match (e.message().trim(), e.span().and_then(|s| text.get(s))) {
        ("duplicate key", Some(k)) if !k.trim().is_empty() => format!(" `{}`", k.trim()),
        _ => String::new(),
    }
}

/// `route[2].limits`: the path as the file spells it, without the fields
/// `toml::Spanned` deserializes through.
pub(super) fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__serde_spanned") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// A deserializer's message in the words of the file: TOML's types, not
/// Rust's (`expected i64` is "expected an integer").
pub(super) fn plain_types(message: &str) -> String {
    if let Some((value, _)) = message
        .strip_prefix("invalid type: integer ")
        .and_then(|m| m.split_once(" as i128"))
    {
        return format!("the integer {value} is out of range");
    }
    let mut out = message.to_string();
    for (rust, toml) in [
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
    ] {
        out = out.replace(rust, toml);
    }
    for int in [
        "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize",
    ] {
        if let Some(head) = out.strip_suffix(&format!("expected {int}")) {
            out = format!("{head}expected an integer");
        }
    }
    out
}

/// The names a reference could have named, for a message about one that
/// names none of them: `known: a, b`, or `none is defined`.
pub fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none is defined".to_string()
    } else {
        format!("known: {}", names.join(", "))
    }
}

/// `url` with everything between its scheme and its last `@` shown as
/// `***`: a password may hold `/`, `?` or `#` (the URL then reads them as
/// the end of the authority, or does not parse), so where the authority
/// ends cannot be trusted; an `@` in a path or query hides more than it must,
/// which is the safe side.
pub(super) fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Keys whose values are secrets, or may hold one (a Redis URL's password).
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    let last = last.split('[').next().unwrap_or(last);
    matches!(
        last,
        "secret" | "push_token" | "hmac_secret" | "redis" | "redis_cluster" | "sentinels"
    )
}

/// A deserializer's message about `key`, without the value it quotes when
/// that value is a secret: `invalid type: integer, expected a string`, not
/// the integer someone pasted as a token.
pub(super) fn hide_secret_value(key: &str, message: &str) -> String {
    // A key that does not exist quotes no value: say so (a misspelt
    // `secret` for `hmac_secret` must not read as a bad value).
    if !is_secret_key(key) || message.starts_with("unknown field") {
        return message.to_string();
    }
    for head in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(head) {
            let kind = rest.split([' ', ',']).next().unwrap_or("");
            // The last ", expected": the quoted value may hold one.
            if let Some((_, tail)) = rest.rsplit_once(", expected") {
                return format!("{head}{kind}, expected{tail}");
            }
        }
    }
    // Any other wording may quote the value too.
    "invalid value (not shown: it may be a secret)".to_string()
}

/// The issue of a key naming header `name`, which no request can carry when
/// `server.underscores_in_headers` is off and the name has a `_`.
pub(super) fn dropped_header(key: &str, name: &str, underscores: bool) -> Option<String> {
    (!underscores && name.contains('_')).then(|| {
        format!("{key}: header {name:?} has a '_', and such fields are dropped (server.underscores_in_headers = false)")
    })
}
