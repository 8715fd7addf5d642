//! The token verifier of one `[auth.NAME]`: picks the key by the token's
//! `alg` and `kid`, checks the signature with `jsonwebtoken` (aws-lc-rs
//! underneath), then `iss`, `aud`, `exp` and `nbf` with the leeway. Also
//! mints development tokens (`wsgate token`) with the verifier's HMAC secret.
//!
//! Why a check failed is kept in [`AuthError::Invalid`] for the debug log; the
//! client is only ever told "invalid token".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::keys::KeySet;
use super::recent::{numeric_date, Recent};
use super::token::TokenSource;
use super::AuthConfig;

/// Tokens longer than this are refused before any parsing (a JWT is a few
/// hundred bytes; the cap bounds the work an attacker can ask for).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Every algorithm a verifier accepts (`none` never is).
const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a request is not authenticated. The `Display` text is for the debug
/// log only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("token expired")]
    Expired,
    /// What failed: signature, audience, issuer, shape... (never the token).
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl AuthError {
    /// The `result` label of `wsgate_auth_total`.
    pub fn result(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::Invalid(_) => "invalid",
        }
    }
}

/// A verified token's claims.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Shared with the verifier's table of recent tokens.
    pub claims: Arc<Map<String, Value>>,
}

impl Verified {
    /// A string claim (`sub`, or a configured `user_claim`).
    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// The `exp` claim as a time, if the token has one.
    pub fn expires(&self) -> Option<SystemTime> {
        let exp = numeric_date(self.claims.get("exp")?)?;
        UNIX_EPOCH.checked_add(Duration::from_secs(exp))
    }

    /// A claim as a header value: strings as they are, lists joined with
    /// `,`, other JSON as its text. `None` when the claim is absent or null.
    pub fn header_text(&self, name: &str) -> Option<String> {
        match self.claims.get(name)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => Some(
                items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            other => Some(other.to_string()),
        }
    }
}

/// One `[auth.NAME]`, ready to verify.
pub struct Verifier {
    pub name: String,
    keys: Arc<KeySet>,
    /// The HMAC secret as a decoding key.
    hmac: Option<DecodingKey>,
    /// One validation per algorithm, built once (building one allocates).
    validations: HashMap<Algorithm, Validation>,
    pub token_from: Vec<TokenSource>,
    pub leeway: Duration,
    /// `issuer`, which `iss` must equal (one string, not a list).
    issuer: Option<String>,
    /// Tokens accepted recently (see [`Recent`]).
    recent: Recent,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("name", &self.name)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn family(alg: Algorithm) -> u8 {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => 0,
        Algorithm::ES256 | Algorithm::ES384 => 2,
        Algorithm::EdDSA => 3,
        _ => 1,
    }
}

fn key_family(k: &DecodingKey) -> u8 {
    use jsonwebtoken::AlgorithmFamily as F;
    match k.family() {
        F::Hmac => 0,
        F::Rsa => 1,
        F::Ec => 2,
        F::Ed => 3,
    }
}

