//! A verified TLS client certificate as upstreams are told about it (mTLS,
//! docs/auth.md): its subject as an RFC 4514 string and the SHA-256 fingerprint
//! of its DER, ready to send as `X-Client-Cert-Subject` /
//! `X-Client-Cert-Sha256`. A leaf: `server` builds one after the handshake,
//! `proxy` sets the headers.
//!
//! The subject is read with the small DER walk below rather than a full X.509
//! parser: rustls has already parsed and verified the certificate (webpki),
//! only the subject `Name` is needed, and `x509-parser` would add six crates
//! to the build for it. The walk is bounds-checked and never panics; a
//! subject it cannot read is left out (the fingerprint is always there).

use http::HeaderValue;
use sha2::{Digest, Sha256};

/// The client certificate of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// RFC 4514 form, e.g. `CN=alice,O=Example`; `None` if unreadable.
    pub subject: Option<HeaderValue>,
    /// Lower-case hex SHA-256 of the certificate's DER.
    pub sha256: HeaderValue,
}

impl ClientCert {
    /// From the end-entity certificate the client presented (DER).
    pub fn from_der(der: &[u8]) -> Self {
        let digest = Sha256::digest(der);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            subject: subject_of(der)
                .filter(|s| !s.is_empty())
                .and_then(|s| HeaderValue::from_str(&s).ok()),
            // Hex digits are always a valid header value.
            sha256: HeaderValue::from_str(&hex).unwrap_or(HeaderValue::from_static("")),
        }
    }
}

/// One DER element: its tag, and its contents and the whole encoding.
struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
    whole: &'a [u8],
}

/// Splits the first element off `input`. Only definite lengths (DER).
fn next(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    let body = input.get(head..end)?;
    let whole = input.get(..end)?;
    Some((Tlv { tag, body, whole }, input.get(end..)?))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The RFC 4514 string of a certificate's subject.
fn subject_of(cert: &[u8]) -> Option<String> {
    let (cert, _) = next(cert).filter(|(t, _)| t.tag == SEQUENCE)?;
    let (tbs, _) = next(cert.body).filter(|(t, _)| t.tag == SEQUENCE)?;
    let mut rest = tbs.body;
    // [0] EXPLICIT version, present in v2/v3 certificates.
    if rest.first() == Some(&0xa0) {
        rest = next(rest)?.1;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = next(rest)?.1;
    }
    let (subject, _) = next(rest).filter(|(t, _)| t.tag == SEQUENCE)?;
    name_to_string(subject.body)
}

/// A `Name` (a SEQUENCE of RDN SETs, given as its contents) in RFC 4514
/// form: the last RDN first, RDNs joined by `,`, multi-valued ones by `+`.
fn name_to_string(mut rdns: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while !rdns.is_empty() {
        let (set, rest) = next(rdns).filter(|(t, _)| t.tag == SET)?;
        rdns = rest;
        let mut atvs = set.body;
        let mut values = Vec::new();
        while !atvs.is_empty() {
            let (atv, rest) = next(atvs).filter(|(t, _)| t.tag == SEQUENCE)?;
            atvs = rest;
            let (oid, rest) = next(atv.body).filter(|(t, _)| t.tag == OID)?;
            let (value, _) = next(rest)?;
            values.push(format!(
                "{}={}",
                attribute_name(oid.body)?,
                attribute_value(&value)
            ));
        }
        parts.push(values.join("+"));
    }
    parts.reverse();
    Some(parts.join(","))
}

/// RFC 4514 §3's short names, else the dotted OID.
fn attribute_name(oid: &[u8]) -> Option<String> {
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x09] => "STREET",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return dotted(oid),
    };
    Some(short.to_string())
}

fn dotted(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut cur: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        cur = cur.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 != 0 {
            if i + 1 == oid.len() {
                return None;
            }
            continue;
        }
        if arcs.is_empty() {
            let first = (cur / 40).min(2);
            arcs.push(first);
            arcs.push(cur - first * 40);
        } else {
            arcs.push(cur);
        }
        cur = 0;
    }
    if arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// A value as RFC 4514 writes it: text for the ASCII-compatible string types
/// (escaped), `#` and the hex of its DER for anything else.
fn attribute_value(v: &Tlv<'_>) -> String {
    // UTF8String, PrintableString, IA5String.
    if matches!(v.tag, 0x0c | 0x13 | 0x16) {
        if let Ok(s) = std::str::from_utf8(v.body) {
            return escape(s);
        }
    }
    let mut out = String::from("#");
    for b in v.whole {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// RFC 4514 §2.4 escaping, plus `\XX` for every byte that is not visible
/// ASCII, so the result is always a plain header value. A space at either
/// end is `\20`: as `\ ` it could end the header, and HTTP strips a
/// header's trailing whitespace, leaving a lone backslash.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.len().saturating_sub(1);
    for (i, c) in s.char_indices() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\') || (i == 0 && c == '#');
        if c == ' ' && (i == 0 || i == last) {
            out.push_str("\\20");
        } else if special {
            out.push('\\');
            out.push(c);
        } else if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: rcgen::DistinguishedName) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
        p.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_in_rfc4514_order_with_escapes() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc.");
        dn.push(rcgen::DnType::CommonName, " alice+ü ");
        let der = cert_with(dn);
        let c = ClientCert::from_der(&der);
        assert_eq!(
            c.subject.unwrap(),
            "CN=\\20alice\\+\\C3\\BC\\20,O=Example\\, Inc.,C=DE"
        );
        let expected: String = Sha256::digest(&der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(c.sha256, expected.as_str());
        assert_eq!(c.sha256.len(), 64);
    }

    #[test]
    fn unknown_attributes_are_dotted() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            rcgen::DnValue::Ia5String("a@example.test".try_into().unwrap()),
        );
        let c = ClientCert::from_der(&cert_with(dn));
        assert_eq!(c.subject.unwrap(), "1.2.840.113549.1.9.1=a@example.test");
    }

    #[test]
    fn garbage_never_panics() {
        for der in [
            &b""[..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x03, 0x30, 0x01],
        ] {
            let c = ClientCert::from_der(der);
            assert!(c.subject.is_none());
            assert_eq!(c.sha256.len(), 64);
        }
        // Every truncation of a real certificate.
        let der = cert_with(rcgen::DistinguishedName::new());
        for n in 0..der.len() {
            let _ = ClientCert::from_der(&der[..n]);
        }
    }
}
