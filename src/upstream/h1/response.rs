//! Reading a response head (httparse, the parser under hyper) and deciding
//! how its body is framed and whether the connection may be kept (RFC 9112
//! §6.3 and §9.3).

use http::{header, HeaderMap, StatusCode, Version};

use super::decode::Decoder;
use super::{Conn, Error};
use crate::field_spans::Spans;
use crate::fields::{connection_has, last_coding_is_chunked};

/// A response head may be at most this large (nginx's `proxy_buffer_size` is
/// 4–8 KiB; hyper's client allowed ~400 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// At most this many header fields (hyper's default).
const MAX_HEADERS: usize = 100;
/// Interim answers taken before the final one: a `100 Continue` and a few
/// `103 Early Hints` are all a server has reason to send; a stream of them
/// would otherwise cost CPU until `response_timeout`.
pub const MAX_INTERIM: usize = 32;

/// Reads the final response head (interim `1xx` ones are skipped; a `101` is
/// final and has no body). `started` turns true at the first byte read.
pub async fn read_head(
    conn: &mut Conn,
    head_only: bool,
    started: &mut bool,
) -> Result<(http::response::Parts, Decoder, bool), Error> {
    let mut interim = 0;
    loop {
        if let Some(head) = parse(conn)? {
            let status = head.status;
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(Error::TooManyInterim);
                }
                continue;
            }
            return finish(head, head_only);
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(Error::HeadTooLarge);
        }
        if conn.fill().await? == 0 {
            return Err(Error::Closed);
        }
        *started = true;
    }
}

/// What the server has said so far while the request is still being written:
/// complete interim heads at the front of the buffer are dropped (a `100
/// Continue` asks for the body), and a complete final head is looked at but
/// left for [`read_head`]. `None` until such a head is complete.
pub fn final_status_so_far(conn: &mut Conn) -> Result<Option<StatusCode>, Error> {
    while !conn.buf.is_empty() {
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let Some((n, status, _)) = parse_raw(&conn.buf, &mut slots)? else {
            return Ok(None);
        };
        if !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Some(status));
        }
        let _ = conn.buf.split_to(n);
    }
    Ok(None)
}

/// httparse over `buf`: a complete head's length, status and fields (in
/// `slots`), or `None` while it is partial.
fn parse_raw<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(usize, StatusCode, httparse::Response<'h, 'b>)>, Error> {
    let mut resp = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, slots)?
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Header)?;
    Ok(Some((n, status, resp)))
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// Parses a complete head off the buffer, or `None` when more is needed.
fn parse(conn: &mut Conn) -> Result<Option<Head>, Error> {
    if conn.buf.is_empty() {
        return Ok(None);
    }
    // Left uninitialised: hyper's parse does the same; zeroing 100 slots
    // cost more than the parse of a typical head.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let Some((n, status, resp)) = parse_raw(&conn.buf, &mut slots)? else {
        return Ok(None);
    };
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // The values become slices of the head once it is split off the buffer
    // (as the body's chunks are), not a copy each.
    let mut spans = Spans::<MAX_HEADERS>::new();
    if !spans.note(&conn.buf[..n], resp.headers) {
        return Err(Error::Header);
    }
    let head = conn.buf.split_to(n).freeze();
    let headers = spans.map(&head, 0).ok_or(Error::Header)?;
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// The body's framing and whether the connection may serve another request.
fn finish(
    mut head: Head,
    head_only: bool,
) -> Result<(http::response::Parts, Decoder, bool), Error> {
    let mut keep_alive = keeps_alive(head.version, &head.headers);
    let status = head.status;
    let decoder = if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // A 101 hands the connection to another protocol: never reused.
        keep_alive &= status != StatusCode::SWITCHING_PROTOCOLS;
        Decoder::Done
    } else if head.headers.contains_key(header::TRANSFER_ENCODING) {
        // Transfer-Encoding wins over Content-Length, which must then go: the
        // client side frames the decoded body again (§6.3 point 3).
        head.headers.remove(header::CONTENT_LENGTH);
        // HTTP/1.0 has no Transfer-Encoding: its framing is faulty, and the
        // connection is closed after this message (RFC 9112 §6.1).
        keep_alive &= head.version != Version::HTTP_10;
        if last_coding_is_chunked(&head.headers) {
            Decoder::chunked()
        } else {
            keep_alive = false;
            Decoder::Eof
        }
    } else if let Some((n, plain)) = content_length(&head.headers)? {
        if !plain {
            // A list, a repeat or leading zeros (RFC 9110 §8.6 takes them
            // as the one value): forwarded as they came, a list broke
            // HTTP/1.1 clients and either broke HTTP/2 ones (probe 13).
            head.headers
                .insert(header::CONTENT_LENGTH, http::HeaderValue::from(n));
        }
        Decoder::Length(n)
    } else {
        keep_alive = false;
        Decoder::Eof
    };
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = head.version;
    parts.headers = head.headers;
    Ok((parts, decoder, keep_alive))
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 only
/// with `Connection: keep-alive`.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    if version == Version::HTTP_10 {
        connection_has(headers, b"keep-alive")
    } else {
        !connection_has(headers, b"close")
    }
}

/// The one length every `Content-Length` field agrees on (differing values
/// are an error, §6.3 point 5).
fn content_length(headers: &HeaderMap) -> Result<Option<(u64, bool)>, Error> {
    let mut found = None;
    // One field holding one number as it is written (no leading zeros).
    let mut plain = true;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let s = v.to_str().map_err(|_| Error::ContentLength)?;
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::ContentLength);
            }
            let n: u64 = part.parse().map_err(|_| Error::ContentLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(Error::ContentLength);
            }
            // `part` is `s` trimmed: of the same length, it is all of it.
            plain &= found.is_none() && part.len() == s.len() && (n > 0 || part.len() == 1);
            plain &= n == 0 || !part.starts_with('0');
            found = Some(n);
        }
    }
    Ok(found.map(|n| (n, plain)))
}

#[cfg(test)]
mod tests {
    use super::content_length;
    use http::{header::CONTENT_LENGTH, HeaderMap, HeaderValue};

    fn cl(fields: &[&'static str]) -> Option<(u64, bool)> {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(CONTENT_LENGTH, HeaderValue::from_static(f));
        }
        content_length(&h).ok().flatten()
    }

    #[test]
    fn lists_repeats_and_leading_zeros_are_one_value_but_not_plain() {
        assert_eq!(cl(&["5"]), Some((5, true)));
        assert_eq!(cl(&["0"]), Some((0, true)));
        assert_eq!(cl(&["5, 5"]), Some((5, false)));
        assert_eq!(cl(&["5", "5"]), Some((5, false)));
        assert_eq!(cl(&["005"]), Some((5, false)));
        assert_eq!(cl(&["00"]), Some((0, false)));
        assert_eq!(cl(&["5", "6"]), None);
        assert_eq!(cl(&[]), None);
    }
}
