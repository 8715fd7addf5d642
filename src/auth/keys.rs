//! Key material of a token verifier: the HMAC secret (`env:`, `file:` or
//! `base64:`), PEM public keys (RSA, EC P-256/P-384, Ed25519) and JWKS files.
//! Loaded when the config is validated, so a bad key is reported at its
//! position like any other config error and a reload (SIGHUP) re-reads every
//! key; requests only ever see a loaded [`KeySet`].
//!
//! Secrets never appear in `Debug` output or error messages: errors name the
//! source (`env:NAME`, a path), never the value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::usable::MIN_SECRET_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The value is never shown: it may be a pasted secret (any part of it).
    #[error("the value is not \"env:NAME\", \"file:PATH\" or \"base64:...\" (it is not shown: it may be the secret itself)")]
    SecretSyntax,
    #[error("environment variable {0} is not set (or not UTF-8)")]
    EnvMissing(String),
    #[error("cannot read {}: {error}", crate::quoted::Quoted(.path))]
    Read { path: String, error: String },
    #[error("the base64 secret does not decode")]
    Base64,
    #[error("the secret from {source_name} is {len} bytes; at least {MIN_SECRET_LEN} are required (try `openssl rand -base64 32`)")]
    TooShort { source_name: String, len: usize },
    #[error("{} holds no RSA, EC (P-256/P-384) or Ed25519 public key in PEM", crate::quoted::Quoted(.0))]
    NotAPublicKey(String),
    #[error("{} is not a JWKS document: {error}", crate::quoted::Quoted(.path))]
    Jwks { path: String, error: String },
    #[error("{}: key {index} ({kid}) is unusable: {error}", crate::quoted::Quoted(.path))]
    JwksKey {
        path: String,
        index: usize,
        kid: String,
        error: String,
    },
    #[error("{}: {error}", crate::quoted::Quoted(.path))]
    Unusable { path: String, error: String },
    #[error("{} holds no signature key", crate::quoted::Quoted(.0))]
    JwksEmpty(String),
}

/// Where an HMAC secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    Base64(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(n) => write!(f, "env:{n}"),
            SecretSource::File(p) => write!(f, "file:{}", p.display()),
            // The value is the secret itself.
            SecretSource::Base64(_) => f.write_str("base64:<redacted>"),
        }
    }
}

impl FromStr for SecretSource {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        if let Some(n) = s.strip_prefix("env:").filter(|n| !n.is_empty()) {
            Ok(SecretSource::Env(n.to_string()))
        } else if let Some(p) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
            Ok(SecretSource::File(PathBuf::from(p)))
        } else if let Some(b) = s.strip_prefix("base64:").filter(|b| !b.is_empty()) {
            Ok(SecretSource::Base64(b.to_string()))
        } else {
            // Never echo what was given, not even before a colon: it may be
            // a pasted secret.
            Err(KeyError::SecretSyntax)
        }
    }
}

impl SecretSource {
    /// Reads the secret's bytes. A file's trailing newline is not part of it
    /// (`echo secret > file` is how people write one).
    pub fn load(&self) -> Result<Secret, KeyError> {
        let (bytes, name) = match self {
            SecretSource::Env(n) => (
                std::env::var(n)
                    .map_err(|_| KeyError::EnvMissing(n.clone()))?
                    .into_bytes(),
                format!("env:{n}"),
            ),
            SecretSource::File(p) => {
                let mut b = crate::fsread::read(p).map_err(|e| read_error(p, e))?;
                while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                    b.pop();
                }
                (b, format!("file:{}", p.display()))
            }
            SecretSource::Base64(v) => (
                base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v.trim()))
                    .map_err(|_| KeyError::Base64)?,
                "base64".to_string(),
            ),
        };
        if bytes.len() < MIN_SECRET_LEN {
            return Err(KeyError::TooShort {
                source_name: name,
                len: bytes.len(),
            });
        }
        Ok(Secret(bytes))
    }
}

fn read_error(p: &Path, e: std::io::Error) -> KeyError {
    KeyError::Read {
        path: p.display().to_string(),
        error: e.to_string(),
    }
}

/// An HMAC secret. Its `Debug` shows only its length.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A public key from a PEM file.
pub struct PemKey {
    /// The file it came from (for logs).
    pub path: PathBuf,
    pub key: DecodingKey,
}

