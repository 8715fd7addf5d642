//! Plain words for a failed TLS handshake, for the logs. rustls's own
//! `Display` prints many of its reasons with `Debug`
//! (`invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))`,
//! `received fatal alert: HandshakeFailure`), and every handshake the
//! listeners accept and every upstream connection reports through it.

use std::io;

use rustls::{CertificateError, Error};

/// Why a handshake failed: rustls's reason in words when the error carries
/// one (tokio-rustls wraps it in an `io::Error`), else the I/O error's own
/// text (a reset, an early EOF).
pub fn describe(e: &io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(tls) => describe_rustls(tls),
        None => e.to_string(),
    }
}

/// rustls's reason `e` in words.
pub fn describe_rustls(e: &Error) -> String {
    match e {
        Error::InvalidCertificate(c) => format!("certificate refused: {}", certificate(c)),
        Error::NoCertificatesPresented => "the peer sent no certificate".into(),
        Error::AlertReceived(a) => format!("the peer sent alert: {}", words(&format!("{a:?}"))),
        Error::PeerIncompatible(why) => {
            format!("the peer is incompatible: {}", words(&format!("{why:?}")))
        }
        Error::PeerMisbehaved(why) => {
            format!(
                "the peer broke the protocol: {}",
                words(&format!("{why:?}"))
            )
        }
        Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            "the peer sent a message out of turn".into()
        }
        Error::InvalidMessage(why) => {
            format!(
                "the peer sent a corrupt message: {}",
                words(&format!("{why:?}"))
            )
        }
        Error::InvalidCertRevocationList(why) => {
            format!("revocation list refused: {}", words(&format!("{why:?}")))
        }
        other => other.to_string(),
    }
}

/// rustls words the cases that carry context itself (a name, a date); the
/// others it prints with `Debug`, and webpki's own reasons (`Other`) too.
fn certificate(c: &CertificateError) -> String {
    match c {
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => not_valid_for(&expected.to_str(), presented),
        CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYetContext { .. }
        | CertificateError::ExpiredRevocationListContext { .. }
        | CertificateError::InvalidPurposeContext { .. } => c.to_string(),
        CertificateError::UnknownIssuer => "signed by an unknown authority".into(),
        CertificateError::Other(other) => words(&other.to_string()),
        other => words(&format!("{other:?}")),
    }
}

/// A name mismatch. rustls lists the certificate's names as webpki prints
/// them, with `Debug` (`DnsName("localhost")`, `IpAddress(127.0.0.1)`).
fn not_valid_for(expected: &str, presented: &[String]) -> String {
    let names: Vec<&str> = presented.iter().map(|n| name_of(n)).collect();
    if names.is_empty() {
        format!("not valid for \"{expected}\"; it names no host")
    } else {
        format!(
            "not valid for \"{expected}\"; it is valid for {}",
            names.join(", ")
        )
    }
}

fn name_of(debug: &str) -> &str {
    let unwrap = |prefix: &str, suffix: &str| debug.strip_prefix(prefix)?.strip_suffix(suffix);
    unwrap("DnsName(\"", "\")")
        .or_else(|| unwrap("IpAddress(", ")"))
        .unwrap_or(debug)
}

/// A bare identifier (`CaUsedAsEndEntity`, `UnknownCA`) as lowercase words
/// (`ca used as end entity`, `unknown ca`); anything else (a variant with
/// fields) as it is.
fn words(name: &str) -> String {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return name.to_owned();
    }
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        let starts_word = i > 0
            && c.is_ascii_uppercase()
            && (chars[i - 1].is_ascii_lowercase()
                || chars.get(i + 1).is_some_and(char::is_ascii_lowercase));
        if starts_word {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, OtherError};
    use std::sync::Arc;

    fn wrapped(e: Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[derive(Debug)]
    struct Webpki;
    impl std::fmt::Display for Webpki {
        // As webpki's errors print: their Debug name.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("CaUsedAsEndEntity")
        }
    }
    impl std::error::Error for Webpki {}

    #[test]
    fn reasons_read_as_words_not_debug() {
        let other = CertificateError::Other(OtherError(Arc::new(Webpki)));
        assert_eq!(
            describe(&wrapped(other.into())),
            "certificate refused: ca used as end entity"
        );
        assert_eq!(
            describe(&wrapped(CertificateError::UnknownIssuer.into())),
            "certificate refused: signed by an unknown authority"
        );
        assert_eq!(
            describe(&wrapped(CertificateError::BadSignature.into())),
            "certificate refused: bad signature"
        );
        assert_eq!(
            describe(&wrapped(Error::AlertReceived(
                AlertDescription::HandshakeFailure
            ))),
            "the peer sent alert: handshake failure"
        );
        assert_eq!(
            describe(&wrapped(Error::AlertReceived(AlertDescription::UnknownCA))),
            "the peer sent alert: unknown ca"
        );
    }

    #[test]
    fn a_name_mismatch_lists_the_names_as_words() {
        let mismatch = |presented: &[&str]| CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("api.internal").unwrap(),
            presented: presented.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            describe(&wrapped(
                mismatch(&["DnsName(\"localhost\")", "IpAddress(127.0.0.1)"]).into()
            )),
            "certificate refused: not valid for \"api.internal\"; it is valid for localhost, 127.0.0.1"
        );
        assert_eq!(
            describe(&wrapped(mismatch(&[]).into())),
            "certificate refused: not valid for \"api.internal\"; it names no host"
        );
    }

    #[test]
    fn other_errors_keep_their_text() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(describe(&eof), "tls handshake eof");
        assert_eq!(words("Unknown(7)"), "Unknown(7)");
    }
}
