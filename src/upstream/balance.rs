//! Choosing a server: smooth weighted round robin (as nginx does it), least
//! connections with weights, power-of-two-choices random, and rendezvous (HRW)
//! hashing for sticky keys. Pure algorithms over a slice of candidates; health is
//! decided by the caller through the `usable` predicate (selection is kept apart
//! from health, as in pingora's `select_with`).

use std::sync::Mutex;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_wrr_is_smooth_and_weighted() {
        let w = SmoothWrr::new(3);
        let seq: Vec<usize> = (0..7)
            .map(|_| w.pick(&[5, 1, 1], |_| true).unwrap())
            .collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn smooth_wrr_skips_unusable() {
        let w = SmoothWrr::new(2);
        for _ in 0..5 {
            assert_eq!(w.pick(&[1, 1], |i| i == 1), Some(1));
        }
        assert_eq!(w.pick(&[1, 1], |_| false), None);
    }

    #[test]
    fn rendezvous_moves_about_one_in_n_plus_one() {
        let three: Vec<u64> = vec![1, 2, 3];
        let four: Vec<u64> = vec![1, 2, 3, 4];
        let mut moved = 0;
        for k in 0..10_000u32 {
            let key = k.to_le_bytes();
            let a = rendezvous(&key, three.iter(), |x| *x, |_| 1).unwrap();
            let b = rendezvous(&key, four.iter(), |x| *x, |_| 1).unwrap();
            if a != b {
                assert_eq!(*b, 4, "a key may only move to the new server");
                moved += 1;
            }
        }
        let frac = f64::from(moved) / 10_000.0;
        assert!(frac > 0.20 && frac <= 0.30, "moved {frac}");
    }
}
