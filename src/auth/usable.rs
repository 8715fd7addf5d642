//! Whether a key can ever verify a token here. jsonwebtoken (over aws-lc-rs)
//! loads RSA keys of any size and EC keys on any curve, and finds out only
//! at request time that no token passes: aws-lc-rs verifies RSA of 2048 to
//! 8192 bits and ECDSA on P-256 and P-384. Checked at load instead, so such
//! a key is a config error naming it (docs/auth.md), as a short HMAC secret
//! already is.

use std::ops::RangeInclusive;

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{DecodingKey, DecodingKeyKind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};

/// Shortest HMAC secret accepted (an `hmac_secret` or a JWKS `oct` key):
/// RFC 7518 §3.2 asks for a key at least as long as the hash (32 bytes for
/// HS256); shorter keys are brute-forceable.
pub const MIN_SECRET_LEN: usize = 32;

/// RSA modulus sizes aws-lc-rs verifies (`RSA_PKCS1_2048_8192_*`,
/// `RSA_PSS_2048_8192_*`).
const RSA_BITS: RangeInclusive<usize> = 2048..=8192;
const P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const P384: &[u64] = &[1, 3, 132, 0, 34];

/// Why a PEM key (`pem` as read, `key` as jsonwebtoken loaded it) cannot
/// verify anything, if it cannot.
pub fn pem_key(pem: &[u8], key: &DecodingKey) -> Result<(), String> {
    match key.kind() {
        DecodingKeyKind::SecretOrDer(der) if key.family() == jsonwebtoken::AlgorithmFamily::Rsa => {
            rsa_bits(&pkcs1_modulus(der)?)
        }
        _ if key.family() == jsonwebtoken::AlgorithmFamily::Ec => ec_curve(pem),
        _ => Ok(()),
    }
}

/// The same for a JWKS key; an HMAC (`oct`) key is held to the length an
/// `hmac_secret` is.
pub fn jwk(jwk: &Jwk) -> Result<(), String> {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => rsa_bits(&b64url(&p.n)?),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 | EllipticCurve::P384 => Ok(()),
            ref c => Err(format!(
                "an EC key on {} cannot verify tokens here (P-256 and P-384 can)",
                curve_name(c)
            )),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Ok(()),
            ref c => Err(format!(
                "an OKP key on {} cannot verify tokens here (Ed25519 can)",
                curve_name(c)
            )),
        },
        AlgorithmParameters::OctetKey(p) => {
            let len = b64url(&p.value)?.len();
            if len < MIN_SECRET_LEN {
                return Err(format!(
                    "the HMAC key is {len} bytes; at least {MIN_SECRET_LEN} are required"
                ));
            }
            Ok(())
        }
    }
}

/// A curve as JWK spells it.
fn curve_name(c: &EllipticCurve) -> &'static str {
    match c {
        EllipticCurve::P256 => "P-256",
        EllipticCurve::P384 => "P-384",
        EllipticCurve::P521 => "P-521",
        EllipticCurve::Ed25519 => "Ed25519",
    }
}

fn b64url(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "a key value is not base64url".to_string())
}

/// An RSA modulus (big-endian, maybe with leading zeros) of a size that
/// verifies.
fn rsa_bits(modulus: &[u8]) -> Result<(), String> {
    let n = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => &[],
    };
    let bits = n.len() * 8 - n.first().map_or(0, |b| b.leading_zeros() as usize);
    if RSA_BITS.contains(&bits) {
        return Ok(());
    }
    Err(format!(
        "an RSA key of {bits} bits cannot verify tokens here ({} to {} bits can)",
        RSA_BITS.start(),
        RSA_BITS.end()
    ))
}

/// The modulus of a PKCS#1 `RSAPublicKey` (what jsonwebtoken keeps of an RSA
/// PEM key).
fn pkcs1_modulus(der: &[u8]) -> Result<Vec<u8>, String> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let (n, _) = r.next().read_bigint_bytes()?;
            let _e = r.next().read_bigint_bytes()?;
            Ok(n)
        })
    })
    .map_err(|_| {
        "the RSA key is not a public key (a private key belongs with the signer)".to_string()
    })
}

/// The named curve of an EC `PUBLIC KEY` or `CERTIFICATE` PEM (jsonwebtoken
/// takes either), if one that verifies.
fn ec_curve(pem: &[u8]) -> Result<(), String> {
    let spki = match SubjectPublicKeyInfoDer::from_pem_slice(pem) {
        Ok(spki) => spki.as_ref().to_vec(),
        Err(_) => CertificateDer::from_pem_slice(pem)
            .ok()
            .and_then(|c| crate::certs::spki(&c))
            .ok_or("the EC key is neither a PUBLIC KEY nor a CERTIFICATE PEM")?,
    };
    let curve = yasna::parse_der(&spki, |r| {
        r.read_sequence(|r| {
            let curve = r.next().read_sequence(|r| {
                let _ec_public_key = r.next().read_oid()?;
                r.next().read_oid()
            })?;
            let _point = r.next().read_bitvec_bytes()?;
            Ok(curve)
        })
    })
    .map_err(|_| "the EC key names no curve".to_string())?;
    named(curve.components())
}

