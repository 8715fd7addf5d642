//! Certificates on disk: loading PEM chains and keys (PKCS#8, PKCS#1, SEC1) into
//! rustls form, stapled OCSP responses ([`ocsp`]), and writing self-signed
//! development certificates (`gen-cert`).

pub mod ocsp;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("certificate {cert} and key {key} do not match: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot use OCSP response {path}: {reason}")]
    Ocsp { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot make TLS session ticket keys: {0}")]
    Tickets(rustls::Error),
}

/// Loads a PEM chain and key and checks they belong together. The reasons in
/// the errors are short sentences for operators (`check` prints them after the
/// config position of the file at fault), never library debug output.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    load_pair(cert, key).map(|(ck, _)| Arc::new(ck))
}

/// [`load_certified_key`], also returning the private key as read: a rustls
/// client config (mTLS to upstreams) takes the chain and the key itself.
pub fn load_chain_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    load_pair(cert, key).map(|(ck, der)| (ck.cert, der))
}

fn load_pair(cert: &Path, key: &Path) -> Result<(CertifiedKey, PrivateKeyDer<'static>), CertError> {
    let cert_err = |reason: String| CertError::Cert {
        path: cert.into(),
        reason,
    };
    let key_err = |reason: String| CertError::Key {
        path: key.into(),
        reason,
    };
    let chain_pem = crate::fsread::read(cert)
        .map_err(|e| cert_err(pem_reason(&pem::Error::Io(e), "CERTIFICATE")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(pem_reason(&e, "CERTIFICATE")))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_err(
            "no PEM CERTIFICATE block found (empty, or not a PEM certificate file)".into(),
        ));
    };
    if rustls::server::ParsedCertificate::try_from(leaf).is_err() {
        return Err(cert_err(
            "the first CERTIFICATE block is not a valid X.509 certificate".into(),
        ));
    }
    let key_pem = crate::fsread::read(key)
        .map_err(|e| key_err(pem_reason(&pem::Error::Io(e), "PRIVATE KEY")))?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_err(pem_reason(&e, "PRIVATE KEY")))?;
    let signing = aws_lc_rs::sign::any_supported_type(&der).map_err(|_| {
        key_err("the PRIVATE KEY block is not a usable RSA, ECDSA or Ed25519 key".into())
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| CertError::Mismatch {
        cert: cert.into(),
        key: key.into(),
        reason: match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the certificate's public key is not the private key's".into()
            }
            _ => "cannot tell whether the certificate's public key is the private key's".into(),
        },
    })?;
    Ok((ck, der))
}

/// When the certificate stops being valid (its `notAfter`), read from the DER
/// with yasna like the OCSP responses (`wsgate_tls_cert_expiry_seconds`).
/// `None` for DER that is not an X.509 certificate.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    validity(cert).map(|(_, until)| until)
}

/// The certificate's `notBefore` and `notAfter` (ACME renewal is scheduled
/// from its lifetime). `None` for DER that is not an X.509 certificate.
pub fn validity(
    cert: &CertificateDer<'_>,
) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    use yasna::tags::TAG_UTCTIME;
    use yasna::BERReader;
    fn time(t: BERReader<'_, '_>) -> yasna::ASN1Result<i64> {
        if t.lookahead_tag()? == TAG_UTCTIME {
            Ok(t.read_utctime()?.datetime().unix_timestamp())
        } else {
            Ok(t.read_generalized_time()?.datetime().unix_timestamp())
        }
    }
    // Validity ::= SEQUENCE { notBefore, notAfter }
    let der = tbs_field(cert, TBS_VALIDITY)?;
    let (from, until) = yasna::parse_der(&der, |r| {
        r.read_sequence(|r| Ok((time(r.next())?, time(r.next())?)))
    })
    .ok()?;
    let at = |secs: i64| {
        let secs = u64::try_from(secs).unwrap_or(0);
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    };
    Some((at(from), at(until)))
}

/// A certificate's subjectPublicKeyInfo, whole (its DER SEQUENCE).
pub fn spki(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    tbs_field(cert, TBS_SPKI)
}

/// Positions in tbsCertificate, after its optional version: serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo.
const TBS_VALIDITY: usize = 3;
const TBS_SPKI: usize = 5;

