//! ACME (RFC 8555) certificates for TLS listeners (`[listener.tls.acme]`,
//! docs/tls.md#acme). This module owns, per distinct ACME setting:
//!
//! - the [`CertSlot`] the listener's SNI resolver serves from: empty until
//!   the first certificate, then swapped whole on each renewal, so existing
//!   connections keep their session and new handshakes get the new
//!   certificate;
//! - the renewal task ([`renew`]): the certificate from the cache at start,
//!   a new order when none is cached or a third of the lifetime is left,
//!   failures retried with a bounded backoff while the last good certificate
//!   stays in service;
//! - the cache directory ([`cache`]): the account key and the certificates,
//!   so a restart reuses both and orders nothing;
//! - the challenge answers ([`Challenges`], one per process): http-01 tokens
//!   that `proxy` answers on plain listeners, tls-alpn-01 validation
//!   certificates that `server::tls` serves to `acme-tls/1` handshakes.
//!
//! The protocol itself (JWS, nonces, account, orders, CSR finalization) is
//! instant-acme ([`client`]). Account keys and certificate keys are never
//! logged. The [`Registry`] is built by the gateway, which hands listeners
//! their slots and starts or stops the tasks as the config changes.

mod cache;
mod challenges;
mod client;
pub mod renew;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

pub use self::challenges::{Challenges, ACME_TLS_ALPN, HTTP01_PREFIX};
pub use self::renew::Policy;
use crate::config::AcmeConfig;
use crate::metrics::AcmeOrder;

/// Why getting, storing or loading an ACME certificate failed. Messages are
/// for operators and never include key material.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ACME cache {path}: {reason}")]
    CacheContent { path: PathBuf, reason: String },
    #[error("ACME trust root {path}: {reason}")]
    Roots {
        path: PathBuf,
        reason: crate::config::RootsError,
    },
    #[error("ACME server: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("the CA's authorization for {domain} is {status}")]
    Authorization {
        domain: String,
        status: &'static str,
    },
    #[error("the CA offers no {challenge} challenge for {domain}")]
    NoChallenge {
        domain: String,
        challenge: &'static str,
    },
    #[error("the CA found the order invalid: it could not validate {domains} with {challenge}")]
    OrderInvalid {
        domains: String,
        challenge: &'static str,
    },
    #[error("the order did not finish within {0} s")]
    Timeout(u64),
    #[error("the CA's certificate is unusable: {0}")]
    Certificate(String),
    #[error("cannot make the tls-alpn-01 validation certificate: {0}")]
    ValidationCert(#[from] rcgen::Error),
}

impl AcmeError {
    /// The CA does not know the account (RFC 8555 `accountDoesNotExist`:
    /// deactivated, or a test CA that was restarted).
    pub fn is_unknown_account(&self) -> bool {
        matches!(self, AcmeError::Protocol(instant_acme::Error::Api(p))
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
    }

    /// The message with the causes under it (`: `-joined), for the log: the
    /// HTTP client's own message alone ("client error (Connect)") does not
    /// say what failed.
    pub fn with_causes(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = c.source();
        }
        out
    }
}

/// A certificate in service, with its lifetime.
#[derive(Debug)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A setting's own cached certificate, while valid, loaded when its slot is
/// made: before the listener is bound, so a start or a binary upgrade serves
/// it from the first handshake (the renewal task loads it only once running,
/// after the listeners accept).
fn cached(cfg: &AcmeConfig) -> Option<Arc<Issued>> {
    let own = cache::Cache::new(cfg).load_cert().ok()??;
    (own.not_after > SystemTime::now()).then(|| Arc::new(own))
}

/// The certificate of the setting `cfg` replaces, if any: one of the same
/// CA and cache (a reload that changed the domains) serves until the new
/// setting's own is issued, rather than failing handshakes. The one sharing
/// the most names; one sharing none (another listener's, on the same cache)
/// is no predecessor: its certificate would be served for names it does
/// not cover.
fn predecessor(entries: &[Entry], cfg: &AcmeConfig) -> Option<Arc<Issued>> {
    let shared = |e: &Entry| {
        e.cfg
            .domains
            .iter()
            .filter(|d| cfg.domains.contains(d))
            .count()
    };
    entries
        .iter()
        .filter(|e| e.cfg.directory == cfg.directory && e.cfg.cache == cfg.cache)
        .filter(|e| shared(e) > 0)
        .max_by_key(|e| shared(e))
        .and_then(|e| e.slot.current())
}

/// The certificate a listener serves for one ACME setting: empty until the
/// first one is loaded or issued, then replaced whole.
#[derive(Debug, Default)]
pub struct CertSlot {
    current: ArcSwapOption<Issued>,
}

impl CertSlot {
    /// The certificate to serve now.
    pub fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|i| i.key.clone())
    }

    /// The certificate in service, with its lifetime.
    pub fn current(&self) -> Option<Arc<Issued>> {
        self.current.load_full()
    }

    fn store(&self, issued: Issued) {
        self.current.store(Some(Arc::new(issued)));
    }
}

struct Entry {
    cfg: AcmeConfig,
    slot: Arc<CertSlot>,
    /// Set while its renewal task runs.
    running: Option<CancellationToken>,
}

