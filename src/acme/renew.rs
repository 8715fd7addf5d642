//! The renewal task of one ACME setting: serve the cached certificate at
//! once, order a new one when there is none or a third of its lifetime is
//! left, and retry failures with a doubling, capped backoff while the last
//! good certificate stays in the slot. Runs until its token is cancelled
//! (the setting left the config, or the gateway drains).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;

use super::cache::Cache;
use super::{client, AcmeError, CertSlot, Challenges, Issued};
use crate::config::AcmeConfig;
use crate::metrics::AcmeOrder;

/// Timing of renewals and retries.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The first retry after a failure; each further one waits twice as long.
    pub first_retry: Duration,
    /// The longest wait between two tries.
    pub max_retry: Duration,
    /// One order, from `newOrder` to the certificate, must finish within this.
    pub order_timeout: Duration,
    /// The shortest time between two successful orders (a CA issuing
    /// certificates that are already due must not be hammered).
    pub min_interval: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            first_retry: Duration::from_secs(10),
            max_retry: Duration::from_secs(3600),
            order_timeout: Duration::from_secs(180),
            min_interval: Duration::from_secs(1),
        }
    }
}

/// When a certificate valid from `not_before` to `not_after` is renewed: when
/// a third of its lifetime is left.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_after.checked_sub(life / 3).unwrap_or(not_before)
}

/// The wait before try `failures + 1` after `failures` failed in a row.
pub fn backoff(policy: &Policy, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    policy
        .first_retry
        .saturating_mul(1u32 << doublings)
        .min(policy.max_retry)
}

/// The longest single sleep: the next try is a wall-clock time, re-checked at
/// least this often, so a suspended machine or a clock step cannot push a
/// renewal back by the length of a monotonic sleep.
const RECHECK: Duration = Duration::from_secs(600);

/// What one renewal task works with besides its setting.
pub(super) struct Ctx {
    pub(super) slot: Arc<CertSlot>,
    pub(super) challenges: Arc<Challenges>,
    pub(super) policy: Policy,
    /// `wsgate_acme_orders_total`.
    pub(super) orders: Family<AcmeOrder, Counter>,
}

pub(super) async fn run(cfg: AcmeConfig, cx: Ctx, stop: CancellationToken) {
    let Ctx {
        slot,
        challenges,
        policy,
        orders,
    } = cx;
    let count = |result| {
        let domain = cfg.domains.first().cloned().unwrap_or_default();
        orders.get_or_create(&AcmeOrder { domain, result }).inc();
    };
    let cache = Cache::new(&cfg);
    let domains = cfg.domains.join(",");
    // The cached certificate of this very setting decides when to order;
    // without one, order now (a certificate the slot was seeded with, for
    // the names before a reload, is only served until then).
    let mut next = match cache.load_cert() {
        Ok(Some(issued)) if issued.not_after > SystemTime::now() => {
            tracing::info!(domains = %domains, expires = %httpdate::fmt_http_date(issued.not_after),
                "ACME certificate loaded from the cache");
            let at = renew_at(issued.not_before, issued.not_after);
            slot.store(issued);
            at
        }
        Ok(_) => SystemTime::now(),
        Err(e) => {
            tracing::warn!(domains = %domains, error = %e, "ACME cache unusable; ordering a new certificate");
            SystemTime::now()
        }
    };
    let mut failures = 0u32;
    let mut unsaved: Option<Unsaved> = None;
    loop {
        if let Some(u) = &mut unsaved {
            if u.store_if_due(&cache, &policy, &domains) {
                unsaved = None;
            }
        }
        let due = unsaved.as_ref().map_or(next, |u| u.at.min(next));
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        if !wait.is_zero() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait.min(RECHECK)) => continue,
            }
        }
        if next > SystemTime::now() {
            // Woken to store the certificate again, not to order.
            continue;
        }
        let attempt = tokio::time::timeout(policy.order_timeout, obtain(&cfg, &cache, &challenges));
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = attempt => r.unwrap_or(Err(AcmeError::Timeout(policy.order_timeout.as_secs()))),
        };
        let now = SystemTime::now();
        match result {
            Ok((issued, not_stored)) => {
                count("ok");
                tracing::info!(domains = %domains, expires = %httpdate::fmt_http_date(issued.not_after),
                    "ACME certificate issued and in service");
                let due = renew_at(issued.not_before, issued.not_after);
                (next, failures) = after_issue(&policy, now, due, failures);
                if failures > 0 {
                    tracing::warn!(domains = %domains, "the ACME certificate issued is already due for renewal");
                }
                slot.store(issued);
                unsaved = not_stored.map(|(chain, key)| Unsaved::new(chain, key, &policy));
            }
            Err(e) => {
                count("error");
                failures = failures.saturating_add(1);
                let wait = backoff(&policy, failures);
                next = now + wait;
                let serving = if slot.key().is_some() {
                    "the current certificate stays in service"
                } else {
                    "no certificate yet: handshakes for these names fail"
                };
                tracing::warn!(domains = %domains, error = %e.with_causes(), failures,
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "ACME order failed; {serving}");
            }
        }
    }
}

