//! TLS for listeners: a rustls `ServerConfig` per TLS listener with TLS 1.2/1.3
//! only, ALPN `h2` + `http/1.1`, and a certificate chosen by SNI (exact names
//! first, then the longest `*.wildcard` covering it: one label, as its
//! certificate does; else the listener's default), and, with `client_ca`,
//! client certificates verified against that CA (mTLS).
//! A certificate with `ocsp` staples that response until its `nextUpdate`
//! passes (checked per handshake; the file is re-read on every reload).
//! With `[listener.tls.acme]` the default certificate is the ACME setting's
//! [`CertSlot`] (swapped live on renewal; none until the first is issued),
//! and a tls-alpn-01 setting also answers `acme-tls/1` handshakes with the
//! pending validation certificate (RFC 8737).
//! Sessions resume through tickets and a bounded session cache shared by
//! the listeners with the same client-certificate policy ([`Resumption`]).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

pub use super::resumption::{Policy, Resumption};
use crate::acme::{self, CertSlot, Challenges, ACME_TLS_ALPN};
use crate::certs::{load_certified_key, load_ocsp, CertError};
use crate::config::{AcmeChallenge, CertPaths, HostPattern, ListenerCert, TlsConfig};

/// One certificate, and the same with its stapled OCSP response while that
/// is fresh.
#[derive(Debug)]
struct Entry {
    plain: Arc<CertifiedKey>,
    /// The leaf certificate's `notAfter` (for `wsgate_tls_cert_expiry_seconds`).
    not_after: Option<SystemTime>,
    /// With `ocsp` set, and its `nextUpdate` (`None`: it does not expire).
    stapled: Option<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl Entry {
    fn load(paths: &CertPaths) -> Result<Self, CertError> {
        let plain = load_certified_key(&paths.cert, &paths.key)?;
        let not_after = plain.cert.first().and_then(crate::certs::not_after);
        let Some(path) = &paths.ocsp else {
            return Ok(Self {
                plain,
                not_after,
                stapled: None,
            });
        };
        let resp = load_ocsp(path)?;
        if !resp.is_fresh(SystemTime::now()) {
            tracing::warn!(ocsp = %path.display(), cert = %paths.cert.display(),
                "OCSP response expired (past its nextUpdate): not stapled");
            return Ok(Self {
                plain,
                not_after,
                stapled: None,
            });
        }
        let mut ck = (*plain).clone();
        ck.ocsp = Some(resp.der);
        Ok(Self {
            stapled: Some((Arc::new(ck), resp.next_update)),
            not_after,
            plain,
        })
    }

    /// The key to serve now: stapled until the response expires.
    fn current(&self) -> Arc<CertifiedKey> {
        match &self.stapled {
            Some((ck, None)) => ck.clone(),
            Some((ck, Some(until))) if SystemTime::now() < *until => ck.clone(),
            _ => self.plain.clone(),
        }
    }
}

/// A listener's default certificate: files loaded now, or an ACME slot.
enum DefaultCert {
    Files(Entry),
    Acme(Arc<CertSlot>),
}

impl DefaultCert {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self {
            DefaultCert::Files(e) => Some(e.current()),
            DefaultCert::Acme(slot) => slot.key(),
        }
    }

    fn not_after(&self) -> Option<SystemTime> {
        match self {
            DefaultCert::Files(e) => e.not_after,
            DefaultCert::Acme(slot) => slot.current().map(|i| i.not_after),
        }
    }
}

/// Picks a certificate by SNI.
pub struct SniResolver {
    default: DefaultCert,
    exact: Vec<(String, Entry)>,
    /// Sorted longest suffix first so the most specific wildcard wins.
    wildcard: Vec<(String, Entry)>,
    /// Pending tls-alpn-01 answers, on a listener whose ACME setting uses them.
    challenges: Option<Arc<Challenges>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.len())
            .field("wildcard", &self.wildcard.len())
            .finish()
    }
}

impl SniResolver {
    /// Loads every certificate file; an ACME default takes its slot from `acme`.
    pub fn load(cfg: &TlsConfig, acme: &acme::Registry) -> Result<Self, CertError> {
        let (default, challenges) = match &cfg.default {
            ListenerCert::Files(paths) => (DefaultCert::Files(Entry::load(paths)?), None),
            ListenerCert::Acme(a) => (
                DefaultCert::Acme(acme.slot(a)),
                (a.challenge == AcmeChallenge::TlsAlpn01).then(|| acme.challenges().clone()),
            ),
        };
        let mut exact = Vec::new();
        let mut wildcard = Vec::new();
        for (host, paths) in &cfg.sni {
            let ck = Entry::load(paths)?;
            match host {
                HostPattern::Exact(h) => exact.push((h.clone(), ck)),
                HostPattern::Wildcard(s) => wildcard.push((s.clone(), ck)),
            }
        }
        wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(Self {
            default,
            exact,
            wildcard,
            challenges,
        })
    }

    /// Each certificate's `notAfter`, by the name it is served for
    /// (`default`, an exact host, or `*.suffix`), read now: an ACME
    /// certificate's is the one in service.
    pub fn expiries(&self) -> Vec<(String, SystemTime)> {
        let named = self.exact.iter().map(|(h, e)| (h.clone(), e.not_after));
        let wild = self
            .wildcard
            .iter()
            .map(|(s, e)| (format!("*{s}"), e.not_after));
        std::iter::once(("default".to_string(), self.default.not_after()))
            .chain(named)
            .chain(wild)
            .filter_map(|(h, t)| Some((h, t?)))
            .collect()
    }

