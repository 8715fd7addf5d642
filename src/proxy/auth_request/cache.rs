//! Callout decisions remembered per credentials (`auth_request_cache`).
//!
//! Keyed by a SHA-256 of the request's credentials (`Authorization`,
//! `Cookie`, `Sec-WebSocket-Protocol`, the client certificate), so the cache
//! holds no credential and one request cannot be mistaken for
//! another's (a 64-bit hash could be collided on purpose). Every entry lives
//! the same TTL, so insertion order is expiry order: a FIFO of keys gives
//! both "drop the expired" and "drop the oldest when full" in O(1).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::client_cert::ClientCert;

/// The most decisions one route remembers.
pub const MAX_ENTRIES: usize = 10_000;

pub type Key = [u8; 32];

/// The cache key of a request: its credentials, as the callout passes them
/// on: the `Authorization`, `Cookie` and `Sec-WebSocket-Protocol` (a
/// `bearer.` token) headers, every value of each, length-prefixed so no two
/// different requests hash the same input, and the verified client
/// certificate's SHA-256 (or its absence).
pub fn key_of(headers: &HeaderMap, client_cert: Option<&ClientCert>) -> Key {
    let mut h = Sha256::new();
    match client_cert {
        Some(c) => {
            h.update([1]);
            h.update(c.sha256.as_bytes());
        }
        None => h.update([0]),
    }
    for name in [
        header::AUTHORIZATION,
        header::COOKIE,
        header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        let values = headers.get_all(&name);
        h.update((values.iter().count() as u32).to_be_bytes());
        for v in values {
            h.update((v.len() as u32).to_be_bytes());
            h.update(v.as_bytes());
        }
    }
    h.finalize().into()
}

struct Inner<T> {
    map: HashMap<Key, (Instant, Arc<T>)>,
    /// Keys by insertion (= expiry) time; may hold keys since replaced.
    order: VecDeque<(Key, Instant)>,
}

/// Decisions of type `T`, each for `ttl`, at most `cap` of them.
pub struct Cache<T> {
    ttl: Duration,
    cap: usize,
    inner: Mutex<Inner<T>>,
}

impl<T> std::fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("ttl", &self.ttl)
            .field("entries", &self.lock().map.len())
            .finish()
    }
}

impl<T> Cache<T> {
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            cap: cap.max(1),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unexpired decision for `key`.
    pub fn get(&self, key: &Key) -> Option<Arc<T>> {
        let inner = self.lock();
        let (expires, d) = inner.map.get(key)?;
        (*expires > Instant::now()).then(|| d.clone())
    }

    /// Remembers `d` for `key`, first dropping expired entries and, when
    /// full, the oldest.
    pub fn put(&self, key: Key, d: Arc<T>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        while let Some(&(old, at)) = inner.order.front() {
            let full = inner.map.len() >= self.cap || inner.order.len() >= 2 * self.cap;
            if at > now && !full {
                break;
            }
            inner.order.pop_front();
            // Only if the map still holds that insertion (not a newer one).
            if inner.map.get(&old).is_some_and(|(e, _)| *e == at) {
                inner.map.remove(&old);
            }
        }
        let expires = now + self.ttl;
        inner.map.insert(key, (expires, d));
        inner.order.push_back((key, expires));
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn k(n: u8) -> Key {
        [n; 32]
    }

    #[test]
    fn keys_tell_credentials_apart() {
        let mut a = HeaderMap::new();
        a.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        let mut b = HeaderMap::new();
        b.insert(header::COOKIE, HeaderValue::from_static("Bearer x"));
        let mut c = a.clone();
        c.insert("x-other", HeaderValue::from_static("ignored"));
        assert_ne!(key_of(&a, None), key_of(&b, None));
        assert_eq!(key_of(&a, None), key_of(&c, None));
        assert_ne!(key_of(&a, None), key_of(&HeaderMap::new(), None));
        // A bearer subprotocol and a client certificate are credentials too.
        let mut ws = HeaderMap::new();
        ws.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer.x"),
        );
        assert_ne!(key_of(&ws, None), key_of(&HeaderMap::new(), None));
        let alice = ClientCert::from_der(b"alice");
        let bob = ClientCert::from_der(b"bob");
        assert_ne!(key_of(&a, Some(&alice)), key_of(&a, None));
        assert_ne!(key_of(&a, Some(&alice)), key_of(&a, Some(&bob)));
        let mut split = HeaderMap::new();
        split.append(header::COOKIE, HeaderValue::from_static("a=1"));
        split.append(header::COOKIE, HeaderValue::from_static("b=2"));
        let mut joined = HeaderMap::new();
        joined.append(header::COOKIE, HeaderValue::from_static("a=1b=2"));
        assert_ne!(key_of(&split, None), key_of(&joined, None));
    }

    #[test]
    fn full_cache_drops_the_oldest() {
        let c = Cache::new(Duration::from_secs(60), 3);
        for n in 0..5 {
            c.put(k(n), Arc::new(n));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&k(0)).is_none() && c.get(&k(1)).is_none());
        assert_eq!(c.get(&k(4)).as_deref(), Some(&4));
    }

    #[test]
    fn expired_entries_are_not_returned_and_are_dropped() {
        let c = Cache::new(Duration::ZERO, 10);
        c.put(k(1), Arc::new(1));
        assert!(c.get(&k(1)).is_none());
        c.put(k(2), Arc::new(2));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_replaced_entry_is_not_evicted_by_its_old_slot() {
        let c = Cache::new(Duration::from_secs(60), 2);
        c.put(k(1), Arc::new(1));
        c.put(k(1), Arc::new(10));
        c.put(k(2), Arc::new(2));
        // The stale slot of the first k(1) is dropped; the newer k(1) stays.
        assert_eq!(c.get(&k(1)).as_deref(), Some(&10));
        c.put(k(3), Arc::new(3));
        assert_eq!(c.len(), 2);
        assert!(c.get(&k(3)).is_some());
    }
}