impl Verifier {
    pub fn new(cfg: &AuthConfig) -> Self {
        let validations = ALGORITHMS
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                // `exp` is checked when present, not required (as Envoy's
                // jwt_authn); `wsgate token` always sets one. `iss` and `aud`
                // are required when they are checked: a token without them,
                // or with one the crate cannot read (a number, null), would
                // otherwise skip the check.
                v.required_spec_claims.clear();
                if cfg.audience.is_some() {
                    v.required_spec_claims.insert("aud".into());
                }
                if cfg.issuer.is_some() {
                    v.required_spec_claims.insert("iss".into());
                }
                v.leeway = cfg.leeway.as_secs();
                v.validate_nbf = true;
                match &cfg.audience {
                    Some(a) => v.set_audience(&[a]),
                    None => v.validate_aud = false,
                }
                if let Some(i) = &cfg.issuer {
                    v.set_issuer(&[i]);
                }
                (alg, v)
            })
            .collect();
        Self {
            name: cfg.name.clone(),
            keys: cfg.keys.clone(),
            hmac: cfg
                .keys
                .hmac
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.bytes())),
            validations,
            token_from: cfg.token_from.clone(),
            leeway: cfg.leeway,
            issuer: cfg.issuer.clone(),
            recent: Recent::default(),
        }
    }

    /// Verifies `token`: signature first, then the claims. A token accepted
    /// before and still within its `exp` is answered from [`Recent`].
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("token too long".into()));
        }
        if let Some(claims) = self.recent.get(token) {
            return Ok(Verified { claims });
        }
        let claims = Arc::new(self.verify_signed(token)?);
        self.recent
            .put(token, claims.clone(), self.leeway.as_secs());
        Ok(Verified { claims })
    }

    /// The full check of a token not seen before.
    fn verify_signed(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        let invalid = |why: &str| AuthError::Invalid(why.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|e| describe(e.kind()))?;
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: a `crit` names extensions the recipient must
            // understand, and this verifier understands none.
            return Err(invalid("critical header extensions are not understood"));
        }
        let alg = header.alg;
        let validation = self
            .validations
            .get(&alg)
            .ok_or_else(|| invalid("algorithm not accepted"))?;
        let candidates = self.candidates(alg, header.kid.as_deref());
        if candidates.is_empty() {
            return Err(match header.kid {
                Some(_) => invalid("no key with this kid for this alg"),
                None => invalid("no key for this alg"),
            });
        }
        let mut last = invalid("signature");
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
                Ok(data) => return self.shapes(data.claims),
                // Another key of the family may have signed it.
                Err(e) if is_key_mismatch(e.kind()) => last = describe(e.kind()),
                // The signature held; the claims did not.
                Err(e) => return Err(describe(e.kind())),
            }
        }
        Err(last)
    }

    /// What the crate's checks let through that this verifier does not: an
    /// `iss` list (RFC 7519 §4.1.1: one StringOrURI) that merely contains the
    /// issuer, and an `exp` or `nbf` that is not a NumericDate (the expiry of
    /// sessions and of [`Recent`] entries is read from `exp`).
    fn shapes(&self, claims: Map<String, Value>) -> Result<Map<String, Value>, AuthError> {
        if let Some(want) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(want.as_str()) {
                return Err(AuthError::Invalid("issuer".into()));
            }
        }
        for claim in ["exp", "nbf"] {
            if claims.get(claim).is_some_and(|v| numeric_date(v).is_none()) {
                return Err(AuthError::Invalid(format!("{claim} is not a NumericDate")));
            }
        }
        Ok(claims)
    }

    /// The keys that may have signed a token with this `alg` and `kid`: a
    /// JWKS key named by `kid` if there is one, else the PEM keys and (for a
    /// token without `kid`) the unnamed-or-any JWKS keys of the family.
    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<&DecodingKey> {
        let fam = family(alg);
        let fits =
            |k: &&super::keys::JwksKey| key_family(&k.key) == fam && k.alg.is_none_or(|a| a == alg);
        if let Some(kid) = kid {
            let named: Vec<_> = self
                .keys
                .jwks
                .iter()
                .filter(fits)
                .filter(|k| k.kid.as_deref() == Some(kid))
                .map(|k| &k.key)
                .collect();
            if !named.is_empty() {
                return named;
            }
        }
        // An HMAC token that names no JWKS `oct` key is checked against the
        // secret alone (when there is one): no other key of the family is
        // tried, so one secret's tokens never depend on the JWKS file.
        if fam == 0 {
            if let Some(k) = &self.hmac {
                return vec![k];
            }
        }
        let mut out: Vec<&DecodingKey> = self
            .keys
            .pem
            .iter()
            .map(|k| &k.key)
            .filter(|k| key_family(k) == fam)
            .collect();
        if kid.is_none() {
            out.extend(self.keys.jwks.iter().filter(fits).map(|k| &k.key));
        }
        out
    }

    /// Signs `claims` with HS256 and the verifier's secret (`wsgate token`).
    /// `iss` and `aud` are set from the verifier when the claims lack them, so
    /// the token passes this verifier.
    pub fn mint(&self, mut claims: Map<String, Value>) -> Result<String, MintError> {
        let secret = self.keys.hmac.as_ref().ok_or(MintError::NoSecret)?;
        let v = self
            .validations
            .get(&Algorithm::HS256)
            .ok_or(MintError::NoSecret)?;
        if let Some(iss) = v.iss.as_ref().and_then(|s| s.iter().next()) {
            claims.entry("iss").or_insert_with(|| iss.clone().into());
        }
        if let Some(aud) = v.aud.as_ref().and_then(|s| s.iter().next()) {
            claims.entry("aud").or_insert_with(|| aud.clone().into());
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.bytes()),
        )
        .map_err(|e| MintError::Sign(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("this verifier has no hmac_secret to sign with")]
    NoSecret,
    #[error("signing failed: {0}")]
    Sign(String),
}

fn is_key_mismatch(k: &ErrorKind) -> bool {
    matches!(
        k,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
    )
}

/// The debug-log reason for a failed check.
fn describe(k: &ErrorKind) -> AuthError {
    let why = match k {
        ErrorKind::ExpiredSignature => return AuthError::Expired,
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "not a well-formed JWT",
        ErrorKind::InvalidSignature => "signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            "algorithm does not fit the key"
        }
        ErrorKind::InvalidAudience => "audience",
        ErrorKind::InvalidIssuer => "issuer",
        ErrorKind::ImmatureSignature => "not yet valid (nbf)",
        ErrorKind::MissingRequiredClaim(c) => {
            return AuthError::Invalid(format!("missing claim {c}"))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            return AuthError::Invalid(format!("malformed claim {c}"))
        }
        _ => "key or token unusable",
    };
    AuthError::Invalid(why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fractional_exp_is_read_rounded_down() {
        let v = Verified {
            claims: Arc::new(Map::from_iter([(
                "exp".to_string(),
                Value::from(1_796_489_948.4),
            )])),
        };
        let secs = v.expires().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        assert_eq!(secs.map(|d| d.as_secs()), Some(1_796_489_948));
    }
}
