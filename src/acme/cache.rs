//! The cache directory of one ACME setting. Layout (docs/tls.md#acme):
//!
//! ```text
//! {cache}/account-{D}.json   the account: id, directory, private key (0600)
//!                            (`.json.old`: one the CA stopped knowing)
//! {cache}/cert-{C}.pem       the certificate chain last issued
//! {cache}/cert-{C}.key       its private key (0600)
//! ```
//! `D` names the directory URL and `C` the directory and the domain list
//! (16 hex digits of SHA-256 each), so one cache may serve several settings
//! and a changed domain list orders a new certificate. Files are written to
//! a temporary name and renamed, so a crash never leaves half a file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use instant_acme::AccountCredentials;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::{AcmeError, Issued};
use crate::config::AcmeConfig;

pub(super) struct Cache {
    dir: PathBuf,
    account: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Cache {
    pub(super) fn new(cfg: &AcmeConfig) -> Self {
        let d = short_hash(&[&cfg.directory]);
        let mut parts = vec![cfg.directory.as_str()];
        parts.extend(cfg.domains.iter().map(String::as_str));
        let c = short_hash(&parts);
        Self {
            account: cfg.cache.join(format!("account-{d}.json")),
            cert: cfg.cache.join(format!("cert-{c}.pem")),
            key: cfg.cache.join(format!("cert-{c}.key")),
            dir: cfg.cache.clone(),
        }
    }

    /// The stored account, if any.
    pub(super) fn load_account(&self) -> Result<Option<AccountCredentials>, AcmeError> {
        let Some(text) = read_opt(&self.account)? else {
            return Ok(None);
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| AcmeError::CacheContent {
                path: self.account.clone(),
                reason: format!(
                    "not an account file ({e}); move it away to register a new account"
                ),
            })
    }

    pub(super) fn save_account(&self, creds: &AccountCredentials) -> Result<(), AcmeError> {
        let json = serde_json::to_vec_pretty(creds).map_err(|e| AcmeError::CacheContent {
            path: self.account.clone(),
            reason: e.to_string(),
        })?;
        self.write(&self.account, &json)
    }

    /// Moves the account file aside (to `…json.old`): the CA does not know
    /// that account any more, and the next order registers a new one.
    pub(super) fn forget_account(&self) -> Result<(), AcmeError> {
        let old = self.account.with_extension("json.old");
        std::fs::rename(&self.account, &old).map_err(|source| AcmeError::Cache {
            path: self.account.clone(),
            source,
        })
    }

    /// The stored certificate, if any.
    pub(super) fn load_cert(&self) -> Result<Option<Issued>, AcmeError> {
        let (Some(chain), Some(key)) = (read_opt(&self.cert)?, read_opt(&self.key)?) else {
            return Ok(None);
        };
        parse_issued(&chain, &key)
            .map(Some)
            .map_err(|reason| AcmeError::CacheContent {
                path: self.cert.clone(),
                reason,
            })
    }

    /// Checks a newly issued chain and key, stores them, and returns them
    /// ready to serve.
    #[cfg(test)]
    pub(super) fn save_cert(&self, chain_pem: &str, key_pem: &str) -> Result<Issued, AcmeError> {
        let issued = parse_issued(chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(AcmeError::Certificate)?;
        self.store_cert(chain_pem, key_pem)?;
        Ok(issued)
    }

    /// Stores a chain and key already checked ([`parse_issued`]).
    pub(super) fn store_cert(&self, chain_pem: &str, key_pem: &str) -> Result<(), AcmeError> {
        self.write(&self.key, key_pem.as_bytes())?;
        self.write(&self.cert, chain_pem.as_bytes())
    }

    /// Writes `data` to `path` (owner-only) through a temporary file.
    fn write(&self, path: &Path, data: &[u8]) -> Result<(), AcmeError> {
        let err = |source| AcmeError::Cache {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(|source| AcmeError::Cache {
            path: self.dir.clone(),
            source,
        })?;
        let tmp = path.with_extension("tmp");
        // A fresh file, never one left behind (by a crash, or planted): an
        // old one keeps its owner and mode, and a symlink would take the
        // key elsewhere. `create_new` refuses both.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(data).and_then(|()| f.sync_all()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, AcmeError> {
    match crate::fsread::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AcmeError::Cache {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A PEM chain and key as a servable certificate with its lifetime; the
/// reason is a sentence for operators.
pub(super) fn parse_issued(chain: &[u8], key: &[u8]) -> Result<Issued, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<_, _>>()
        .map_err(|_| "the certificate chain is not valid PEM".to_string())?;
    let leaf = chain.first().ok_or("the certificate chain is empty")?;
    let (not_before, not_after) =
        crate::certs::validity(leaf).ok_or("the leaf certificate is not valid X.509")?;
    let der = PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| "the private key is not a PEM private key".to_string())?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|_| "the private key is not a usable RSA, ECDSA or Ed25519 key".to_string())?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|_| "the certificate is not the private key's".to_string())?;
    Ok(Issued {
        key: Arc::new(ck),
        not_before,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, domains: &[&str]) -> AcmeConfig {
        super::super::test_config(dir.join("acme"), domains)
    }

    #[test]
    fn certificates_round_trip_per_domain_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Cache::new(&cfg(dir.path(), &["a.test"]));
        assert!(a.load_cert().expect("empty").is_none());
        assert!(a.load_account().expect("empty").is_none());
        let g = crate::certs::generate_self_signed(&["a.test".into()]).expect("cert");
        let issued = a.save_cert(&g.cert_pem, &g.key_pem).expect("saved");
        let back = a.load_cert().expect("read").expect("stored");
        assert_eq!(back.key.cert, issued.key.cert);
        assert!(back.not_after > back.not_before);
        let mode = std::fs::metadata(&a.key).expect("key").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Another domain list: another certificate, the same account file.
        let b = Cache::new(&cfg(dir.path(), &["b.test"]));
        assert!(b.load_cert().expect("empty").is_none());
        assert_eq!(a.account, b.account);
        // A temporary file left behind readable by others does not make the
        // key so (the TLS review: `mode` applies only to a file it creates).
        use std::os::unix::fs::PermissionsExt;
        let tmp = a.key.with_extension("tmp");
        std::fs::write(&tmp, "left").expect("tmp");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        a.save_cert(&g.cert_pem, &g.key_pem).expect("saved again");
        let mode = std::fs::metadata(&a.key).expect("key").permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
        // A symlink at the temporary name does not take the key elsewhere.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").expect("write");
        std::os::unix::fs::symlink(&elsewhere, &tmp).expect("symlink");
        a.save_cert(&g.cert_pem, &g.key_pem).expect("saved again");
        assert_eq!(
            std::fs::read_to_string(&elsewhere).expect("read"),
            "untouched"
        );
        assert!(!std::fs::symlink_metadata(&a.key).expect("key").is_symlink());
        // A chain that does not belong to the key is refused before it is stored.
        let other = crate::certs::generate_self_signed(&["a.test".into()]).expect("cert");
        assert!(b.save_cert(&g.cert_pem, &other.key_pem).is_err());
        assert!(b.load_cert().expect("still empty").is_none());
    }
}
