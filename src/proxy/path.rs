//! The request path as routing sees it. Routes match by prefix, and the
//! access phase (auth, limits) follows the route, so the path an upstream
//! acts on must be the path the route was chosen by. Before routing:
//!
//! - percent-encoded unreserved characters are decoded (`/%61dmin` is
//!   `/admin`: the same path, RFC 3986 §6.2.2.2, and servers read it so) and
//!   empty segments merged (`//admin` is `/admin`, as nginx's default
//!   `merge_slashes on` does); the request goes on with that path;
//! - a path with a dot-segment (`.` or `..`, also written `%2e`, also before
//!   a `;parameter` as in `..;`, also between `%2f` or `%5c`, which some
//!   servers take for `/`) is refused: `/open/../admin` would be routed by
//!   `/open/` and served by an upstream that resolves it as `/admin`.
//!   Clients remove dot-segments before they send (RFC 3986 §5.2.4);
//! - so is a raw `\` (browsers send `/` for it; some servers read it as one),
//!   and a `%` that is not an escape (`%%32e` is `%2e` once decoded: an
//!   upstream that decodes again would see what no check here saw).
//!
//! Escaped separators (`%2f`, `%5c`) and `;parameters` are forwarded as
//! sent: they are data in many APIs (`/projects/a%2Fb`, `;jsessionid`). But
//! an upstream that decodes the first (WSGI, for one) or drops the second
//! (Tomcat, Spring) reads `/admin%2Fx` or `/admin;x/y` as `/admin/…`, which
//! the `/admin/` route never saw. So such a path is routed twice, as sent and
//! as those upstreams read it ([`upstream_view`]), and refused when the two
//! routes differ (nginx routes on the decoded path; refusing the
//! disagreement keeps both kinds of upstream safe and forwards every path a
//! route did see unchanged).
//!
//! One pass over most paths (nothing to decode, merge or look at), no
//! allocation unless the path changes.
//!
//! The `Host` routing reads is checked here too ([`valid_host`]): RFC 9112
//! §3.2 asks for a 400 to a `Host` that is not a `host[:port]`, which hyper
//! and the fast path leave to the application.

/// What routing makes of a request path.
#[derive(Debug, PartialEq, Eq)]
pub enum PathCheck {
    /// Route it as it is: nothing in it is escaped.
    Plain,
    /// Route it as it is; it has escapes or parameters, so see
    /// [`upstream_view`].
    Fine,
    /// Route (and forward) this instead: unreserved escapes decoded, empty
    /// segments merged.
    Normalized(String),
    /// Refuse it (400), for this reason.
    Refused(&'static str),
}

/// Checks `path` (the URI's path, without its query).
pub fn check(path: &str) -> PathCheck {
    let b = path.as_bytes();
    if plain(b) {
        return PathCheck::Plain;
    }
    if b.contains(&b'\\') {
        return PathCheck::Refused("the path has a \"\\\"");
    }
    if bad_escape(b) {
        // Invalid (RFC 3986 §2.1; nginx answers 400 too), and the way to
        // smuggle an escape past one decoding: `%%32e` decodes to `%2e`.
        return PathCheck::Refused("the path has a \"%\" that is not an escape (%XX)");
    }
    let normal = normalize(b);
    if has_dot_segment(&normal) {
        return PathCheck::Refused("the path has a \".\" or \"..\" segment");
    }
    if normal == b {
        return PathCheck::Fine;
    }
    // Only ASCII sequences were replaced by ASCII: still UTF-8.
    match String::from_utf8(normal) {
        Ok(p) => PathCheck::Normalized(p),
        Err(_) => PathCheck::Fine,
    }
}

/// Most paths: no `.`, `%` or `\\` (so nothing to decode and no
/// dot-segment, however written), no `;` (no parameter an upstream may
/// drop) and no `//`. One pass, a compare or two a byte; the rest is for
/// the others.
fn plain(b: &[u8]) -> bool {
    let mut prev_slash = false;
    for &c in b {
        match c {
            b'.' | b'%' | b'\\' | b';' => return false,
            b'/' if prev_slash => return false,
            b'/' => prev_slash = true,
            _ => prev_slash = false,
        }
    }
    true
}

/// `b` with `%XX` of unreserved characters decoded and runs of `/` merged.
fn normalize(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            if let Some(v) = b.get(i + 1..i + 3).and_then(hex_pair) {
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
        }
        if !(c == b'/' && out.last() == Some(&b'/')) {
            out.push(c);
        }
        i += 1;
    }
    out
}

