//! Sealed sticky-session cookies (docs/load-balancing.md) and the other sticky keys.
//!
//! With `sticky = "cookie"` the first response that chose a server (an HTTP
//! response or the 101 of a WebSocket upgrade) carries
//! `Set-Cookie: NAME=TOKEN; Path=/; HttpOnly; SameSite=Lax[; Secure]`. The token
//! names the server by its [`BackendId`] (a hash of its address, never its list
//! position) and is sealed so a client can neither forge nor alter it:
//!
//! ```text
//! TOKEN = base64url_nopad( 0x01 | id: u64 BE | expires: u64 BE (unix s) | tag )
//! tag   = HMAC-SHA256(pool_key, 0x01 | id | expires)          (32 bytes)
//! pool_key = HMAC-SHA256([server] secret, "wsgate sticky v1" 0x00 pool_name)
//! ```
//!
//! Deriving one key per pool keeps a token issued for one upstream from being
//! accepted by another. [`decode`] is pure and total (the fuzz target): any input
//! yields `Some` only for an authentic, unexpired token.
//!
//! The `ip`, `header:NAME` and `query:NAME` modes need no sealing: the request
//! itself carries the key, which [`hash_key`] extracts for rendezvous hashing.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderValue};
use sha2::Sha256;

use super::backend::BackendId;
use crate::config::Sticky;

type HmacSha256 = Hmac<Sha256>;

/// How long a token stays valid after it is issued. Long enough for a working
/// day; an active client never reaches it because tokens past half their life
/// are re-issued (see [`Token::needs_refresh`]).
pub const TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
/// version + id + expires.
const BODY_LEN: usize = 1 + 8 + 8;
const RAW_LEN: usize = BODY_LEN + TAG_LEN;
/// Length of the base64url (no padding) text of a token.
pub const TOKEN_LEN: usize = (RAW_LEN * 4).div_ceil(3);

/// The key that seals the tokens of one pool.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// Derives the key of pool `pool` from the gateway's secret.
    pub fn derive(secret: &[u8; 32], pool: &str) -> Self {
        let mut mac = new_mac(secret);
        mac.update(b"wsgate sticky v1\0");
        mac.update(pool.as_bytes());
        SealKey(mac.finalize().into_bytes().into())
    }

    /// A key used as is (tests and the fuzz target).
    pub fn from_bytes(key: [u8; 32]) -> Self {
        SealKey(key)
    }
}

fn new_mac(key: &[u8; 32]) -> HmacSha256 {
    // RFC 2104 zero-pads a key shorter than the hash's 64-byte block, so passing
    // the padded block is the same HMAC, through an infallible constructor.
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    <HmacSha256 as hmac::digest::KeyInit>::new(&block.into())
}

/// An authentic, unexpired sticky token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The server it pins to.
    pub backend: BackendId,
    /// Unix time (seconds) after which it is no longer honoured.
    pub expires: u64,
}

impl Token {
    /// True once less than half of [`TOKEN_TTL`] is left: the response then
    /// carries a fresh cookie for the same server, so active sessions never
    /// expire mid-way.
    pub fn needs_refresh(&self, now: u64) -> bool {
        self.expires.saturating_sub(now) < TOKEN_TTL.as_secs() / 2
    }
}

/// Seals a token for `backend`, valid until `expires` (unix seconds).
pub fn encode(key: &SealKey, backend: BackendId, expires: u64) -> String {
    let mut raw = [0u8; RAW_LEN];
    raw[0] = VERSION;
    raw[1..9].copy_from_slice(&backend.0.to_be_bytes());
    raw[9..BODY_LEN].copy_from_slice(&expires.to_be_bytes());
    let mut mac = new_mac(&key.0);
    mac.update(&raw[..BODY_LEN]);
    raw[BODY_LEN..].copy_from_slice(&mac.finalize().into_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// Opens a token. `None` for anything that is not a token this key sealed, or
/// one that expired at `now` (unix seconds). Never panics, whatever the input.
pub fn decode(key: &SealKey, token: &str, now: u64) -> Option<Token> {
    // Checked first so hostile input costs nothing to reject.
    if token.len() != TOKEN_LEN {
        return None;
    }
    let mut raw = [0u8; RAW_LEN];
    // The engine rejects non-canonical trailing bits, so one token has exactly
    // one spelling.
    let n = URL_SAFE_NO_PAD
        .decode_slice(token.as_bytes(), &mut raw)
        .ok()?;
    if n != RAW_LEN || raw[0] != VERSION {
        return None;
    }
    let mut mac = new_mac(&key.0);
    mac.update(&raw[..BODY_LEN]);
    // Constant-time comparison.
    mac.verify_slice(&raw[BODY_LEN..]).ok()?;
    let id = u64::from_be_bytes(raw[1..9].try_into().ok()?);
    let expires = u64::from_be_bytes(raw[9..BODY_LEN].try_into().ok()?);
    if expires <= now {
        return None;
    }
    Some(Token {
        backend: BackendId(id),
        expires,
    })
}

/// The current unix time in seconds (0 if the clock is before 1970).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every value of cookie `name` in the request (a client may send the same name
/// twice, e.g. from two paths; HTTP/2 splits `Cookie` into several headers).
pub fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// The valid tokens among the request's `name` cookies.
pub fn tokens_in(headers: &HeaderMap, name: &str, key: &SealKey, now: u64) -> Vec<Token> {
    cookie_values(headers, name)
        .filter_map(|v| decode(key, v, now))
        .collect()
}

/// The `Set-Cookie` value pinning the client to `backend`. The cookie itself is
/// a session cookie: only the token inside expires.
pub fn set_cookie(
    name: &str,
    key: &SealKey,
    backend: BackendId,
    now: u64,
    secure: bool,
) -> Option<HeaderValue> {
    let token = encode(key, backend, now.saturating_add(TOKEN_TTL.as_secs()));
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={token}; Path=/; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

/// The rendezvous-hashing key of a request under `ip`, `header:NAME` or
/// `query:NAME` stickiness; `None` when the request carries none (the pool then
/// falls back to its `balance`) or the mode is not a hashing one.
pub fn hash_key(
    mode: &Sticky,
    client: IpAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<Vec<u8>> {
    match mode {
        // IPv4-mapped IPv6 (dual-stack listeners) hashes like the IPv4 address.
        Sticky::Ip => Some(match client.to_canonical() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }),
        Sticky::Header(name) => {
            let v = headers.get(name)?.as_bytes().trim_ascii();
            (!v.is_empty()).then(|| v.to_vec())
        }
        Sticky::Query(name) => query_value(query?, name),
        Sticky::None | Sticky::Cookie => None,
    }
}

/// The first non-empty value of `name` in a query string, percent- and
/// `+`-decoded so `a%20b` and `a+b` pin alike.
fn query_value(query: &str, name: &str) -> Option<Vec<u8>> {
    let decode = |s: &str| -> Vec<u8> {
        let plus = s.replace('+', " ");
        percent_encoding::percent_decode_str(&plus).collect()
    };
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k) != name.as_bytes() {
            return None;
        }
        let v = decode(v);
        (!v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests;
