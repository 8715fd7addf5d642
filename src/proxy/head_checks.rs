//! Checks of a request's head that the fast path and hyper leave to the
//! proxy: fields HTTP/2 may repeat where HTTP/1.1 is refused earlier, a
//! `Host` that contradicts `:authority`, and the transfer codings of a
//! request the HTTP proxy forwards.

use http::{header, Request};

use super::error::ProxyError;

/// The single fields server::smuggle refuses twice over HTTP/1.1, for
/// HTTP/2 requests: the origin allow-list reads the first `Origin` while the
/// upstream could read another. Out of line: HTTP/1.1 requests, which never
/// come here, keep `dispatch` as small as it was.
#[inline(never)]
pub(super) fn repeated_single_field(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    for name in crate::server::smuggle::SINGLE {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(ProxyError::BadRequest(format!(
                "more than one {name} header"
            )));
        }
    }
    Ok(())
}

/// A request's transfer codings must be `chunked` alone: the body is framed
/// again on its way, so another coding (`gzip, chunked`) reached the
/// upstream undone and unnamed, and `chunked` twice is malformed (RFC 9112
/// §6.1; probe 13). nginx answers 501 and 400 alike.
#[cold]
#[inline(never)]
pub(super) fn only_chunked(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    let mut chunked = 0;
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in v.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else if !coding.is_empty() {
                return Err(ProxyError::NotImplemented(
                    "transfer codings other than chunked are not supported".into(),
                ));
            }
        }
    }
    if chunked > 1 {
        return Err(ProxyError::BadRequest(
            "chunked applied more than once".into(),
        ));
    }
    Ok(())
}

/// Whether an HTTP/2 request's `Host` field names another host than its
/// `:authority` (ASCII case aside). HTTP/1.1 absolute-form is not asked: there
/// the target wins and `Host` is ignored (RFC 9112 §3.2.2).
pub(super) fn host_contradicts_authority<B>(req: &Request<B>) -> bool {
    match (req.uri().authority(), req.headers().get(header::HOST)) {
        (Some(a), Some(h)) => !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::only_chunked;
    use http::{header::TRANSFER_ENCODING, HeaderMap, HeaderValue, StatusCode};

    fn status(fields: &[&'static str]) -> StatusCode {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(TRANSFER_ENCODING, HeaderValue::from_static(f));
        }
        match only_chunked(&h) {
            Ok(()) => StatusCode::OK,
            Err(e) => e.status(),
        }
    }

    #[test]
    fn only_one_chunked_is_taken() {
        assert_eq!(status(&["chunked"]), StatusCode::OK);
        assert_eq!(status(&["Chunked"]), StatusCode::OK);
        assert_eq!(status(&["gzip, chunked"]), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(
            status(&["identity", "chunked"]),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(status(&["chunked, chunked"]), StatusCode::BAD_REQUEST);
        assert_eq!(status(&["chunked", "chunked"]), StatusCode::BAD_REQUEST);
    }
}
