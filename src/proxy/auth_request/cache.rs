//! Callout decisions remembered per credentials (`auth_request_cache`).
//!
//! Keyed by a SHA-256 of what the route's `auth_request_cache_key` names in
//! the subrequest (by default `Authorization`, `Cookie` and
//! `Sec-WebSocket-Protocol`) and the client certificate, so the cache holds
//! no credential and one request cannot be mistaken for another's (a 64-bit
//! hash could be collided on purpose). Every entry lives the same TTL, so
//! insertion order is expiry order: a FIFO of keys gives both "drop the
//! expired" and "drop the oldest when full" in O(1).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, HeaderMap};
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};

use crate::client_cert::ClientCert;
use crate::config::CacheKeyPart;

/// The most decisions one route remembers.
pub const MAX_ENTRIES: usize = 10_000;

pub type Key = [u8; 32];

/// The cache key of a subrequest: every value of each part (length-prefixed,
/// so no two different requests hash the same input) and the verified client
/// certificate's SHA-256 (or its absence).
///
/// `None` when the request carries no credential the key names (a header,
/// query or cookie part other than the original request's `X-Original-*`
/// description) and no certificate: with nothing to tell such requests'
/// senders apart, one client's decision would be every anonymous client's,
/// and a credential the key leaves out (an API key the service reads) would
/// be shared with them. `None` too when the original URI cannot be read for
/// a query part.
pub fn key_of(
    parts: &[CacheKeyPart],
    sub: &HeaderMap,
    client_cert: Option<&ClientCert>,
) -> Option<Key> {
    let mut h = Sha256::new();
    let mut credential = client_cert.is_some();
    match client_cert {
        Some(c) => {
            h.update([1]);
            h.update(c.sha256.as_bytes());
        }
        None => h.update([0]),
    }
    let mut values: Vec<&[u8]> = Vec::new();
    for part in parts {
        values.clear();
        match part {
            CacheKeyPart::Header(name) => {
                values.extend(sub.get_all(name).iter().map(|v| v.as_bytes()));
            }
            CacheKeyPart::Query(name) => query_values(sub, name, &mut values)?,
            CacheKeyPart::Cookie(name) => cookie_values(sub, name, &mut values),
        }
        credential |= !values.is_empty() && part.is_credential();
        h.update((values.len() as u32).to_be_bytes());
        for v in &values {
            h.update((v.len() as u32).to_be_bytes());
            h.update(v);
        }
    }
    credential.then(|| h.finalize().into())
}

/// The raw values of the query parameter `name` of the original URI (the
/// subrequest's `X-Original-URI`), `None` if that cannot be read. Names are
/// compared decoded, as the service reads them: `tok%65n=` is a `token` too.
/// Values stay as sent; two spellings of one value are then two entries,
/// which costs only a callout. A query with a `;` (which some services also
/// take as a separator) is keyed whole: a value cut at the `;` could
/// otherwise stand for several the service tells apart.
fn query_values<'a>(sub: &'a HeaderMap, name: &str, out: &mut Vec<&'a [u8]>) -> Option<()> {
    let uri = sub.get(super::X_ORIGINAL_URI)?.to_str().ok()?;
    let Some((_, query)) = uri.split_once('?') else {
        return Some(());
    };
    if query.contains(';') {
        out.push(query.as_bytes());
        return Some(());
    }
    out.extend(query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        percent_decode_str(k)
            .eq(name.bytes())
            .then_some(v.as_bytes())
    }));
    Some(())
}