/// The DER of field `index` of a certificate's tbsCertificate.
// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { version [0] OPTIONAL,
//     serialNumber, signature, issuer, validity, subject,
//     subjectPublicKeyInfo, ... }, signatureAlgorithm, signatureValue }
fn tbs_field(cert: &CertificateDer<'_>, index: usize) -> Option<Vec<u8>> {
    use yasna::Tag;
    yasna::parse_der(cert.as_ref(), |r| {
        r.read_sequence(|r| {
            let field = r.next().read_sequence(|r| {
                r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                for _ in 0..index {
                    r.next().read_der()?;
                }
                let field = r.next().read_der()?;
                // The fields after it: unique ids, extensions.
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(field)
            })?;
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(field)
        })
    })
    .ok()
}

/// The system's trust roots (rustls-native-certs: the OS store, or the
/// files `SSL_CERT_FILE` / `SSL_CERT_DIR` name). Unparsable entries are
/// skipped, as every TLS client on the system skips them; the store may be
/// empty.
pub fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "skipping a system trust root");
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    roots
}

/// Reads a DER OCSP response file (`[listener.tls] ocsp`) and checks it is
/// one that can be stapled; whether it is still fresh is the caller's call.
pub fn load_ocsp(path: &Path) -> Result<ocsp::OcspResponse, CertError> {
    let bad = |reason: String| CertError::Ocsp {
        path: path.into(),
        reason,
    };
    let der = crate::fsread::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    ocsp::OcspResponse::parse(der).map_err(|e| bad(e.to_string()))
}

/// An operator's sentence for a PEM reading error (`what`: the block wanted).
fn pem_reason(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::Io(io) => format!("cannot read it: {io}"),
        pem::Error::NoItemsFound => {
            format!("no PEM {what} block found (empty, or not a PEM {what} file)")
        }
        pem::Error::MissingSectionEnd { .. } => {
            "a PEM block has no matching \"-----END\" line".into()
        }
        pem::Error::IllegalSectionStart { .. } => "a PEM \"-----BEGIN\" line is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM block is not valid base64".into(),
        other => other.to_string(),
    }
}

/// A generated certificate in PEM form.
pub struct GeneratedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a self-signed certificate for `hosts` (DNS names or IP literals).
pub fn generate_self_signed(hosts: &[String]) -> Result<GeneratedCert, CertError> {
    let ck = rcgen::generate_simple_self_signed(hosts.to_vec())?;
    Ok(GeneratedCert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    })
}

/// Writes `localhost.crt` and `localhost.key` under `dir` (the key readable by its
/// owner only) and returns their paths.
pub fn write_dev_cert(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), CertError> {
    let g = generate_self_signed(hosts)?;
    std::fs::create_dir_all(dir).map_err(|e| CertError::Write {
        path: dir.into(),
        source: e,
    })?;
    let cert = dir.join("localhost.crt");
    let key = dir.join("localhost.key");
    std::fs::write(&cert, g.cert_pem).map_err(|e| CertError::Write {
        path: cert.clone(),
        source: e,
    })?;
    write_private(&key, g.key_pem.as_bytes()).map_err(|e| CertError::Write {
        path: key.clone(),
        source: e,
    })?;
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A fresh file, never the old one (`gen-cert --force`): `mode` applies
    // only to a file it creates, and a symlink would take the key
    // elsewhere. `create_new` refuses both.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    /// A key written over a readable file is made owner-only (the TLS
    /// review: `gen-cert --force` left a new key 0644).
    #[test]
    fn a_key_written_over_a_loose_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("localhost.key");
        std::fs::write(&key, "old").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        super::write_dev_cert(dir.path(), &["localhost".into()]).expect("written");
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn cert_until(not_after: Option<(i32, u8, u8)>) -> rustls_pki_types::CertificateDer<'static> {
        let mut p = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        if let Some((y, m, d)) = not_after {
            p.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn not_after_reads_utc_and_generalized_times() {
        // 2030-01-02: UTCTime.
        let t = super::not_after(&cert_until(Some((2030, 1, 2)))).unwrap();
        assert_eq!(
            t,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_542_400)
        );
        // rcgen's default, 4096-01-01: GeneralizedTime (after 2049).
        let t = super::not_after(&cert_until(None)).unwrap();
        assert!(t > SystemTime::UNIX_EPOCH + Duration::from_secs(60_000_000_000));
        assert_eq!(super::not_after(&vec![0x30, 0x00].into()), None);
    }
}
