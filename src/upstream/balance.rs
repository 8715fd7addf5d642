//! Choosing a server: smooth weighted round robin (as nginx does it), least
//! connections with weights, power-of-two-choices random, and rendezvous (HRW)
//! hashing for sticky keys. Pure algorithms over a slice of candidates, which
//! they see through [`Load`]; health is decided by the caller through the
//! `usable` predicate (selection is kept apart from health, as in pingora's
//! `select_with`). None of them allocates.

use std::sync::{Arc, Mutex};

/// What balancing needs to know of a server.
pub trait Load {
    /// Its share, relative to the others' (config `weight`).
    fn weight(&self) -> u32;
    /// In-flight requests plus open spliced sessions.
    fn inflight(&self) -> usize;
}

impl<T: Load + ?Sized> Load for Arc<T> {
    fn weight(&self) -> u32 {
        (**self).weight()
    }
    fn inflight(&self) -> usize {
        (**self).inflight()
    }
}

/// A fixed 64-bit hash (FNV-1a followed by a splitmix64 finaliser) so that every
/// node, every build and every restart agrees on sticky placement and server ids.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Weighted rendezvous hashing: the candidate with the highest
/// `-weight / ln(u)` score for this key wins, `u` being the key+server hash mapped
/// into (0, 1). Adding a server moves only the keys it now wins (≈ 1/(N+1)).
pub fn rendezvous<'a, T>(
    key: &[u8],
    candidates: impl Iterator<Item = &'a T>,
    id: impl Fn(&T) -> u64,
    weight: impl Fn(&T) -> u32,
) -> Option<&'a T>
where
    T: 'a,
{
    let mut best: Option<(&T, f64)> = None;
    for c in candidates {
        let h = stable_hash(&[key, &id(c).to_le_bytes()]);
        // 53 random bits → (0, 1), never 0 or 1 so ln() is finite and negative.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -f64::from(weight(c).max(1)) / u.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((c, score));
        }
    }
    best.map(|(c, _)| c)
}

/// nginx's smooth weighted round robin state: one `current` per server.
#[derive(Debug, Default)]
pub struct SmoothWrr {
    current: Mutex<Vec<i64>>,
}

impl SmoothWrr {
    pub fn new(n: usize) -> Self {
        Self {
            current: Mutex::new(vec![0; n]),
        }
    }

    /// Picks among indices `0..weights.len()` for which `usable(i)` holds.
    pub fn pick(&self, weights: &[u32], usable: impl Fn(usize) -> bool) -> Option<usize> {
        if let [_] = weights {
            // One server: the pick is it (its `current` would go up by its
            // weight and back down by the same total), so the lock, a write
            // that every worker's requests share, is not taken.
            return usable(0).then_some(0);
        }
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.len() != weights.len() {
            *cur = vec![0; weights.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, w) in weights.iter().enumerate() {
            if !usable(i) {
                continue;
            }
            let w = i64::from(*w);
            cur[i] += w;
            total += w;
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            cur[b] -= total;
        }
        best
    }
}

/// Least connections: the usable server with the lowest `inflight / weight`;
/// ties broken by smooth weighted round robin so equally loaded servers share
/// by weight (nginx's `least_conn`). `weights` are the servers' weights, in
/// order (what `wrr` works on). Returns an index into `servers`.
pub fn least_conn<S: Load>(
    servers: &[S],
    weights: &[u32],
    wrr: &SmoothWrr,
    usable: impl Fn(&S) -> bool,
) -> Option<usize> {
    // Compared as inflight_a * weight_b < inflight_b * weight_a, scaled to
    // one common integer so ties are exact.
    let load =
        |s: &S| (s.inflight() as u64).saturating_mul(1_000_000) / u64::from(s.weight().max(1));
    let (first, min) = servers
        .iter()
        .enumerate()
        .filter(|(_, s)| usable(s))
        .map(|(i, s)| (i, load(s)))
        .min_by_key(|(_, l)| *l)?;
    // Other workers' requests move the loads between the two passes: when
    // none is at the minimum any more, the server that was is still a good
    // pick, and "none" would read as every server down (a false 502).
    wrr.pick(weights, |i| {
        let s = &servers[i];
        usable(s) && load(s) == min
    })
    .or(Some(first))
}

/// Power of two choices: two random picks weighted by `weight` (with
/// replacement), keep the less loaded relative to its weight. Near
/// least-connections quality without shared state. `random` yields uniform
/// `u64`s. Returns an index into `servers`.
///
/// One pass and no allocation: both picks are weighted reservoir samples of
/// size one (the `k`-th usable server replaces a pick with probability
/// `weight_k / (weight_1 + … + weight_k)`), which is the same distribution as
/// drawing twice from the full list of usable servers.
pub fn two_choices<S: Load>(
    servers: &[S],
    usable: impl Fn(&S) -> bool,
    mut random: impl FnMut() -> u64,
) -> Option<usize> {
    let mut total = 0u64;
    let (mut a, mut b) = (None, None);
    for (i, s) in servers.iter().enumerate() {
        if !usable(s) {
            continue;
        }
        let w = u64::from(s.weight());
        total += w;
        if w == 0 {
            continue;
        }
        if random() % total < w {
            a = Some(i);
        }
        if random() % total < w {
            b = Some(i);
        }
    }
    let (a, b) = (a?, b?);
    let la = servers[a].inflight() as u64 * u64::from(servers[b].weight());
    let lb = servers[b].inflight() as u64 * u64::from(servers[a].weight());
    Some(if la <= lb { a } else { b })
}

#[cfg(test)]
mod tests;
