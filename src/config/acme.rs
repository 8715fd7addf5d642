//! `[listener.tls.acme]` (certificates from an ACME CA, docs/tls.md#acme) →
//! [`AcmeConfig`]. Everything that can be checked without the network is
//! checked here, at the key's position: the directory URL, the extra trust
//! root (read and parsed), contacts, domains (no wildcards: they need dns-01),
//! the challenge type (http-01 needs a plain listener to answer on) and the
//! cache directory.

use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::file::{AcmeFile, SStr};
use super::HostPattern;

/// How the CA checks that this gateway controls the domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcmeChallenge {
    /// RFC 8737: a validation certificate served on the TLS listener to
    /// handshakes that offer only ALPN `acme-tls/1`.
    TlsAlpn01,
    /// RFC 8555 §8.3: `GET /.well-known/acme-challenge/TOKEN` on port 80,
    /// answered on every plain listener.
    Http01,
}

impl AcmeChallenge {
    pub fn name(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

/// One listener's ACME settings. Two listeners with equal settings share one
/// account, one certificate and one renewal task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcmeConfig {
    /// The CA's directory URL (`https://`).
    pub directory: String,
    /// An extra PEM trust root for the CA's own HTTPS (test CAs), besides the
    /// system's roots.
    pub ca_root: Option<PathBuf>,
    /// Account contacts (`mailto:` URLs).
    pub contact: Vec<String>,
    /// The names the certificate is for, lower-cased, in the order written
    /// (the first is the certificate's subject).
    pub domains: Vec<String>,
    pub challenge: AcmeChallenge,
    /// Where the account key and certificates persist (created when missing).
    pub cache: PathBuf,
}

/// Reads `{key}.acme`; problems go to `issues` with their positions.
/// `has_plain`: the config has a listener without TLS (for http-01).
pub(super) fn parse(
    a: &Spanned<AcmeFile>,
    key: &str,
    has_plain: bool,
    issues: &mut Vec<(Range<usize>, String)>,
) -> Option<AcmeConfig> {
    let a = a.get_ref();
    let key = format!("{key}.acme");
    let before = issues.len();
    let directory = a.directory.get_ref().trim().to_string();
    match directory.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
        _ => issues.push((
            a.directory.span(),
            format!(
                "{key}.directory: {:?} is not an https:// URL (ACME servers are reached over HTTPS, RFC 8555 §6.1)",
                a.directory.get_ref()
            ),
        )),
    }
    let ca_root = a.ca_root.as_ref().and_then(|v| {
        let path = PathBuf::from(v.get_ref());
        match super::load_roots(&path) {
            Ok(_) => Some(path),
            Err(why) => {
                issues.push((v.span(), format!("{key}.ca_root: {:?}: {why}", v.get_ref())));
                None
            }
        }
    });
    let contact = contacts(a.contact.as_deref().unwrap_or_default(), &key, issues);
    let domains = domains(&a.domains, &key, issues);
    let challenge = match a
        .challenge
        .as_ref()
        .map(|c| (c.get_ref().as_str(), c.span()))
    {
        None | Some(("tls-alpn-01", _)) => AcmeChallenge::TlsAlpn01,
        Some(("http-01", span)) => {
            if !has_plain {
                issues.push((
                    span,
                    format!("{key}.challenge: \"http-01\" is answered on plain listeners, and there is none: add a [[listener]] without tls on port 80 (or use \"tls-alpn-01\")"),
                ));
            }
            AcmeChallenge::Http01
        }
        Some((other, span)) => {
            issues.push((
                span,
                format!("{key}.challenge: {other:?} is not one of \"tls-alpn-01\", \"http-01\""),
            ));
            AcmeChallenge::TlsAlpn01
        }
    };
    let cache = cache_dir(&a.cache, &key, issues);
    (issues.len() == before).then(|| AcmeConfig {
        directory,
        ca_root,
        contact,
        domains,
        challenge,
        cache: cache.unwrap_or_default(),
    })
}

fn contacts(list: &[SStr], key: &str, issues: &mut Vec<(Range<usize>, String)>) -> Vec<String> {
    let mut out = Vec::new();
    for c in list {
        let v = c.get_ref().trim();
        match v.strip_prefix("mailto:") {
            Some(addr) if addr.contains('@') && !addr.contains(char::is_whitespace) => {
                out.push(v.to_string())
            }
            _ => issues.push((
                c.span(),
                format!(
                    "{key}.contact: {:?} is not a \"mailto:name@domain\" URL",
                    c.get_ref()
                ),
            )),
        }
    }
    out
}

fn domains(
    list: &Spanned<Vec<SStr>>,
    key: &str,
    issues: &mut Vec<(Range<usize>, String)>,
) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for d in list.get_ref() {
        match HostPattern::parse(d.get_ref()) {
            Ok(HostPattern::Exact(h)) => {
                if !seen.insert(h.clone()) {
                    issues.push((d.span(), format!("{key}.domains: {h:?} is listed twice")));
                } else if h.parse::<std::net::IpAddr>().is_ok() || !h.contains('.') {
                    issues.push((
                        d.span(),
                        format!("{key}.domains: {h:?} is not a public DNS name (ACME CAs issue for names like \"a.example.com\")"),
                    ));
                } else {
                    out.push(h);
                }
            }
            Ok(HostPattern::Wildcard(_)) => issues.push((
                d.span(),
                format!(
                    "{key}.domains: {:?}: wildcard certificates need the dns-01 challenge, which wsgate does not answer",
                    d.get_ref()
                ),
            )),
            Err(e) => issues.push((d.span(), format!("{key}.domains: {e}"))),
        }
    }
    if list.get_ref().is_empty() {
        issues.push((
            list.span(),
            format!("{key}.domains: list at least one domain"),
        ));
    }
    out
}

fn cache_dir(v: &SStr, key: &str, issues: &mut Vec<(Range<usize>, String)>) -> Option<PathBuf> {
    let p = PathBuf::from(v.get_ref());
    if v.get_ref().trim().is_empty() {
        issues.push((
            v.span(),
            format!("{key}.cache: name a directory (e.g. \"acme/\")"),
        ));
        return None;
    }
    match std::fs::metadata(&p) {
        Ok(m) if !m.is_dir() => {
            issues.push((
                v.span(),
                format!(
                    "{key}.cache: {:?} exists and is not a directory",
                    v.get_ref()
                ),
            ));
            None
        }
        _ => Some(p),
    }
}

#[cfg(test)]
#[path = "acme_tests.rs"]
mod tests;