/// The raw values of the cookies called `name` in every `Cookie` field, read
/// as bytes (a field that is not UTF-8 still has its cookies read, as
/// services' parsers read them).
fn cookie_values<'a>(sub: &'a HeaderMap, name: &str, out: &mut Vec<&'a [u8]>) {
    let trim = |b: &'a [u8]| b.trim_ascii();
    for field in sub.get_all(header::COOKIE) {
        for pair in field.as_bytes().split(|&b| b == b';') {
            let pair = trim(pair);
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if trim(&pair[..eq]) == name.as_bytes() {
                out.push(trim(&pair[eq + 1..]));
            }
        }
    }
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

    fn key(h: &HeaderMap, cert: Option<&ClientCert>) -> Option<Key> {
        key_of(&CacheKeyPart::defaults(), h, cert)
    }

    fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn keys_tell_credentials_apart() {
        let a = with(&[("authorization", "Bearer x")]);
        let b = with(&[("cookie", "Bearer x")]);
        let c = with(&[("authorization", "Bearer x"), ("x-other", "ignored")]);
        assert_ne!(key(&a, None), key(&b, None));
        assert_eq!(key(&a, None), key(&c, None));
        // A bearer subprotocol and a client certificate are credentials too.
        let ws = with(&[("sec-websocket-protocol", "bearer.x")]);
        assert!(key(&ws, None).is_some());
        let alice = ClientCert::from_der(b"alice");
        let bob = ClientCert::from_der(b"bob");
        assert_ne!(key(&a, Some(&alice)), key(&a, None));
        assert_ne!(key(&a, Some(&alice)), key(&a, Some(&bob)));
        let split = with(&[("cookie", "a=1"), ("cookie", "b=2")]);
        let joined = with(&[("cookie", "a=1b=2")]);
        assert_ne!(key(&split, None), key(&joined, None));
    }

    /// With none of the key's parts and no certificate there is nothing to
    /// tell clients apart: no key, so no cached decision is shared.
    #[test]
    fn requests_without_any_part_have_no_key() {
        let anonymous = with(&[("x-api-key", "k1"), ("x-original-uri", "/a?token=t")]);
        assert_eq!(key(&anonymous, None), None);
        assert_eq!(key(&HeaderMap::new(), None), None);
        let cert = ClientCert::from_der(b"alice");
        assert!(key(&anonymous, Some(&cert)).is_some());
    }

    #[test]
    fn named_parts_are_read_from_the_subrequest() {
        let parts = [
            CacheKeyPart::Header(http::HeaderName::from_static("x-api-key")),
            CacheKeyPart::Query("token".into()),
            CacheKeyPart::Cookie("sid".into()),
        ];
        // The gateway always sets X-Original-URI; the pairs may replace it.
        let k = |pairs: &[(&'static str, &'static str)]| {
            let mut h = with(&[("x-original-uri", "/p")]);
            h.extend(with(pairs));
            key_of(&parts, &h, None)
        };
        let uri = |u| ("x-original-uri", u);
        assert_eq!(k(&[("authorization", "Bearer x")]), None, "not a part");
        let k1 = k(&[("x-api-key", "k1")]);
        assert!(k1.is_some());
        assert_ne!(k1, k(&[("x-api-key", "k2")]));
        assert_eq!(k1, k(&[("x-api-key", "k1"), uri("/p?other=1")]));
        let t = k(&[uri("/p?a=1&token=t1")]);
        assert!(t.is_some());
        assert_eq!(t, k(&[uri("/q?token=t1&b=2")]), "the path is not a part");
        assert_eq!(t, k(&[uri("/q?tok%65n=t1")]), "names compare decoded");
        assert_ne!(t, k(&[uri("/q?token=t2")]));
        assert_ne!(t, k(&[uri("/q?token=t1&token=t2")]), "every value counts");
        assert_eq!(k(&[uri("/q?tokens=t1")]), None);
        let c = k(&[("cookie", "x=1; sid=s1")]);
        assert!(c.is_some());
        assert_eq!(
            c,
            k(&[("cookie", "sid=s1; x=2")]),
            "other cookies are not parts"
        );
        assert_ne!(c, k(&[("cookie", "sid=s2")]));
        // The same value in another part is another key.
        assert_ne!(k(&[("x-api-key", "s1")]), k(&[("cookie", "sid=s1")]));
        // A query with `;` is keyed whole: `token=t;x` and `token=t;y` may
        // be two tokens to the service.
        assert_ne!(k(&[uri("/p?token=t;x")]), k(&[uri("/p?token=t;y")]));
        assert_ne!(k(&[uri("/p?a=1;token=x")]), k(&[uri("/p?a=1;token=y")]));
        // No readable original URI: nothing cached.
        assert_eq!(key_of(&parts, &with(&[("x-api-key", "k1")]), None), None);
    }

    /// A cookie field that is not UTF-8 still has its cookies read (a
    /// service's parser reads them): `sid` is in the key, not absent.
    #[test]
    fn cookies_are_read_as_bytes() {
        let parts = [CacheKeyPart::Cookie("sid".into())];
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_bytes(b"sid=S; x=\xff").unwrap(),
        );
        let with_sid = key_of(&parts, &h, None);
        assert!(with_sid.is_some());
        assert_eq!(
            with_sid,
            key_of(&parts, &with(&[("cookie", "sid=S")]), None)
        );
    }

    /// The original request's description (`uri`, `method`, `host`, `ip`)
    /// tells requests apart, not the clients sending them: a request with
    /// none of the other parts is not cached, whatever else the key names.
    #[test]
    fn the_original_request_alone_is_no_credential() {
        let h = |n| CacheKeyPart::Header(http::HeaderName::from_static(n));
        let parts = [
            h("authorization"),
            h("x-original-uri"),
            h("x-original-method"),
            h("x-original-host"),
            h("x-original-for"),
        ];
        let sub = with(&[
            ("x-original-uri", "/x"),
            ("x-original-method", "GET"),
            ("x-original-host", "a.test"),
            ("x-original-for", "10.0.0.1"),
            ("cookie", "session=alice"),
        ]);
        assert_eq!(key_of(&parts, &sub, None), None);
        let mut signed = sub.clone();
        signed.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert!(key_of(&parts, &signed, None).is_some());
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
