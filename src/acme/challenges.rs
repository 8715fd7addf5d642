//! Answers to the CA's challenges while an order is open: http-01 key
//! authorizations by token (served by `proxy` on plain listeners under
//! [`HTTP01_PREFIX`]) and tls-alpn-01 validation certificates by domain
//! (served by `server::tls` to handshakes offering [`ACME_TLS_ALPN`]). One
//! store per process; entries live only as long as their order.

use std::sync::Arc;

use dashmap::DashMap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::AcmeError;

/// The ALPN protocol of tls-alpn-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where http-01 challenges are fetched (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The pending challenge answers.
#[derive(Default)]
pub struct Challenges {
    /// token → key authorization.
    http: DashMap<String, String>,
    /// domain → validation certificate.
    tls: DashMap<String, Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("http", &self.http.len())
            .field("tls", &self.tls.len())
            .finish()
    }
}

impl Challenges {
    /// The body to answer `GET {path}` with, when `path` is a pending
    /// http-01 challenge.
    pub fn http01(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.http.get(token).map(|ka| ka.value().clone())
    }

    /// The validation certificate for a tls-alpn-01 handshake naming `sni`.
    pub fn tls_alpn01(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        self.tls
            .get(&sni.to_ascii_lowercase())
            .map(|c| c.value().clone())
    }

    pub(super) fn add_http01(self: &Arc<Self>, token: &str, key_auth: &str) -> Pending {
        self.http.insert(token.to_string(), key_auth.to_string());
        Pending {
            store: self.clone(),
            which: Which::Http(token.to_string()),
        }
    }

    /// Makes and installs the validation certificate for `domain`: self-signed,
    /// naming only `domain`, with the critical acmeIdentifier extension
    /// holding SHA-256 of the key authorization.
    pub(super) fn add_tls_alpn01(
        self: &Arc<Self>,
        domain: &str,
        key_auth_digest: &[u8],
    ) -> Result<Pending, AcmeError> {
        let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
        params.custom_extensions =
            vec![rcgen::CustomExtension::new_acme_identifier(key_auth_digest)];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
            .map_err(|e| AcmeError::Certificate(e.to_string()))?;
        let ck = CertifiedKey::new(vec![cert.der().clone()], signing);
        let domain = domain.to_ascii_lowercase();
        self.tls.insert(domain.clone(), Arc::new(ck));
        Ok(Pending {
            store: self.clone(),
            which: Which::Tls(domain),
        })
    }
}

enum Which {
    Http(String),
    Tls(String),
}

/// One installed answer; removed when dropped (the order ended, however).
pub(super) struct Pending {
    store: Arc<Challenges>,
    which: Which,
}

impl Drop for Pending {
    fn drop(&mut self) {
        match &self.which {
            Which::Http(token) => {
                self.store.http.remove(token);
            }
            Which::Tls(domain) => {
                self.store.tls.remove(domain);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_exist_while_pending() {
        let c = Arc::new(Challenges::default());
        let p = c.add_http01("tok", "tok.thumb");
        assert_eq!(
            c.http01("/.well-known/acme-challenge/tok").as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(c.http01("/.well-known/acme-challenge/other"), None);
        assert_eq!(c.http01("/tok"), None);
        let t = c
            .add_tls_alpn01("A.example.test", &[7u8; 32])
            .expect("cert");
        let ck = c.tls_alpn01("a.example.test").expect("installed");
        assert_eq!(ck.cert.len(), 1);
        drop((p, t));
        assert_eq!(c.http01("/.well-known/acme-challenge/tok"), None);
        assert!(c.tls_alpn01("a.example.test").is_none());
    }
}
