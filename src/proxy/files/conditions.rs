//! What a static file's request asks for, given the file's validators: the
//! preconditions of RFC 9110 §13.2.2, in its order (`If-Match`,
//! `If-Unmodified-Since`, `If-None-Match`, `If-Modified-Since`, `If-Range`),
//! and one byte range (§14). As nginx does for files: a single range is
//! served as a 206, several as the whole file (§14.2 lets a server ignore
//! `Range`; nginx would send multipart, which few clients ask for).

use std::time::SystemTime;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method};

/// A file's validators: its (strong) entity tag and modification time.
pub struct Validators {
    pub etag: String,
    pub modified: Option<SystemTime>,
}

impl Validators {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let modified = meta.modified().ok();
        let nanos = modified
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Validators {
            etag: format!("\"{:x}-{:x}\"", meta.len(), nanos),
            modified,
        }
    }

    /// `ETag` and `Last-Modified`, as every answer about the file carries.
    pub fn set(&self, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.etag) {
            h.insert(header::ETAG, v);
        }
        if let Some(v) = self
            .modified
            .and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok())
        {
            h.insert(header::LAST_MODIFIED, v);
        }
    }

    /// The modification time in whole seconds, as HTTP dates have it.
    fn modified_secs(&self) -> Option<u64> {
        Some(secs(self.modified?))
    }
}

/// What to answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200, the whole file.
    Full,
    /// 206, the bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 304.
    NotModified,
    /// 412.
    PreconditionFailed,
    /// 416: the one range asked for starts past the end.
    Unsatisfiable,
}

/// Evaluates a GET or HEAD request's preconditions and range against a file
/// of `len` bytes, at `now` (an `If-Modified-Since` later than now is not a
/// valid date, RFC 9110 §13.1.3).
pub fn evaluate(
    method: &Method,
    headers: &HeaderMap,
    v: &Validators,
    len: u64,
    now: SystemTime,
) -> Outcome {
    if headers.contains_key(header::IF_MATCH) {
        if !any_tag(headers, &header::IF_MATCH, |t| t == "*" || t == v.etag) {
            return Outcome::PreconditionFailed;
        }
    } else if let (Some(since), Some(m)) = (
        date(headers, &header::IF_UNMODIFIED_SINCE),
        v.modified_secs(),
    ) {
        if m > since {
            return Outcome::PreconditionFailed;
        }
    }
    if headers.contains_key(header::IF_NONE_MATCH) {
        // Weak comparison: `W/"x"` matches `"x"`.
        if any_tag(headers, &header::IF_NONE_MATCH, |t| {
            t == "*" || t.trim_start_matches("W/") == v.etag
        }) {
            return Outcome::NotModified;
        }
    } else if let (Some(since), Some(m)) =
        (date(headers, &header::IF_MODIFIED_SINCE), v.modified_secs())
    {
        if since <= secs(now) && m <= since {
            return Outcome::NotModified;
        }
    }
    // Ranges are defined for GET only (§14.2): a HEAD describes the whole.
    if method != Method::GET || !if_range_holds(headers, v, now) {
        return Outcome::Full;
    }
    match single(headers) {
        Some(spec) => byte_range(spec, len),
        None => Outcome::Full,
    }
}

/// Whether any listed entity tag (of every field of that name) passes `f`.
fn any_tag(headers: &HeaderMap, name: &HeaderName, f: impl Fn(&str) -> bool) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(f)
}

/// One valid HTTP date field, in whole seconds; anything else is ignored.
fn date(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    let mut all = headers.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(v.to_str().ok()?).ok().map(secs)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `If-Range` (§13.1.5): the range is served only if the file is still the
/// one the client has part of: its strong entity tag, or exactly its date
/// when that date is a strong validator (§8.8.2.2: at least a second old, so
/// no second write within the same second can share it).
fn if_range_holds(headers: &HeaderMap, v: &Validators, now: SystemTime) -> bool {
    let Some(value) = headers.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        return value == v.etag;
    }
    httpdate::parse_http_date(value)
        .ok()
        .zip(v.modified_secs())
        .is_some_and(|(d, m)| secs(d) == m && m < secs(now))
}

/// The one `bytes=` range asked for; `None` (the whole file) for another
/// unit, several ranges, several fields or a malformed one.
fn single(headers: &HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(header::RANGE).iter();
    let v = all.next()?.to_str().ok()?;
    if all.next().is_some() {
        return None;
    }
    let (unit, set) = v.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let spec = specs.next()?;
    specs.next().is_none().then_some(spec)
}

/// `first-last`, `first-` or `-suffix` against a file of `len` bytes.
fn byte_range(spec: &str, len: u64) -> Outcome {
    let Some((first, last)) = spec.split_once('-') else {
        return Outcome::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return match number(last) {
            None => Outcome::Full,
            Some(0) => Outcome::Unsatisfiable,
            Some(_) if len == 0 => Outcome::Unsatisfiable,
            Some(n) => Outcome::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        };
    }
    let Some(start) = number(first) else {
        return Outcome::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match number(last) {
            Some(end) if end >= start => end,
            // Invalid (§14.1.1): ignored, as the whole file.
            _ => return Outcome::Full,
        }
    };
    if start >= len {
        return Outcome::Unsatisfiable;
    }
    Outcome::Partial {
        start,
        end: end.min(len - 1),
    }
}

/// Digits only (`u64::from_str` would take a `+`).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests;
