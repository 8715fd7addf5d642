//! The request path as routing sees it. Routes match by prefix, and the
//! access phase (auth, limits) follows the route, so the path an upstream
//! acts on must be the path the route was chosen by:
//!
//! - a path with a dot-segment (`.` or `..`, also written `%2e`, and also
//!   between `\`, `%2f` or `%5c`, which some servers take for `/`) is
//!   refused: `/open/../admin` would be routed by `/open/` and served by an
//!   upstream that resolves it as `/admin`. Clients remove dot-segments
//!   before they send (RFC 3986 §5.2.4), so only a crafted request has one.
//! - empty segments are merged (`//admin` is `/admin`), as nginx's default
//!   `merge_slashes on` does: servers that merge them would otherwise serve
//!   `/admin` for a path no `/admin/` route saw.
//!
//! One pass over the path, no allocation unless there is something to merge.
//!
//! The `Host` routing reads is checked here too ([`valid_host`]): RFC 9112
//! §3.2 asks for a 400 to a `Host` that is not a `host[:port]`, which hyper
//! and the fast path leave to the application.

/// What routing makes of a request path.
#[derive(Debug, PartialEq, Eq)]
pub enum PathCheck {
    /// Route it as it is.
    Fine,
    /// Route (and forward) this instead: empty segments merged.
    Merged(String),
    /// Refuse it (400).
    DotSegment,
}

/// Checks `path` (the URI's path, without its query).
pub fn check(path: &str) -> PathCheck {
    let b = path.as_bytes();
    let mut i = 0;
    // Dots in the current segment, and whether it holds anything else.
    let (mut dots, mut other) = (0usize, false);
    let mut empty_segment = false;
    let mut prev_slash = false;
    while i <= b.len() {
        let sep = match separator(&b[i..]) {
            Some(n) => Some(n),
            None if i == b.len() => Some(1),
            None => None,
        };
        if let Some(n) = sep {
            if !other && (dots == 1 || dots == 2) {
                return PathCheck::DotSegment;
            }
            let slash = b.get(i) == Some(&b'/');
            empty_segment |= slash && prev_slash;
            prev_slash = slash;
            (dots, other) = (0, false);
            i += n;
            continue;
        }
        prev_slash = false;
        match dot(&b[i..]) {
            Some(n) => {
                dots += 1;
                i += n;
            }
            None => {
                other = true;
                i += 1;
            }
        }
    }
    if empty_segment {
        PathCheck::Merged(merge_slashes(path))
    } else {
        PathCheck::Fine
    }
}

/// The length of the segment separator at the start of `b`: `/`, `\`, or
/// `%2f` / `%5c` in either case.
fn separator(b: &[u8]) -> Option<usize> {
    match b {
        [b'/' | b'\\', ..] => Some(1),
        [b'%', h, l, ..] if matches!((h, l.to_ascii_lowercase()), (b'2', b'f') | (b'5', b'c')) => {
            Some(3)
        }
        _ => None,
    }
}

/// The length of the dot at the start of `b`: `.` or `%2e` in either case.
fn dot(b: &[u8]) -> Option<usize> {
    match b {
        [b'.', ..] => Some(1),
        [b'%', b'2', e, ..] if e.eq_ignore_ascii_case(&b'e') => Some(3),
        _ => None,
    }
}

/// Whether `b` is a `uri-host [ ":" port ]` (RFC 3986 §3.2.2, RFC 9110
/// §7.2): a bracketed IPv6 address or a name of unreserved, sub-delims and
/// percent characters, and a port of at most five digits, up to 65535.
pub fn valid_host(b: &[u8]) -> bool {
    let (host, port) = match b {
        [b'[', rest @ ..] => match rest.iter().position(|&c| c == b']') {
            Some(end) => {
                let inside = &rest[..end];
                let ok = !inside.is_empty()
                    && inside
                        .iter()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'));
                if !ok {
                    return false;
                }
                match &rest[end + 1..] {
                    [] => return true,
                    [b':', port @ ..] => (&b[..0], port),
                    _ => return false,
                }
            }
            None => return false,
        },
        _ => match b.iter().rposition(|&c| c == b':') {
            Some(i) => (&b[..i], &b[i + 1..]),
            None => (b, &b[..0]),
        },
    };
    let name_ok = host.iter().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    let port_ok = port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && (port.is_empty() || std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok()));
    name_ok && port_ok
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_route_as_they_are() {
        for p in [
            "/",
            "/api/v1/items",
            "/a.b/c..d/.e/f.",
            "/file.tar.gz",
            "/...",
            "/%2e%2e%2e",
            "/projects/a%2Fb",
            "/x%2",
            "/%",
        ] {
            assert_eq!(check(p), PathCheck::Fine, "{p}");
        }
    }

    #[test]
    fn dot_segments_are_refused_however_written() {
        for p in [
            "/api/../admin",
            "/api/./admin",
            "/api/..",
            "/..",
            "/api/%2e%2e/admin",
            "/api/%2E./admin",
            "/api/.%2e",
            "/api\\..\\admin",
            "/api%2f..%2fadmin",
            "/api%5C..%5Cadmin",
            "/api/%2e",
        ] {
            assert_eq!(check(p), PathCheck::DotSegment, "{p}");
        }
    }

    #[test]
    fn hosts_are_a_name_or_a_bracketed_address_and_a_port() {
        for ok in [
            "example.test",
            "example.test:8080",
            "127.0.0.1",
            "127.0.0.1:65535",
            "[::1]",
            "[::1]:443",
            "localhost:",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "[::1",
            "a b c",
            "localhost:99999999999",
            "localhost:65536",
            "host:port",
            "user@host",
            "[::1]x",
            "[]",
            "a/b",
            "::1",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn empty_segments_are_merged() {
        assert_eq!(check("//admin/x"), PathCheck::Merged("/admin/x".into()));
        assert_eq!(check("/a///b//"), PathCheck::Merged("/a/b/".into()));
        // Encoded slashes are not merged: `%2F` may be data in a segment.
        assert_eq!(check("/a/%2F%2Fb"), PathCheck::Fine);
    }
}
