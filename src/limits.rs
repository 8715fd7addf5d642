//! Connection caps: the global `server.max_connections` and the per-IP
//! `server.max_connections_per_ip`. A slot is held by an RAII [`ConnSlot`], so a
//! panicking connection task still frees it, and a freed slot is reusable at once.
//! Limits are read at admission time so a reload that changes them applies to the
//! next connection.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Global cap reached → 503 + Retry-After.
    Full,
    /// Per-IP cap reached → 429 + Retry-After.
    PerIp,
}

#[derive(Default)]
pub struct ConnLimits {
    active: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    /// Connections being answered with 503/429. Bounded separately so a flood of
    /// refused clients cannot itself use unbounded memory: past the bound they are
    /// closed without an answer.
    refusing: AtomicUsize,
}

/// Proof that a connection holds a slot; dropping it frees the slot.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: Option<IpAddr>,
    /// Counts the connection in `wsgate_connections_active{listener}` for as
    /// long as the slot lives (upgraded sessions included).
    gauge: Option<crate::metrics::GaugeGuard>,
}

impl ConnSlot {
    pub fn attach_gauge(&mut self, g: crate::metrics::GaugeGuard) {
        self.gauge = Some(g);
    }

    /// One more slot from the same caps, for `ip`: what an HTTP/2 WebSocket
    /// session holds beside its connection's (nginx counts each concurrent
    /// HTTP/2 request as a connection too), or one connection would hold as
    /// many sessions as it may open streams.
    pub fn admit_another(
        &self,
        ip: IpAddr,
        max: usize,
        per_ip: usize,
    ) -> Result<ConnSlot, Refusal> {
        self.limits.admit(ip, max, per_ip)
    }
}

/// Held while a refused connection is being answered.
pub struct RefusalSlot {
    limits: Arc<ConnLimits>,
}

impl ConnLimits {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Tries to admit a connection from `ip` under `max` total and `per_ip` per
    /// address (0 = unlimited).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        per_ip: usize,
    ) -> Result<ConnSlot, Refusal> {
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        if per_ip == 0 {
            return Ok(ConnSlot {
                limits: self.clone(),
                ip: None,
                gauge: None,
            });
        }
        // The entry guard is dropped before returning; never held across an await.
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if *n >= per_ip {
            drop(n);
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerIp);
        }
        *n += 1;
        drop(n);
        Ok(ConnSlot {
            limits: self.clone(),
            ip: Some(ip),
            gauge: None,
        })
    }

    /// A slot for answering a refused connection, if fewer than `max` are in use.
    pub fn refusal_slot(self: &Arc<Self>, max: usize) -> Option<RefusalSlot> {
        let prev = self.refusing.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(RefusalSlot {
            limits: self.clone(),
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.limits.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            // Remove the entry when it reaches zero so the map stays bounded by the
            // number of distinct live clients.
            self.limits.per_ip.remove_if_mut(&ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        self.limits.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_release() {
        let l = ConnLimits::new();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let a = l.admit(ip, 3, 2).unwrap();
        let _b = l.admit(ip, 3, 2).unwrap();
        assert_eq!(l.admit(ip, 3, 2).err(), Some(Refusal::PerIp));
        let _c = l.admit(other, 3, 2).unwrap();
        assert_eq!(l.admit(other, 3, 2).err(), Some(Refusal::Full));
        drop(a);
        assert!(l.admit(ip, 3, 2).is_ok());
        // a, the second and c remain minus a; the last admit's slot was dropped at once.
        assert_eq!(l.active(), 2);
    }

    #[test]
    fn per_ip_map_is_cleaned() {
        let l = ConnLimits::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        drop(l.admit(ip, 10, 5).unwrap());
        assert!(l.per_ip.is_empty());
    }
}
