//! Tokens a verifier accepted recently, so a client that shows the same token
//! on every request (a keep-alive API client, a reconnecting WebSocket) pays
//! the signature check once: a hit costs a hash of the token and a look at
//! its `exp`. Only successes are kept, never longer than the token is valid
//! (`exp` plus leeway); a reload builds new verifiers, so a rotated key never
//! meets an entry made with the old one. Bounded: at [`MAX_RECENT`] entries
//! the table starts again empty.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde_json::{Map, Value};

/// Entries kept at most (about 1 KiB each with a typical token and claims).
pub const MAX_RECENT: usize = 10_000;

struct Entry {
    claims: Arc<Map<String, Value>>,
    /// Unix seconds after which the entry is no longer good (`exp` + leeway).
    until: Option<u64>,
}

#[derive(Default)]
pub struct Recent {
    map: DashMap<Box<str>, Entry>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Recent {
    /// The claims of `token` if it was accepted and is still within its time.
    pub fn get(&self, token: &str) -> Option<Arc<Map<String, Value>>> {
        let e = self.map.get(token)?;
        if e.until.is_some_and(|u| now_secs() >= u) {
            drop(e);
            self.map.remove(token);
            return None;
        }
        Some(e.claims.clone())
    }

    /// Remembers an accepted token; `leeway` in seconds, as the check used it.
    pub fn put(&self, token: &str, claims: Arc<Map<String, Value>>, leeway: u64) {
        if self.map.len() >= MAX_RECENT {
            self.map.clear();
        }
        let until = match claims.get("exp") {
            None => None,
            // The verifier refuses an `exp` that is not a NumericDate; were
            // one to get here, it is not remembered rather than kept forever.
            Some(exp) => match numeric_date(exp) {
                Some(exp) => Some(exp.saturating_add(leeway)),
                None => return,
            },
        };
        self.map.insert(token.into(), Entry { claims, until });
    }
}

/// A JWT NumericDate (RFC 7519 §2) in whole seconds: an integer, or a
/// fraction rounded down (the safe side for `exp`). `None` for anything else.
pub(crate) fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v.as_f64()?;
        // `as` saturates: a date past u64's seconds is "never".
        (f.is_finite() && f >= 0.0).then(|| f.floor() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: Option<u64>) -> Arc<Map<String, Value>> {
        let mut m = Map::new();
        if let Some(e) = exp {
            m.insert("exp".into(), e.into());
        }
        Arc::new(m)
    }

    #[test]
    fn hits_until_expiry_and_stays_bounded() {
        let r = Recent::default();
        r.put("a", claims(Some(now_secs() + 60)), 0);
        r.put("old", claims(Some(now_secs().saturating_sub(5))), 0);
        r.put("forever", claims(None), 0);
        assert!(r.get("a").is_some());
        assert!(r.get("forever").is_some());
        assert!(r.get("old").is_none(), "an expired token is never a hit");
        assert!(r.get("other").is_none());
        for i in 0..MAX_RECENT + 5 {
            r.put(&format!("t{i}"), claims(None), 0);
        }
        assert!(r.map.len() <= MAX_RECENT);
    }

    /// RFC 7519's NumericDate may have a fraction: such an `exp` expires
    /// too (it was read as "no expiry", so a used token never did).
    #[test]
    fn a_fractional_exp_expires() {
        let r = Recent::default();
        let at = |exp: f64| Arc::new(Map::from_iter([("exp".to_string(), Value::from(exp))]));
        r.put("past", at(now_secs() as f64 - 5.4), 0);
        r.put("soon", at(now_secs() as f64 + 60.4), 0);
        assert!(r.get("past").is_none());
        assert!(r.get("soon").is_some());
    }
}