    /// The certificate for `sni`; `None` only for an ACME default that has
    /// no certificate yet.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni.map(|s| s.to_ascii_lowercase()) else {
            return self.default.current();
        };
        if let Some((_, e)) = self.exact.iter().find(|(h, _)| *h == name) {
            return Some(e.current());
        }
        if let Some((_, e)) = self.wildcard.iter().find(|(s, _)| covers(s, &name)) {
            return Some(e.current());
        }
        self.default.current()
    }
}

/// Whether a wildcard entry (its suffix, `.example.test`) is for `name`:
/// one label in front, as a wildcard certificate covers (RFC 6125 §6.4.3)
/// and HAProxy's crt-list matches. `x.b.example.test` falls through to a
/// longer wildcard or the default, whose certificate may cover it.
fn covers(suffix: &str, name: &str) -> bool {
    name.strip_suffix(suffix)
        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(challenges) = &self.challenges {
            // RFC 8737: a validation handshake offers acme-tls/1 only, and
            // gets the validation certificate or nothing.
            if hello
                .alpn()
                .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN))
            {
                return hello.server_name().and_then(|n| challenges.tls_alpn01(n));
            }
        }
        self.pick(hello.server_name())
    }
}

/// One TLS listener's rustls config, and its resolver (which tells when each
/// certificate in service expires).
pub struct ListenerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub resolver: Arc<SniResolver>,
}

/// Builds the rustls config for one TLS listener, loading every certificate.
/// `tickets`: `[server] tls_tickets` (the session cache is used either way).
/// An ACME default takes its certificate slot and challenges from `acme`.
pub fn server_config(
    cfg: &TlsConfig,
    resumption: &Resumption,
    tickets: bool,
    acme: &acme::Registry,
) -> Result<ListenerTls, CertError> {
    let resolver = Arc::new(SniResolver::load(cfg, acme)?);
    // Read once: the verifier trusts these bytes, and resumption is keyed by them.
    let ca_pem = match &cfg.client_auth {
        Some(ca) => crate::fsread::read(&ca.ca).map_err(|e| CertError::Cert {
            path: ca.ca.clone(),
            reason: e.to_string(),
        })?,
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CertError::Cert {
            path: match &cfg.default {
                ListenerCert::Files(p) => p.cert.clone(),
                ListenerCert::Acme(a) => a.cache.clone(),
            },
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(client_verifier(cfg, &ca_pem, provider.clone())?)
        .with_cert_resolver(resolver.clone());
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if resolver.challenges.is_some() {
        // Only validation handshakes offer it; they never reach HTTP.
        sc.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    let policy = Policy::of(cfg.client_auth.as_ref(), &ca_pem);
    let (ticketer, cache) = resumption.for_policy(policy).map_err(CertError::Tickets)?;
    sc.session_storage = cache;
    if tickets {
        sc.ticketer = ticketer;
    }
    Ok(ListenerTls {
        config: Arc::new(sc),
        resolver,
    })
}

/// mTLS: verifies client certificates against `client_ca` (rustls'
/// `WebPkiClientVerifier`, the same provider as the rest of TLS); without
/// `client_ca`, no certificate is asked for.
fn client_verifier(
    cfg: &TlsConfig,
    ca_pem: &[u8],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, CertError> {
    let Some(ca) = &cfg.client_auth else {
        return Ok(WebPkiClientVerifier::no_client_auth());
    };
    let bad = |reason: String| CertError::Cert {
        path: ca.ca.clone(),
        reason,
    };
    let roots = crate::config::roots_from_pem(ca_pem).map_err(|e| bad(e.to_string()))?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if ca.required {
        builder
    } else {
        // "optional": no certificate is fine; a presented one must still verify.
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(until: Option<SystemTime>) -> Entry {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) =
            crate::certs::write_dev_cert(dir.path(), &["localhost".into()]).expect("cert");
        let plain = load_certified_key(&cert, &key).expect("key");
        let mut ck = (*plain).clone();
        ck.ocsp = Some(vec![1, 2, 3]);
        Entry {
            plain,
            not_after: None,
            stapled: Some((Arc::new(ck), until)),
        }
    }

    #[test]
    fn a_response_is_stapled_until_its_next_update() {
        let now = SystemTime::now();
        assert!(entry(None).current().ocsp.is_some());
        let fresh = entry(Some(now + Duration::from_secs(60)));
        assert_eq!(fresh.current().ocsp.as_deref(), Some(&[1u8, 2, 3][..]));
        // Past nextUpdate: the same certificate without the response.
        let stale = entry(Some(now - Duration::from_secs(1)));
        assert!(stale.current().ocsp.is_none());
        assert_eq!(stale.current().cert, stale.plain.cert);
    }

    #[test]
    fn a_wildcard_entry_covers_one_label() {
        assert!(covers(".example.test", "a.example.test"));
        assert!(!covers(".example.test", "x.b.example.test"));
        assert!(!covers(".example.test", ".example.test"));
        assert!(!covers(".example.test", "example.test"));
        assert!(!covers(".example.test", "aexample.test"));
    }
}
