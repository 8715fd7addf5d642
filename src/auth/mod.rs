//! Token authentication (docs/auth.md): named verifiers (`[auth.NAME]`) that
//! check signed tokens (JWT: HS*, RS*, PS*, ES256/384, EdDSA) with keys from a
//! secret, PEM files or a JWKS file, and find tokens in a request.
//!
//! A leaf below `proxy` and the apps: it knows requests only as headers and
//! a query string, and nothing of routes, responses or metrics. The access
//! phase (`proxy::authn`) and the chat app call it.
//!
//! ```text
//! config::auth ──loads──► keys::KeySet ──► verify::Verifier (one per [auth.NAME], rebuilt on reload)
//! request head ──token::find──► token ──Verifier::verify──► Verified claims | AuthError
//! ```

pub mod keys;
pub mod mint;
mod recent;
pub mod token;
mod usable;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use keys::{KeyError, KeySet, SecretSource};
pub use token::{ambiguous, find, offers_bearer, protocols_without_bearer, Found, TokenSource};
pub use verify::{AuthError, MintError, Verified, Verifier};

/// One validated `[auth.NAME]`, its keys loaded.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub name: String,
    pub keys: Arc<KeySet>,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` must contain it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    pub token_from: Vec<TokenSource>,
}

/// Every verifier of one config, by name.
#[derive(Debug, Default, Clone)]
pub struct Verifiers(HashMap<String, Arc<Verifier>>);

impl Verifiers {
    /// From the config's `[auth.NAME]` sections.
    pub fn new<'a>(auths: impl IntoIterator<Item = (&'a String, &'a AuthConfig)>) -> Self {
        Self(
            auths
                .into_iter()
                .map(|(name, a)| (name.clone(), Arc::new(Verifier::new(a))))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Verifier>> {
        self.0.get(name)
    }
}