/// The path as an upstream may act on it when it decodes escaped
/// separators (`%2f`, `%5c`, read as `/`) and drops `;parameters` (Tomcat
/// and Spring read `/admin;x/y` as `/admin/y`), runs of `/` merged: routing
/// must agree with it. `None` when the path has neither (the view is the
/// path itself).
pub fn upstream_view(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let first =
        (0..b.len()).find(|&i| b[i] == b';' || (b[i] == b'%' && separator(&b[i..]).is_some()))?;
    let mut out = String::with_capacity(b.len());
    out.push_str(&path[..first]);
    let mut i = first;
    while i < b.len() {
        if let Some(n) = separator(&b[i..]) {
            if !out.ends_with('/') {
                out.push('/');
            }
            i += n;
            continue;
        }
        if b[i] == b';' {
            // The parameter runs to the next separator.
            i += 1;
            while i < b.len() && separator(&b[i..]).is_none() {
                i += 1;
            }
            continue;
        }
        // Copy up to the next `/`, `%` or `;`: all ASCII, so a char boundary.
        let end = b[i + 1..]
            .iter()
            .position(|&c| matches!(c, b'/' | b'%' | b';'))
            .map_or(b.len(), |p| i + 1 + p);
        out.push_str(&path[i..end]);
        i = end;
    }
    Some(out)
}

/// Whether a `%` in `b` is not followed by two hex digits.
fn bad_escape(b: &[u8]) -> bool {
    (0..b.len()).any(|i| b[i] == b'%' && b.get(i + 1..i + 3).and_then(hex_pair).is_none())
}

fn hex_pair(h: &[u8]) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16);
    Some((d(h[0])? * 16 + d(h[1])?) as u8)
}

/// Whether a segment (between `/`, `%2f` or `%5c`), up to its first `;`,
/// is `.` or `..`.
fn has_dot_segment(b: &[u8]) -> bool {
    let mut i = 0;
    let mut start = 0;
    loop {
        let sep = if i == b.len() {
            Some(0)
        } else {
            separator(&b[i..])
        };
        if let Some(n) = sep {
            let seg = &b[start..i];
            let name = seg.split(|&c| c == b';').next().unwrap_or(seg);
            if name == b"." || name == b".." {
                return true;
            }
            if i == b.len() {
                return false;
            }
            i += n;
            start = i;
        } else {
            i += 1;
        }
    }
}

/// The length of the segment separator at the start of `b`: `/`, or `%2f`
/// / `%5c` in either case.
fn separator(b: &[u8]) -> Option<usize> {
    match b {
        [b'/', ..] => Some(1),
        [b'%', h, l, ..] if matches!((h, l.to_ascii_lowercase()), (b'2', b'f') | (b'5', b'c')) => {
            Some(3)
        }
        _ => None,
    }
}

/// The bytes of a reg-name or IPv4 address: unreserved, sub-delims and `%`
/// (RFC 3986 §3.2.2), one table lookup a byte.
static HOST_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
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
            );
        c += 1;
    }
    t
};

