//! The node-local bucket table of one limit: key hash → TAT, in shards behind
//! plain mutexes (a decision holds one for a hash lookup and an add).
//!
//! Memory is bounded whatever the keys are:
//! - keys are stored as a 64-bit SipHash under a per-process random key, so a
//!   long header value costs the same as an address, and nobody can choose
//!   values that collide;
//! - a bucket that is full again (`tat <= now`) carries no state, so each
//!   shard drops those at most once a second, when it is written to;
//! - each shard holds at most `max_keys / shards` entries. A new key in a full
//!   shard first sweeps it; if that frees too little, the eighth of the
//!   entries nearest to full (smallest TAT: the oldest, idlest debts) are
//!   forgotten. Those keys get a fresh burst, which is the price of a flood of
//!   keys larger than the cap; the table never grows past it.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;

use super::gcra::Gcra;

/// Shards per table (fewer when `max_keys` is smaller).
const SHARDS: usize = 32;
/// How often a shard drops its full buckets, in nanoseconds.
const SWEEP_EVERY: u64 = 1_000_000_000;

/// Keys are already SipHash outputs: hashing them again is waste.
#[derive(Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, u64, BuildHasherDefault<Passthrough>>;

#[derive(Default)]
struct Shard {
    tats: Map,
    next_sweep: u64,
}

/// The buckets of one limit on this node.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl Store {
    /// A table tracking at most `max_keys` keys (at least 1).
    pub fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let n = SHARDS.min(max_keys);
        Self {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_keys / n,
            hasher: RandomState::new(),
        }
    }

    /// The table's hash of a key, fed by `write`.
    pub fn hash(&self, write: impl FnOnce(&mut dyn Hasher)) -> u64 {
        let mut h = self.hasher.build_hasher();
        write(&mut h);
        h.finish()
    }

    /// Decides an event at `now` (ns) for the key hashed to `key`:
    /// `Err(wait_ns)` when over the limit.
    pub fn decide(&self, gcra: &Gcra, key: u64, now: u64) -> Result<(), u64> {
        // The top bits pick the shard; the map uses all of them.
        let idx = ((key >> 40) as usize) % self.shards.len();
        let mut shard = self.shards[idx].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tat) = shard.tats.get_mut(&key) {
            *tat = gcra.decide(*tat, now)?;
            return Ok(());
        }
        // Untracked: a full bucket, which always allows one event.
        let tat = gcra.decide(now, now)?;
        if now >= shard.next_sweep || shard.tats.len() >= self.per_shard {
            shard.tats.retain(|_, t| *t > now);
            shard.next_sweep = now.saturating_add(SWEEP_EVERY);
        }
        if shard.tats.len() >= self.per_shard {
            evict_fullest(&mut shard.tats, self.per_shard);
        }
        shard.tats.insert(key, tat);
        Ok(())
    }

    /// Keys tracked now (for tests, `/status` and docs/limits.md's figures).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).tats.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys this table holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }
}

/// Forgets the eighth (at least one) of `tats` with the smallest TAT, leaving
/// room for that many new keys before the next eviction.
fn evict_fullest(tats: &mut Map, cap: usize) {
    let drop_n = (cap / 8).max(1).min(tats.len());
    let mut all: Vec<u64> = tats.values().copied().collect();
    let (_, threshold, _) = all.select_nth_unstable(drop_n - 1);
    let threshold = *threshold;
    let mut dropped = 0;
    // Ties at the threshold go too only while fewer than `drop_n` have gone,
    // so the count is exact.
    tats.retain(|_, t| {
        if *t < threshold || (*t == threshold && dropped < drop_n) {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(s: &Store, n: u64) -> u64 {
        s.hash(|h| h.write_u64(n))
    }

    #[test]
    fn keys_are_isolated() {
        let s = Store::new(100);
        let g = Gcra::new(Duration::from_secs(1), 2);
        let (a, b) = (key(&s, 1), key(&s, 2));
        assert!(s.decide(&g, a, 0).is_ok());
        assert!(s.decide(&g, a, 0).is_ok());
        assert!(s.decide(&g, a, 0).is_err());
        assert!(s.decide(&g, b, 0).is_ok());
    }

    #[test]
    fn never_more_keys_than_the_cap() {
        let s = Store::new(1000);
        // A slow rate: every bucket stays far from full, so nothing is idle.
        let g = Gcra::new(Duration::from_secs(3600), 10);
        for n in 0..50_000 {
            assert!(s.decide(&g, key(&s, n), 5).is_ok());
            assert!(s.len() <= 1000);
        }
        assert!(s.len() > 800, "the table is used, not emptied: {}", s.len());
    }

    #[test]
    fn full_buckets_are_swept() {
        let s = Store::new(10_000);
        let g = Gcra::new(Duration::from_millis(1), 10);
        for n in 0..500 {
            s.decide(&g, key(&s, n), 0).unwrap();
        }
        assert_eq!(s.len(), 500);
        // Two seconds on, every bucket is full again; the next new key in each
        // shard sweeps it (2000 keys reach all 32 shards).
        for n in 1000..3000 {
            s.decide(&g, key(&s, n), 2 * SWEEP_EVERY).unwrap();
        }
        assert_eq!(s.len(), 2000);
    }

    #[test]
    fn eviction_forgets_the_fullest_first() {
        let mut m = Map::default();
        for k in 0..16u64 {
            m.insert(k, 100 + k);
        }
        evict_fullest(&mut m, 16);
        assert_eq!(m.len(), 14);
        assert!(!m.contains_key(&0) && !m.contains_key(&1));
    }

    #[test]
    fn small_caps_hold() {
        let s = Store::new(3);
        let g = Gcra::new(Duration::from_secs(3600), 10);
        for n in 0..100 {
            s.decide(&g, key(&s, n), 1).unwrap();
        }
        assert!(s.len() <= 3);
        assert_eq!(s.capacity(), 3);
    }
}