fn named(curve: &[u64]) -> Result<(), String> {
    if curve == P256 || curve == P384 {
        return Ok(());
    }
    let name = match curve {
        [1, 3, 132, 0, 35] => "P-521".to_string(),
        [1, 3, 132, 0, 10] => "secp256k1".to_string(),
        other => other
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    };
    Err(format!(
        "an EC key on {name} cannot verify tokens here (P-256 and P-384 can)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_pem(alg: &'static rcgen::SignatureAlgorithm) -> String {
        rcgen::KeyPair::generate_for(alg)
            .expect("key")
            .public_key_pem()
    }

    fn checked_pem(pem: &str) -> Result<(), String> {
        let key = DecodingKey::from_rsa_pem(pem.as_bytes())
            .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()))
            .expect("jsonwebtoken loads it");
        pem_key(pem.as_bytes(), &key)
    }

    /// A PKCS#1 `RSA PUBLIC KEY` PEM with a modulus of `bits` bits (not a
    /// real key: only its size is looked at).
    fn rsa_pem(bits: usize) -> String {
        let mut n = vec![0xC5u8; bits / 8];
        n.insert(0, 0);
        let der = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_bigint_bytes(&n, true);
                w.next().write_u32(65537);
            })
        });
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN RSA PUBLIC KEY-----\n{b64}\n-----END RSA PUBLIC KEY-----\n")
    }

    #[test]
    fn pem_keys_that_cannot_verify_are_named() {
        assert_eq!(checked_pem(&ec_pem(&rcgen::PKCS_ECDSA_P256_SHA256)), Ok(()));
        assert_eq!(checked_pem(&ec_pem(&rcgen::PKCS_ECDSA_P384_SHA384)), Ok(()));
        let e = checked_pem(&ec_pem(&rcgen::PKCS_ECDSA_P521_SHA512)).unwrap_err();
        assert!(e.contains("on P-521"), "{e}");
        // Certificates, which jsonwebtoken reads the public key of (the
        // review: a P-256 certificate was refused).
        for (alg, ok) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, true),
            (&rcgen::PKCS_ECDSA_P521_SHA512, false),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).expect("key");
            let params = rcgen::CertificateParams::new(vec!["signer".into()]).expect("params");
            let cert = params.self_signed(&key).expect("cert").pem();
            assert_eq!(checked_pem(&cert).is_ok(), ok, "{cert}");
        }
        assert_eq!(checked_pem(&rsa_pem(2048)), Ok(()));
        assert_eq!(checked_pem(&rsa_pem(4096)), Ok(()));
        let e = checked_pem(&rsa_pem(512)).unwrap_err();
        assert!(e.contains("512 bits"), "{e}");
    }

    fn jwk_of(json: &str) -> Jwk {
        serde_json::from_str(json).expect("jwk")
    }

    #[test]
    fn jwks_keys_that_cannot_verify_or_are_guessable_are_named() {
        let oct = |bytes: usize| {
            let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![7u8; bytes]);
            jwk(&jwk_of(&format!(r#"{{"kty":"oct","k":"{k}"}}"#)))
        };
        assert!(oct(0).unwrap_err().contains("0 bytes"));
        assert!(oct(1).unwrap_err().contains("1 bytes"));
        assert_eq!(oct(32), Ok(()));
        let p521 = jwk_of(
            r#"{"kty":"EC","crv":"P-521","x":"AekpBQ8ST8a8VcfVOTNl353vSrDCLLJXmPk06wTjxrrjcBpXp5EOnYG_NjFZ6OvLFV1jSfS9tsz4qUxcWceqwQGk","y":"ADSmRA43Z1DSNx_RvcLI87cdL07l6jQyyBXMoxVg_l2Th-x3S1WDhjDly79ajL4Kkd0AZMaZmh9ubmf63e3kyMj2"}"#,
        );
        assert!(jwk(&p521).unwrap_err().contains("P-521"));
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xC5u8; 64]);
        let rsa512 = jwk_of(&format!(r#"{{"kty":"RSA","n":"{n}","e":"AQAB"}}"#));
        assert!(jwk(&rsa512).unwrap_err().contains("512 bits"));
    }
}
