//! `[listener.tls] client_ca` / `client_auth` (mTLS, docs/auth.md) →
//! [`ClientAuthConfig`]. The CA file is read and every certificate in it
//! parsed here, so `wsgate check` points at the key (`PATH:LINE:COL`) rather
//! than failing later while the listener's TLS config is built.

use std::ops::Range;
use std::path::PathBuf;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::file::TlsFile;

/// Client certificates on one TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthConfig {
    /// PEM file of the CA certificates client certificates must chain to.
    pub ca: PathBuf,
    /// `required`: no valid certificate, no handshake. `optional`: a client
    /// may present none (an invalid one still fails the handshake).
    pub required: bool,
}

/// Reads the listener's `client_ca`/`client_auth`; problems go to `issues`.
pub(super) fn parse(
    t: &TlsFile,
    key: &str,
    issues: &mut Vec<(Range<usize>, String)>,
) -> Option<ClientAuthConfig> {
    let required = match &t.client_auth {
        None => true,
        Some(v) => match v.get_ref().as_str() {
            "required" => true,
            "optional" => false,
            other => {
                issues.push((
                    v.span(),
                    format!(
                        "{key}.client_auth: {other:?} is not one of \"required\", \"optional\""
                    ),
                ));
                return None;
            }
        },
    };
    let Some(ca) = &t.client_ca else {
        if let Some(v) = &t.client_auth {
            issues.push((
                v.span(),
                format!(
                    "{key}.client_auth: needs `client_ca` (the CA client certificates chain to)"
                ),
            ));
        }
        return None;
    };
    let path = PathBuf::from(ca.get_ref());
    match load_roots(&path) {
        Ok(_) => Some(ClientAuthConfig { ca: path, required }),
        Err(why) => {
            issues.push((
                ca.span(),
                format!("{key}.client_ca: {:?}: {why}", ca.get_ref()),
            ));
            None
        }
    }
}

/// Why a CA file gives no trust anchors (the path is the caller's to say).
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("cannot read: {0}")]
    Read(rustls::pki_types::pem::Error),
    #[error("not a PEM certificate file: {0}")]
    Pem(rustls::pki_types::pem::Error),
    #[error("no CERTIFICATE block found")]
    Empty,
    #[error("certificate #{n} is not usable as a CA: {why}", n = .0, why = crate::tls_reason::describe_rustls(.1))]
    NotCa(usize, rustls::Error),
}

/// The trust anchors in a PEM file: every `CERTIFICATE` block, each parsed.
/// Shared with the listener's TLS setup so both read the file the same way.
pub fn load_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, RootsError> {
    let pem = crate::fsread::read(path)
        .map_err(|e| RootsError::Read(rustls::pki_types::pem::Error::Io(e)))?;
    roots_from_pem(&pem)
}

/// [`load_roots`] of a PEM file's bytes, already read.
pub fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, RootsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(RootsError::Pem)?;
    roots_of(certs)
}

fn roots_of(certs: Vec<CertificateDer<'static>>) -> Result<rustls::RootCertStore, RootsError> {
    if certs.is_empty() {
        return Err(RootsError::Empty);
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots.add(c).map_err(|e| RootsError::NotCa(i + 1, e))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn check(tls_extra: &str, dir: &Path) -> Result<crate::config::Config, String> {
        let g = crate::certs::generate_self_signed(&["localhost".into()]).unwrap();
        let (crt, key) = (dir.join("s.crt"), dir.join("s.key"));
        std::fs::write(&crt, g.cert_pem).unwrap();
        std::fs::write(&key, g.key_pem).unwrap();
        let text = format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert = {:?}\nkey = {:?}\n{tls_extra}",
            crt.display(),
            key.display()
        );
        crate::config::parse(Path::new("t.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn client_auth_defaults_to_required_and_checks_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let g = crate::certs::generate_self_signed(&["ca".into()]).unwrap();
        std::fs::write(&ca, g.cert_pem).unwrap();
        let cfg = check(&format!("client_ca = {:?}\n", ca.display()), dir.path()).unwrap();
        let tls = cfg.listeners[0].tls.as_ref().unwrap();
        assert!(tls.client_auth.as_ref().unwrap().required);
        let cfg = check(
            &format!(
                "client_ca = {:?}\nclient_auth = \"optional\"\n",
                ca.display()
            ),
            dir.path(),
        )
        .unwrap();
        assert!(
            !cfg.listeners[0]
                .tls
                .as_ref()
                .unwrap()
                .client_auth
                .as_ref()
                .unwrap()
                .required
        );
        assert!(check("", dir.path()).unwrap().listeners[0]
            .tls
            .as_ref()
            .unwrap()
            .client_auth
            .is_none());
    }

    #[test]
    fn a_bad_ca_is_reported_at_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate\n").unwrap();
        let e = check(&format!("client_ca = {:?}\n", bad.display()), dir.path()).unwrap_err();
        assert!(e.contains("t.toml:6:13: listener[0].tls.client_ca:"), "{e}");
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = check(
            &format!("client_ca = {:?}\n", garbage.display()),
            dir.path(),
        )
        .unwrap_err();
        assert!(e.contains("t.toml:6:13: listener[0].tls.client_ca:"), "{e}");
        assert!(e.contains("not usable as a CA"), "{e}");
        let e = check("client_ca = \"/nonexistent/ca.pem\"\n", dir.path()).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let e = check("client_auth = \"optional\"\n", dir.path()).unwrap_err();
        assert!(
            e.contains("t.toml:6:15: listener[0].tls.client_auth: needs `client_ca`"),
            "{e}"
        );
        let e = check("client_auth = \"maybe\"\n", dir.path()).unwrap_err();
        assert!(e.contains("\"maybe\" is not one of"), "{e}");
    }
}
