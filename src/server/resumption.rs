//! TLS session resumption for listeners: tickets and a bounded session cache,
//! one set per client-certificate policy. A resumed session skips the
//! handshake's certificate checks and keeps the client certificate it was
//! made with, so a session may only resume where the same `client_ca` (by
//! content) and `client_auth` would have let its handshake through: a session
//! made without a certificate, or under another CA, never resumes on a
//! listener that requires one (nginx's CVE-2014-3616, fixed there by a
//! session id context per verification setting). Built once and kept across
//! reloads, so a reload that keeps a policy keeps its clients' tickets.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};

use crate::config::ClientAuthConfig;

/// How many sessions each policy's cache holds (TLS 1.2 session ids, and
/// TLS 1.3 when tickets are off); the oldest go first. A few hundred bytes each.
const SESSION_CACHE_SIZE: usize = 10_000;

type Cache = dyn StoresServerSessions + Send + Sync;

/// What a session may resume under: no client certificates, or a CA's
/// SHA-256 and whether a certificate is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy(Option<([u8; 32], bool)>);

impl Policy {
    /// The policy of a listener with `client_auth`, whose CA file holds `ca_pem`.
    pub fn of(client_auth: Option<&ClientAuthConfig>, ca_pem: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Policy(client_auth.map(|c| (Sha256::digest(ca_pem).into(), c.required)))
    }
}

/// One policy's ticket keys and session cache, as the listeners' configs
/// hold them (weakly here: a policy no listener uses any more is dropped).
struct Slot {
    ticketer: Weak<dyn ProducesTickets>,
    cache: Weak<Cache>,
}

/// The resumption state of every TLS listener of the process, by policy.
#[derive(Default)]
pub struct Resumption {
    policies: Mutex<HashMap<Policy, Slot>>,
}

impl fmt::Debug for Resumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resumption").finish_non_exhaustive()
    }
}

impl Resumption {
    pub fn new() -> Self {
        Self::default()
    }

    /// The ticketer and cache of `policy`: the ones listeners with that
    /// policy already use, else new ones. Fails only when the system's
    /// random generator does.
    pub fn for_policy(
        &self,
        policy: Policy,
    ) -> Result<(Arc<dyn ProducesTickets>, Arc<Cache>), rustls::Error> {
        let mut map = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.ticketer.strong_count() > 0 || s.cache.strong_count() > 0);
        let slot = map.get(&policy);
        let ticketer = match slot.and_then(|s| s.ticketer.upgrade()) {
            Some(t) => t,
            // aws-lc-rs: AES-256 + HMAC-SHA256 keys, a new one every 6 hours
            // (tickets under the previous one still resume).
            None => rustls::crypto::aws_lc_rs::Ticketer::new()?,
        };
        let cache = match slot.and_then(|s| s.cache.upgrade()) {
            Some(c) => c,
            None => ServerSessionMemoryCache::new(SESSION_CACHE_SIZE) as Arc<Cache>,
        };
        let kept = Slot {
            ticketer: Arc::downgrade(&ticketer),
            cache: Arc::downgrade(&cache),
        };
        map.insert(policy, kept);
        Ok((ticketer, cache))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(required: bool) -> ClientAuthConfig {
        ClientAuthConfig {
            ca: "ca.pem".into(),
            required,
        }
    }

    #[test]
    fn policies_share_state_only_when_equal_and_while_used() {
        let r = Resumption::new();
        let none = Policy::of(None, b"");
        let a = Policy::of(Some(&auth(true)), b"CA one");
        let (t1, c1) = r.for_policy(none).unwrap();
        let (t2, c2) = r.for_policy(none).unwrap();
        assert!(Arc::ptr_eq(&t1, &t2) && Arc::ptr_eq(&c1, &c2));
        let (ta, ca) = r.for_policy(a).unwrap();
        assert!(!Arc::ptr_eq(&t1, &ta) && !Arc::ptr_eq(&c1, &ca));
        // Same CA, but optional: another policy. Another CA: another too.
        let optional = r
            .for_policy(Policy::of(Some(&auth(false)), b"CA one"))
            .unwrap();
        let other = r
            .for_policy(Policy::of(Some(&auth(true)), b"CA two"))
            .unwrap();
        assert!(!Arc::ptr_eq(&optional.1, &ca) && !Arc::ptr_eq(&other.1, &ca));
        // Unused policies are forgotten.
        drop((t1, c1, t2, c2, optional, other));
        let (t3, _) = r.for_policy(a).unwrap();
        assert!(Arc::ptr_eq(&t3, &ta));
        assert_eq!(r.policies.lock().unwrap().len(), 1);
    }
}