/// When to order after an issue whose certificate is due at `due`, and the
/// failures in a row then. One due as it was issued (a clock behind the
/// CA's, or a CA issuing very short certificates) is paced as a failure,
/// not ordered again each `min_interval`.
fn after_issue(
    policy: &Policy,
    now: SystemTime,
    due: SystemTime,
    failures: u32,
) -> (SystemTime, u32) {
    if due > now {
        return (due.max(now + policy.min_interval), 0);
    }
    let failures = failures.saturating_add(1);
    (now + backoff(policy, failures), failures)
}

/// A certificate in service that the cache could not take yet: written
/// again with the failure backoff, never ordered again for it (each order
/// is a duplicate the CA counts: Let's Encrypt allows 5 a week).
struct Unsaved {
    chain: String,
    key: String,
    failures: u32,
    at: SystemTime,
}

impl Unsaved {
    fn new(chain: String, key: String, policy: &Policy) -> Self {
        Self {
            chain,
            key,
            failures: 1,
            at: SystemTime::now() + backoff(policy, 1),
        }
    }

    /// Tries the write when it is due; `true` once stored.
    fn store_if_due(&mut self, cache: &Cache, policy: &Policy, domains: &str) -> bool {
        if SystemTime::now() < self.at {
            return false;
        }
        match cache.store_cert(&self.chain, &self.key) {
            Ok(()) => {
                tracing::info!(domains = %domains, "ACME certificate stored in the cache");
                true
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.at = SystemTime::now() + backoff(policy, self.failures);
                tracing::error!(domains = %domains, error = %e.with_causes(),
                    "ACME certificate still not stored in the cache (it stays in service; a restart would order a new one)");
                false
            }
        }
    }
}

/// One order. The certificate is served even when the cache cannot take it;
/// its PEMs then come back (chain, key) for [`Unsaved`]. An account the CA
/// no longer knows is replaced by a new registration within the same try.
async fn obtain(
    cfg: &AcmeConfig,
    cache: &Cache,
    challenges: &Arc<Challenges>,
) -> Result<(Issued, Option<(String, String)>), AcmeError> {
    let account = client::account(cfg, cache).await?;
    let (chain, key) = match client::order(&account, cfg, challenges).await {
        Err(e) if e.is_unknown_account() => {
            tracing::warn!(directory = %cfg.directory,
                "the CA does not know the cached ACME account; registering a new one");
            cache.forget_account()?;
            let account = client::account(cfg, cache).await?;
            client::order(&account, cfg, challenges).await?
        }
        other => other?,
    };
    let issued = super::cache::parse_issued(chain.as_bytes(), key.as_bytes())
        .map_err(AcmeError::Certificate)?;
    match cache.store_cert(&chain, &key) {
        Ok(()) => Ok((issued, None)),
        Err(e) => {
            tracing::error!(domains = %cfg.domains.join(","), error = %e.with_causes(),
                "ACME certificate issued but not stored in the cache; it is served, and the write is tried again");
            Ok((issued, Some((chain, key))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = renew_at(t0, t0 + Duration::from_secs(90 * 86400));
        assert_eq!(at, t0 + Duration::from_secs(60 * 86400));
        assert_eq!(
            renew_at(t0, t0 + Duration::from_secs(9)),
            t0 + Duration::from_secs(6)
        );
        // A certificate whose notAfter precedes its notBefore is due at once.
        assert_eq!(
            renew_at(t0, t0 - Duration::from_secs(5)),
            t0 - Duration::from_secs(5)
        );
    }

    #[test]
    fn a_certificate_due_as_it_is_issued_is_paced_as_a_failure() {
        let p = Policy::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = now + Duration::from_secs(3600);
        assert_eq!(after_issue(&p, now, later, 3), (later, 0));
        assert_eq!(after_issue(&p, now, now, 0), (now + p.first_retry, 1));
        assert_eq!(after_issue(&p, now, now, 1), (now + p.first_retry * 2, 2));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = Policy::default();
        assert_eq!(backoff(&p, 1), Duration::from_secs(10));
        assert_eq!(backoff(&p, 2), Duration::from_secs(20));
        assert_eq!(backoff(&p, 4), Duration::from_secs(80));
        assert_eq!(backoff(&p, 10), Duration::from_secs(3600));
        assert_eq!(backoff(&p, u32::MAX), Duration::from_secs(3600));
    }
}