/// A key from a JWKS document.
pub struct JwksKey {
    pub kid: Option<String>,
    /// The `alg` the key is bound to, if the document says.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

/// Every key of one verifier.
#[derive(Default)]
pub struct KeySet {
    pub hmac: Option<Secret>,
    pub pem: Vec<PemKey>,
    pub jwks: Vec<JwksKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("hmac", &self.hmac)
            .field("pem", &self.pem.iter().map(|k| &k.path).collect::<Vec<_>>())
            .field(
                "jwks",
                &self.jwks.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Loads a PEM public key (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`) of
/// any supported type.
pub fn load_pem(path: &Path) -> Result<PemKey, KeyError> {
    let pem = crate::fsread::read(path).map_err(|e| read_error(path, e))?;
    let key = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| KeyError::NotAPublicKey(path.display().to_string()))?;
    super::usable::pem_key(&pem, &key).map_err(|error| KeyError::Unusable {
        path: path.display().to_string(),
        error,
    })?;
    Ok(PemKey {
        path: path.to_path_buf(),
        key,
    })
}

/// Loads a JWKS document's signature keys (keys marked `"use": "enc"` are
/// skipped; a key that cannot be used is an error, not silently dropped).
pub fn load_jwks(path: &Path) -> Result<Vec<JwksKey>, KeyError> {
    let p = || path.display().to_string();
    let text = crate::fsread::read(path).map_err(|e| read_error(path, e))?;
    let set: JwkSet = serde_json::from_slice(&text).map_err(|e| KeyError::Jwks {
        path: p(),
        error: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let kid = jwk.common.key_id.clone();
        let bad = |error: String| KeyError::JwksKey {
            path: p(),
            index,
            kid: kid.clone().unwrap_or_else(|| "no kid".into()),
            error,
        };
        let alg = match &jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(
                Algorithm::from_str(&a.to_string())
                    .map_err(|_| bad(format!("alg {a} is not a signature algorithm")))?,
            ),
        };
        super::usable::jwk(jwk).map_err(bad)?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
        // A kid may name keys of different types (RFC 7517 §4.5), each
        // tried for the algorithms it serves; two keys a token could both
        // be checked against under one kid leave which one signs unclear.
        let same_use = |k: &JwksKey| {
            k.kid == kid
                && k.key.family() == key.family()
                && (k.alg.is_none() || alg.is_none() || k.alg == alg)
        };
        if kid.is_some() && out.iter().any(same_use) {
            return Err(bad(
                "its kid names another key of the same type and algorithm in the document".into(),
            ));
        }
        out.push(JwksKey { kid, alg, key });
    }
    if out.is_empty() {
        return Err(KeyError::JwksEmpty(p()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_sources_parse_and_never_echo() {
        assert_eq!(
            "env:JWT".parse::<SecretSource>(),
            Ok(SecretSource::Env("JWT".into()))
        );
        assert!(matches!(
            "file:/k".parse::<SecretSource>(),
            Ok(SecretSource::File(_))
        ));
        let err = "hunter2hunter2".parse::<SecretSource>().unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let b = SecretSource::Base64("c2VjcmV0".into());
        assert!(!format!("{b:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn short_secrets_are_refused() {
        let short = SecretSource::Base64("c2VjcmV0".into());
        assert!(matches!(
            short.load(),
            Err(KeyError::TooShort { len: 6, .. })
        ));
        let ok = SecretSource::Base64(base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
        let s = ok.load().unwrap();
        assert_eq!(s.bytes().len(), 32);
        assert_eq!(format!("{s:?}"), "Secret(32 bytes)");
    }

    /// A JWKS document with two keys of one type under one kid is refused
    /// (which one signs would be unclear), and so is a guessable `oct` key
    /// (the ninth probe: an empty one let anyone sign); keys of different
    /// types may share a kid.
    #[test]
    fn jwks_with_a_repeated_kid_or_a_short_hmac_key_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, keys: &[(&str, &str)]| {
            let keys: Vec<String> = keys
                .iter()
                .map(|(kid, k)| format!(r#"{{"kty":"oct","kid":"{kid}","k":"{k}"}}"#))
                .collect();
            let path = dir.path().join(name);
            std::fs::write(&path, format!(r#"{{"keys":[{}]}}"#, keys.join(","))).expect("write");
            path
        };
        let long = "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eA";
        let other = "eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eXl5eQ";
        assert_eq!(
            load_jwks(&write("ok", &[("a", long), ("b", other)])).map(|k| k.len()),
            Ok(2)
        );
        let refused = |path: PathBuf| load_jwks(&path).err().expect("refused");
        let e = refused(write("dup", &[("d", long), ("d", other)]));
        assert!(matches!(e, KeyError::JwksKey { index: 1, .. }), "{e}");
        assert!(e.to_string().contains("kid"), "{e}");
        // One kid on keys of different types is allowed (RFC 7517 §4.5).
        let path = dir.path().join("mixed");
        let rsa_n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
        std::fs::write(
            &path,
            format!(
                r#"{{"keys":[{{"kty":"oct","kid":"k","k":"{long}"}},{{"kty":"RSA","kid":"k","n":"{rsa_n}","e":"AQAB"}}]}}"#
            ),
        )
        .expect("write");
        assert_eq!(load_jwks(&path).map(|k| k.len()), Ok(2));
        let e = refused(write("empty", &[("e", "")]));
        assert!(e.to_string().contains("0 bytes"), "{e}");
        assert!(!e.to_string().contains(long));
    }
}
