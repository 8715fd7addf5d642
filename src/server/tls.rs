//! TLS for listeners: a rustls `ServerConfig` per TLS listener with TLS 1.2/1.3
//! only, ALPN `h2` + `http/1.1`, and a certificate chosen by SNI (exact names
//! first, then the longest matching `*.wildcard`, else the listener's default),
//! and, with `client_ca`, client certificates verified against that CA (mTLS).

use std::fmt;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::certs::{load_certified_key, CertError};
use crate::config::{HostPattern, TlsConfig};

/// Picks a certificate by SNI.
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: Vec<(String, Arc<CertifiedKey>)>,
    /// Sorted longest suffix first so the most specific wildcard wins.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
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
    pub fn load(cfg: &TlsConfig) -> Result<Self, CertError> {
        let default = load_certified_key(&cfg.default.cert, &cfg.default.key)?;
        let mut exact = Vec::new();
        let mut wildcard = Vec::new();
        for (host, paths) in &cfg.sni {
            let ck = load_certified_key(&paths.cert, &paths.key)?;
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
        })
    }

    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(|s| s.to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some((_, ck)) = self.exact.iter().find(|(h, _)| *h == name) {
            return ck.clone();
        }
        if let Some((_, ck)) = self
            .wildcard
            .iter()
            .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
        {
            return ck.clone();
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Builds the rustls config for one TLS listener, loading every certificate.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let resolver = SniResolver::load(cfg)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CertError::Cert {
            path: cfg.default.cert.clone(),
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(client_verifier(cfg, provider.clone())?)
        .with_cert_resolver(Arc::new(resolver));
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

/// mTLS: verifies client certificates against `client_ca` (rustls'
/// `WebPkiClientVerifier`, the same provider as the rest of TLS); without
/// `client_ca`, no certificate is asked for.
fn client_verifier(
    cfg: &TlsConfig,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, CertError> {
    let Some(ca) = &cfg.client_auth else {
        return Ok(WebPkiClientVerifier::no_client_auth());
    };
    let bad = |reason: String| CertError::Cert {
        path: ca.ca.clone(),
        reason,
    };
    let roots = crate::config::load_roots(&ca.ca).map_err(bad)?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if ca.required {
        builder
    } else {
        // "optional": no certificate is fine; a presented one must still verify.
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| bad(e.to_string()))
}