/// Every ACME setting of the process and its slot, kept across reloads: a
/// reload that keeps a setting keeps its certificate and its task.
pub struct Registry {
    challenges: Arc<Challenges>,
    policy: Policy,
    /// `wsgate_acme_orders_total`.
    orders: Family<AcmeOrder, Counter>,
    entries: Mutex<Vec<Entry>>,
}

impl Registry {
    /// `orders` counts finished orders (`wsgate_acme_orders_total`).
    pub fn new(policy: Policy, orders: Family<AcmeOrder, Counter>) -> Self {
        Self {
            challenges: Arc::default(),
            policy,
            orders,
            entries: Mutex::new(Vec::new()),
        }
    }

    /// The pending challenge answers of every setting.
    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    /// The slot of `cfg` if it has one (nothing is made).
    pub fn find(&self, cfg: &AcmeConfig) -> Option<Arc<CertSlot>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| e.cfg == *cfg)
            .map(|e| e.slot.clone())
    }

    /// The slot of `cfg`, made (empty, no task yet) when it is new.
    pub fn slot(&self, cfg: &AcmeConfig) -> Arc<CertSlot> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.iter().find(|e| e.cfg == *cfg) {
            return e.slot.clone();
        }
        let slot = Arc::new(CertSlot::default());
        let first = cached(cfg).or_else(|| predecessor(&entries, cfg));
        slot.current.store(first);
        entries.push(Entry {
            cfg: cfg.clone(),
            slot: slot.clone(),
            running: None,
        });
        slot
    }

    /// Starts the renewal task of every setting in `wanted` that has none
    /// (children of `parent`: a drain stops them), and stops and forgets the
    /// settings not in it. Call once the listeners that answer the
    /// challenges are bound.
    pub fn sync(&self, wanted: &[&AcmeConfig], parent: &CancellationToken) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| {
            let keep = wanted.contains(&&e.cfg);
            if !keep {
                if let Some(t) = &e.running {
                    t.cancel();
                }
            }
            keep
        });
        for cfg in wanted {
            let idx = match entries.iter().position(|e| e.cfg == **cfg) {
                Some(i) => i,
                None => {
                    entries.push(Entry {
                        cfg: (*cfg).clone(),
                        slot: Arc::new(CertSlot::default()),
                        running: None,
                    });
                    entries.len() - 1
                }
            };
            let e = &mut entries[idx];
            if e.running.is_some() {
                continue;
            }
            let stop = parent.child_token();
            e.running = Some(stop.clone());
            tokio::spawn(renew::run(
                e.cfg.clone(),
                renew::Ctx {
                    slot: e.slot.clone(),
                    challenges: self.challenges.clone(),
                    policy: self.policy,
                    orders: self.orders.clone(),
                },
                stop,
            ));
        }
    }
}

/// A setting of one test CA with `cache`, for `domains`.
#[cfg(test)]
fn test_config(cache: PathBuf, domains: &[&str]) -> AcmeConfig {
    AcmeConfig {
        directory: "https://ca.test/dir".into(),
        ca_root: None,
        contact: vec![],
        domains: domains.iter().map(|d| d.to_string()).collect(),
        challenge: crate::config::AcmeChallenge::Http01,
        cache,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(domains: &[&str]) -> AcmeConfig {
        test_config("/var/cache/wsgate/acme".into(), domains)
    }

    fn issued(name: &str) -> Issued {
        let g = crate::certs::generate_self_signed(&[name.into()]).expect("cert");
        cache::parse_issued(g.cert_pem.as_bytes(), g.key_pem.as_bytes()).expect("issued")
    }

    /// A setting changed by a reload serves its own predecessor's
    /// certificate, never another listener's on the same CA and cache (the
    /// review's finding: B, given c.test too, served A's a.test certificate
    /// for b.test, and /readyz said ready).
    #[test]
    fn a_changed_setting_keeps_its_own_certificate_only() {
        let reg = Registry::new(Policy::default(), Family::default());
        reg.slot(&cfg(&["a.test"])).store(issued("a.test"));
        reg.slot(&cfg(&["b.test"])).store(issued("b.test"));
        let b_now = reg
            .find(&cfg(&["b.test"]))
            .and_then(|s| s.key())
            .expect("b's");
        let b2 = reg.slot(&cfg(&["b.test", "c.test"]));
        assert_eq!(b2.key().map(|k| k.cert.clone()), Some(b_now.cert.clone()));
        let d = reg.slot(&cfg(&["d.test"]));
        assert!(d.key().is_none(), "a new setting got another's certificate");
    }

    /// A setting's cached certificate is in its slot as soon as the slot
    /// is made, before any task runs (the TLS review: a start or binary
    /// upgrade accepted handshakes before the renewal task loaded it).
    #[test]
    fn a_new_slot_serves_its_cached_certificate_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = cfg(&["a.test"]);
        c.cache = dir.path().join("acme");
        let g = crate::certs::generate_self_signed(&["a.test".into()]).expect("cert");
        let stored = cache::Cache::new(&c)
            .save_cert(&g.cert_pem, &g.key_pem)
            .expect("saved");
        let reg = Registry::new(Policy::default(), Family::default());
        let slot = reg.slot(&c);
        assert_eq!(
            slot.key().map(|k| k.cert.clone()),
            Some(stored.key.cert.clone())
        );
    }
}
