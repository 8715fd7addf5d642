//! The collector every validation step writes to: issues with their
//! positions, warnings, and the checks that touch the machine (files, ports).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::certs::CertError;
use crate::config::file::*;
use crate::config::units::{parse_duration, parse_size};
use crate::config::*;

/// Collects issues while walking the raw config.
pub(in crate::config) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) checks: Checks,
    pub(super) issues: Vec<ConfigIssue>,
    pub(super) warnings: Vec<String>,
    /// `server.underscores_in_headers`: off, a field named with `_` never
    /// reaches anything a key could name (limits, stickiness).
    pub(in crate::config) underscores: bool,
}

impl Ctx<'_> {
    /// Refuses `header:NAME` keys no request can carry: with
    /// `server.underscores_in_headers` off such fields are dropped, and the
    /// key would silently fall back.
    pub(in crate::config) fn header_key(
        &mut self,
        span: std::ops::Range<usize>,
        key: &str,
        name: &str,
    ) {
        if let Some(m) = crate::config::messages::dropped_header(key, name, self.underscores) {
            self.at(span, m);
        }
    }
}

impl Ctx<'_> {
    /// Whether an issue about `key` (`limit.tiny`, or a key under it) was
    /// reported already: a reference to a section that failed validation
    /// names no missing section, only one already said to be wrong.
    pub(in crate::config) fn reported(&self, key: &str) -> bool {
        self.issues.iter().any(|i| {
            i.message
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with(':'))
        })
    }

    pub(in crate::config) fn at(
        &mut self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) {
        let pos = Some(super::line_col(self.text, span.start));
        self.issues.push(ConfigIssue {
            pos,
            key: None,
            message: message.into(),
        });
    }

    /// A warning about the value at `span`, as `PATH:LINE:COL: message`.
    pub(super) fn warn_at(
        &mut self,
        span: std::ops::Range<usize>,
        message: impl std::fmt::Display,
    ) {
        let (line, col) = super::line_col(self.text, span.start);
        self.warnings
            .push(format!("{}:{line}:{col}: {message}", self.path.display()));
    }

    pub(super) fn key(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            pos: None,
            key: Some(key.to_string()),
            message: message.into(),
        });
    }

    pub(super) fn duration(&mut self, v: &Option<SStr>, key: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|e| {
                self.at(s.span(), format!("{key}: {e}"));
                default
            }),
        }
    }

    /// A duration that must be more than zero (a zero would fail at once
    /// what it times, rather than turn the timer off).
    pub(super) fn positive_duration(
        &mut self,
        v: &Option<SStr>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration(v, key, default);
        if let (Some(s), true) = (v, d.is_zero()) {
            self.at(s.span(), format!("{key}: must be more than 0"));
            return default;
        }
        d
    }

    pub(super) fn size(&mut self, v: &Option<SStr>, key: &str, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => parse_size(s.get_ref()).unwrap_or_else(|e| {
                self.at(s.span(), format!("{key}: {e}"));
                default
            }),
        }
    }

    /// A size that must be more than zero (a zero would refuse every
    /// message rather than lift the limit).
    pub(super) fn positive_size(&mut self, v: &Option<SStr>, key: &str, default: u64) -> u64 {
        let n = self.size(v, key, default);
        if let (Some(s), 0) = (v, n) {
            self.at(s.span(), format!("{key}: must be more than 0"));
            return default;
        }
        n
    }

    /// An interval that is `"0"` (off) or at least [`MIN_INTERVAL`]: a
    /// shorter one ("1ms" for "1m") pings every session many times a second.
    pub(super) fn interval_or_off(
        &mut self,
        v: &Option<SStr>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration(v, key, default);
        match v {
            Some(s) if !d.is_zero() && d < MIN_INTERVAL => {
                self.at(
                    s.span(),
                    format!(
                        "{key}: must be \"0\" (off) or at least {}ms",
                        MIN_INTERVAL.as_millis()
                    ),
                );
                default
            }
            _ => d,
        }
    }

    /// A size in `[min, max]`; a value outside is an error, not clamped.
    pub(super) fn size_in(
        &mut self,
        v: &Option<SStr>,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let n = self.size(v, key, default);
        let Some(s) = v else { return n };
        let (bound, word) = if n < min {
            (min, "below the minimum")
        } else if n > max {
            (max, "above the maximum")
        } else {
            return n;
        };
        self.at(
            s.span(),
            format!(
                "{key}: {:?} is {word} of {} ({} bytes)",
                s.get_ref(),
                human_size(bound),
                bound
            ),
        );
        default
    }

    /// An integer in `[min, max]`.
    pub(in crate::config) fn int(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> i64 {
        match v {
            None => default,
            Some(n) if (min..=max).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                self.at(
                    n.span(),
                    format!("{key}: {} is out of range ({min}..={max})", n.get_ref()),
                );
                default
            }
        }
    }

    /// A file that must exist, be readable and be a regular file; resolved
    /// against the working directory. `None` once the problem is recorded.
    pub(super) fn readable_file(&mut self, v: &SStr, key: &str) -> Option<PathBuf> {
        let p = PathBuf::from(v.get_ref());
        // Looked at before it is opened: opening a FIFO waits for a writer.
        let problem = match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => "it is a directory, not a file".to_string(),
            Ok(m) if !m.is_file() => "it is not a regular file".to_string(),
            Ok(_) => match std::fs::File::open(&p) {
                Ok(_) => return Some(p),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        let hint = if key.ends_with("cert") || key.ends_with("key") {
            " (create a dev certificate with `wsgate gen-cert`)"
        } else {
            ""
        };
        self.at(
            v.span(),
            format!("{key}: cannot read {:?}: {problem}{hint}", v.get_ref()),
        );
        None
    }

    /// A certificate chain and its private key (`{k}.cert`, `{k}.key`): both
    /// readable, both parse, and the certificate is the key's. A problem is
    /// reported at the value naming the file at fault (the certificate's when
    /// they do not match).
    pub(super) fn cert_pair(&mut self, cert: &SStr, key: &SStr, k: &str) -> CertPaths {
        self.cert_pair_named(cert, key, &format!("{k}.cert"), &format!("{k}.key"))
    }

    /// [`Ctx::cert_pair`] for keys not named `cert`/`key` (`kc`, `kk`: the
    /// full key paths of the certificate and the private key).
    pub(super) fn cert_pair_named(
        &mut self,
        cert: &SStr,
        key: &SStr,
        kc: &str,
        kk: &str,
    ) -> CertPaths {
        let cert_path = self.readable_file(cert, kc);
        let key_path = self.readable_file(key, kk);
        let (Some(cert_path), Some(key_path)) = (cert_path, key_path) else {
            return CertPaths {
                cert: PathBuf::from(cert.get_ref()),
                key: PathBuf::from(key.get_ref()),
                ocsp: None,
            };
        };
        match crate::certs::load_certified_key(&cert_path, &key_path) {
            Ok(_) => {}
            Err(CertError::Cert { reason, .. }) => self.at(
                cert.span(),
                format!(
                    "{kc}: {:?} is not a usable certificate: {reason}",
                    cert.get_ref()
                ),
            ),
            Err(CertError::Key { reason, .. }) => self.at(
                key.span(),
                format!(
                    "{kk}: {:?} is not a usable private key: {reason}",
                    key.get_ref()
                ),
            ),
            Err(CertError::Mismatch { reason, .. }) => self.at(
                cert.span(),
                format!(
                    "{kc}: {:?} does not belong to the key {:?} ({kk}): {reason}",
                    cert.get_ref(),
                    key.get_ref()
                ),
            ),
            Err(other) => self.at(cert.span(), format!("{kc}: {other}")),
        }
        CertPaths {
            cert: cert_path,
            key: key_path,
            ocsp: None,
        }
    }

    /// `{k}.ocsp`: a readable DER OCSP response that can be stapled. One
    /// already expired is only a warning: the gateway starts without
    /// stapling it, and a reload picks up the renewed file.
    pub(super) fn ocsp_file(&mut self, v: &Option<SStr>, k: &str) -> Option<PathBuf> {
        let v = v.as_ref()?;
        let key = format!("{k}.ocsp");
        let path = self.readable_file(v, &key)?;
        match crate::certs::load_ocsp(&path) {
            Ok(r) if !r.is_fresh(std::time::SystemTime::now()) => self.warn_at(
                v.span(),
                format_args!(
                    "{key}: {:?} has expired (past its nextUpdate): it is not stapled until renewed",
                    v.get_ref()
                ),
            ),
            Ok(_) => {}
            Err(CertError::Ocsp { reason, .. }) => {
                self.at(v.span(), format!("{key}: {:?}: {reason}", v.get_ref()));
                return None;
            }
            Err(e) => {
                self.at(v.span(), format!("{key}: {e}"));
                return None;
            }
        }
        Some(path)
    }

    /// With [`Checks::bind`], tries to listen on `addr` (then lets it go) so
    /// an address that is taken is reported now rather than at start. Port 0
    /// (any free port) is not tried.
    pub(super) fn try_bind(&mut self, v: &SStr, key: &str, addr: SocketAddr) {
        if !self.checks.bind || addr.port() == 0 {
            return;
        }
        // As the gateway binds at start (`gateway::listeners`): SO_REUSEADDR,
        // then listen; the queue's length does not matter to this probe.
        let err = match std::net::TcpListener::bind(addr) {
            Ok(listener) => {
                drop(listener);
                return;
            }
            Err(e) => e,
        };
        match err.kind() {
            std::io::ErrorKind::AddrInUse => {
                self.at(v.span(), format!("{key}: address {addr} is already in use"))
            }
            std::io::ErrorKind::AddrNotAvailable => self.at(
                v.span(),
                format!("{key}: cannot listen on {addr}: no local interface has this address"),
            ),
            // `check` may run as another user than the gateway (which may
            // have CAP_NET_BIND_SERVICE): say so, but do not fail.
            std::io::ErrorKind::PermissionDenied => self.warn_at(
                v.span(),
                format_args!(
                    "{key}: this user may not listen on {addr} (permission denied); the gateway needs root or CAP_NET_BIND_SERVICE for ports below 1024"
                ),
            ),
            _ => self.at(v.span(), format!("{key}: cannot listen on {addr}: {err}")),
        }
    }
}

/// The shortest ping interval ([`Ctx::interval_or_off`]).
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// `n` bytes in the config's units: `8KiB`, `16MiB`, or `100B`.
pub(super) fn human_size(n: u64) -> String {
    match n {
        0 => "0B".into(),
        n if n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}
