//! Token lists in HTTP field values (RFC 9110 §5.6.1), read the same way by
//! the HTTP/1.1 server fast path (`server::h1`) and the upstream HTTP/1.1
//! client (`upstream::h1`): whether a list names a token (`Connection:
//! close`), and whether a message's last transfer coding is `chunked`. Bytes,
//! not `str`: a value need not be visible ASCII to carry a token. A leaf: it
//! imports nothing of the crate.

use http::{header, HeaderMap};

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