/// Whether `b` is a `uri-host [ ":" port ]` (RFC 3986 §3.2.2, RFC 9110
/// §7.2): a bracketed IPv6 address or a name of unreserved, sub-delims and
/// percent characters, and a port of at most five digits, up to 65535.
pub fn valid_host(b: &[u8]) -> bool {
    let (host, port) = match b {
        [b'[', rest @ ..] => match rest.iter().position(|&c| c == b']') {
            Some(end) => {
                let inside = &rest[..end];
                // An IPv6 address, with a zone id after `%` (RFC 6874:
                // Python sends `[fe80::1%eth0]`).
                let (addr, zone) = match inside.iter().position(|&c| c == b'%') {
                    Some(p) => (&inside[..p], &inside[p + 1..]),
                    None => (inside, &inside[..0]),
                };
                let ok = !addr.is_empty()
                    && addr
                        .iter()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'))
                    && zone.iter().all(|&c| HOST_CHARS[usize::from(c)]);
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
    let name_ok = host.iter().all(|&c| HOST_CHARS[usize::from(c)]);
    // Five digits at most, so the sum cannot overflow a u32.
    let port_ok = port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535;
    name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_route_as_they_are() {
        for p in ["/a.b/c..d/.e/f.", "/file.tar.gz", "/...", "/projects/a%2Fb"] {
            assert_eq!(check(p), PathCheck::Fine, "{p}");
        }
        for p in ["/", "/api/v1/items"] {
            assert_eq!(check(p), PathCheck::Plain, "{p}");
        }
        assert_eq!(check("/app;jsessionid=1/x"), PathCheck::Fine);
    }

    #[test]
    fn separators_and_parameters_give_a_second_view_to_route_by() {
        let v = upstream_view;
        assert_eq!(v("/api/v1/items"), None);
        assert_eq!(v("/a%20b/%41"), None);
        assert_eq!(v("/admin%2fx").as_deref(), Some("/admin/x"));
        assert_eq!(v("/admin%2F%2Fx%5Cy/%2fz").as_deref(), Some("/admin/x/y/z"));
        assert_eq!(v("/é%2Fü%20/").as_deref(), Some("/é/ü%20/"));
        assert_eq!(v("/x%2"), None);
        assert_eq!(v("/admin;x/secret").as_deref(), Some("/admin/secret"));
        assert_eq!(v("/a;b=c%2fd/e;f").as_deref(), Some("/a/d/e"));
        assert_eq!(v("/app/page;jsessionid=1").as_deref(), Some("/app/page"));
    }

    #[test]
    fn a_percent_that_is_not_an_escape_is_refused() {
        for p in [
            "/open/%%32e%%32e/admin",
            "/a/%%32%66b",
            "/x%2",
            "/%",
            "/%zz",
        ] {
            assert_eq!(
                check(p),
                PathCheck::Refused("the path has a \"%\" that is not an escape (%XX)"),
                "{p}"
            );
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
            "/api%2f..%2fadmin",
            "/api%5C..%5Cadmin",
            "/api/%2e",
            "/api/..;/admin",
            "/api/.;x=1/admin",
            "/api/%2e%2e;/admin",
        ] {
            assert_eq!(
                check(p),
                PathCheck::Refused("the path has a \".\" or \"..\" segment"),
                "{p}"
            );
        }
        assert_eq!(
            check("/api\\admin"),
            PathCheck::Refused("the path has a \"\\\"")
        );
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded_and_slashes_merged() {
        let n = |p: &str| match check(p) {
            PathCheck::Normalized(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(n("/%61dmin/x"), "/admin/x");
        assert_eq!(n("/a%2eb"), "/a.b");
        assert_eq!(n("//admin/x"), "/admin/x");
        assert_eq!(n("/a///b//"), "/a/b/");
        assert_eq!(n("/%7Euser/%2Fdata"), "/~user/%2Fdata");
        // Encoded slashes are data: neither decoded nor merged.
        assert_eq!(check("/a/%2F%2Fb"), PathCheck::Fine);
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
            "[fe80::1%eth0]:8080",
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
}
