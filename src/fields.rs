//! Token lists in HTTP field values (RFC 9110 §5.6.1), read the same way by
//! the HTTP/1.1 server fast path (`server::h1`) and the upstream HTTP/1.1
//! client (`upstream::h1`): whether a list names a token (`Connection:
//! close`), and whether a message's last transfer coding is `chunked`. Bytes,
//! not `str`: a value need not be visible ASCII to carry a token. Also the
//! one field HTTP/2 frames differently: `Cookie` crumbs joined. A leaf: it
//! imports nothing of the crate.

use http::{header, HeaderMap, HeaderValue};

/// Whether the comma-separated list `value` names `token` (any case).
pub fn list_has(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether any `Connection` field names `token`.
pub fn connection_has(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| list_has(v.as_bytes(), token))
}

/// Whether the last coding of the last `Transfer-Encoding` field is
/// `chunked` (RFC 9112 §6.3: then the message is chunked).
pub fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Joins a request's `Cookie` fields into one, separated by `"; "`. An
/// HTTP/2 client may send each cookie as a field of its own (for header
/// compression), and RFC 9113 §8.2.3 has them joined before the request
/// goes anywhere that is not HTTP/2: an HTTP/1.1 upstream, or an app. One
/// field or none is left as it is.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for crumb in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Each part was a valid value, and "; " is too: this cannot fail.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_crumbs_are_joined_in_order_in_the_first_ones_place() {
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("x"));
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let fields: Vec<_> = h.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(
            fields,
            [
                ("host", &b"x"[..]),
                ("cookie", b"a=1; b=2; c=3"),
                ("accept", b"*/*")
            ]
        );
    }

    #[test]
    fn one_cookie_field_or_none_is_left_alone() {
        let mut h = HeaderMap::new();
        join_cookies(&mut h);
        assert!(h.is_empty());
        h.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
    }
}
