//! `wsgate token`: development tokens signed with a verifier's `hmac_secret`
//! (like `centrifugo gentoken`): `sub`, `iat`, `exp`, optional `rooms`, and
//! any extra claims; `iss`/`aud` follow the verifier so the token passes it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::verify::{MintError, Verifier};
use super::AuthConfig;

/// What `wsgate token` was asked for.
#[derive(Debug, Clone)]
pub struct DevToken {
    /// The `[auth.NAME]` whose secret signs it.
    pub auth: String,
    pub sub: String,
    /// `--rooms 'lobby,team-7-*'`: the `rooms` claim.
    pub rooms: Option<String>,
    pub ttl: Duration,
    /// `--claim k=v`: `v` as JSON when it parses (numbers, lists, booleans),
    /// else as a string.
    pub claims: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevTokenError {
    #[error("no [auth.{0}] in the config ({1})")]
    UnknownAuth(String, String),
    #[error("--claim {} is not k=v", crate::quoted::Quoted(.0))]
    BadClaim(String),
    #[error("--sub must not be empty")]
    EmptySub,
    #[error(transparent)]
    Mint(#[from] MintError),
}

impl DevToken {
    /// The signed token; `auths` are the config's `[auth.NAME]` sections.
    pub fn sign(
        &self,
        auths: &std::collections::BTreeMap<String, AuthConfig>,
    ) -> Result<String, DevTokenError> {
        let auth = auths
            .get(&self.auth)
            .ok_or_else(|| DevTokenError::UnknownAuth(self.auth.clone(), known(auths.keys())))?;
        if self.sub.is_empty() {
            return Err(DevTokenError::EmptySub);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = Map::new();
        claims.insert("sub".into(), self.sub.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + self.ttl.as_secs()).into());
        if let Some(rooms) = &self.rooms {
            let list: Vec<Value> = rooms
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(|r| r.to_string().into())
                .collect();
            claims.insert("rooms".into(), list.into());
        }
        for kv in &self.claims {
            let (k, v) = kv
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| DevTokenError::BadClaim(kv.clone()))?;
            let value = serde_json::from_str(v).unwrap_or_else(|_| Value::from(v));
            claims.insert(k.to_string(), value);
        }
        Ok(Verifier::new(auth).mint(claims)?)
    }
}

/// `known: a, b`, or `none is defined` (as the config's messages say it; auth
/// is a leaf and does not import the config module).
fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none is defined".to_string()
    } else {
        format!("known: {}", names.join(", "))
    }
}
