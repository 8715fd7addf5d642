//! Reading a request head for the fast path, and deciding whether the fast
//! path may serve it at all.
//!
//! The fast path takes only what it can serve completely and exactly as hyper
//! would: an HTTP/1.1 request with no body and no `Expect`, and, of upgrades,
//! only a WebSocket handshake (`GET`, one `Upgrade: websocket`, `Connection`
//! naming `upgrade`), whose connection it hands to the handler's session after
//! the 101 (`crate::upgraded`). Every other head (and every head it cannot
//! parse) is left in the buffer for hyper, which then answers it (including
//! the 400, 431 or 505 for a broken one) and the rest of the connection. So
//! nothing a client can send is judged by two parsers: what this one does not
//! take, it does not judge. Two refusals are made here, because hyper's
//! answer to them has no body to say why: a field httparse rejects (hyper's
//! parser too: the same 400) and a head over `max_request_head` (the same
//! 431).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Uri, Version};

use crate::body::RequestBody;
use crate::field_spans::{piece, span, Span, Spans};
use crate::fields::list_has;
// A second one of these is refused with 400 by the smuggling guard under
// hyper, so a head repeating one goes there.
use crate::server::smuggle::SINGLE;

/// Header fields one head may carry before it is left to hyper (which allows
/// 100); the array lives on the stack while a head is parsed.
const MAX_FIELDS: usize = 64;

/// What the bytes read so far hold.
// Moved once per request: boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A head the fast path serves, now taken off the buffer: the request,
    /// and whether the client lets the connection stay open after it.
    Ready {
        request: Request<RequestBody>,
        keep_alive: bool,
        /// A WebSocket handshake: a 101 answer hands the connection over.
        upgrade: bool,
    },
    /// A head (or a start of one) for hyper, left in the buffer.
    Handoff,
    /// A head hyper would refuse with an empty answer, refused here with
    /// its reason: a field name or value httparse rejects (hyper parses with
    /// httparse too, with the same rules).
    Malformed(&'static str),
}

/// Parses the head at the start of `buf`; a head the fast path serves is
/// split off it, and its path and field values are slices of it
/// ([`crate::field_spans`]), not a copy each.
pub(super) fn parse(buf: &mut BytesMut) -> Parsed {
    let mut spans = Spans::<MAX_FIELDS>::new();
    let (plan, len) = {
        // Uninitialised: filling 64 empty fields costs more than parsing a head.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut head = httparse::Request::new(&mut []);
        let len = match head.parse_with_uninit_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            // Not `Version`, `Token` and the like: an HTTP/2 preface is no
            // HTTP/1.1 head and must reach hyper; nor `TooManyHeaders`: hyper
            // takes 100, this parser 64.
            Err(e @ (httparse::Error::HeaderName | httparse::Error::HeaderValue)) => {
                return Parsed::Malformed(match e {
                    httparse::Error::HeaderName => "malformed request head: invalid header name\n",
                    _ => "malformed request head: invalid header value (a control character?)\n",
                })
            }
            Err(_) => return Parsed::Handoff,
        };
        let bytes = &buf[..len];
        match judge(&head, bytes) {
            Some(plan) if spans.note(bytes, head.headers) => (plan, len),
            _ => return Parsed::Handoff,
        }
    };
    let head = buf.split_to(len).freeze();
    let Plan {
        method,
        path,
        fields,
    } = plan;
    match build(method, path, &head, &spans) {
        Some(request) => Parsed::Ready {
            request,
            keep_alive: !fields.close,
            upgrade: fields.websocket,
        },
        None => {
            // A piece `http` refuses though httparse took it: hyper answers
            // the whole head, so it goes back in front of what followed it.
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            Parsed::Handoff
        }
    }
}

/// A head judged fit for the fast path, before its request is built.
struct Plan {
    method: Method,
    path: Span,
    fields: Fields,
}

/// The plan for a head parsed out of `bytes`, or `None` when the head is one
/// for hyper.
fn judge(head: &httparse::Request<'_, '_>, bytes: &[u8]) -> Option<Plan> {
    if head.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(head.method?.as_bytes()).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    // Judged before anything is built: a head for hyper (an upload, an h2c
    // upgrade) costs this path a scan, not a header map.
    let mut fields = Fields::default();
    if !head.headers.iter().all(|f| fields.admit(f.name, f.value)) {
        return None;
    }
    // Of upgrades, only a whole WebSocket handshake: hyper judges the rest
    // (an `Upgrade` without `Connection: upgrade` or the reverse, `h2c`...).
    if fields.websocket != fields.connection_upgrade || (fields.websocket && method != Method::GET)
    {
        return None;
    }
    Some(Plan {
        method,
        path: span(bytes, head.path?.as_bytes())?,
        fields,
    })
}

/// The request of a judged head (its method, and where its target and fields
/// lie in `head`); `None` if `http` refuses a piece of it.
fn build(
    method: Method,
    path: Span,
    head: &Bytes,
    spans: &Spans<MAX_FIELDS>,
) -> Option<Request<RequestBody>> {
    let uri = Uri::from_maybe_shared(piece(head, path)).ok()?;
    // Room for the few fields a proxy adds (`X-Forwarded-*`): growing the map
    // later rehashes and moves it.
    let headers = spans.map(head, 3)?;
    let mut request = Request::new(RequestBody::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// What the fields of one head said, as far as the fast path cares.
#[derive(Default)]
struct Fields {
    close: bool,
    content_length: bool,
    /// One `Upgrade: websocket`.
    websocket: bool,
    connection_upgrade: bool,
    /// Bit `i`: a field that must appear once (see [`SINGLE`]) was seen.
    single: u8,
}

impl Fields {
    /// Notes one field; `false` when it makes the head one for hyper: a
    /// body (any `Transfer-Encoding`, a `Content-Length` other than one `0`),
    /// an upgrade to anything but WebSocket (or two `Upgrade` fields), an
    /// `Expect`, or a repeated single field.
    fn admit(&mut self, name: &str, value: &[u8]) -> bool {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        // Most fields are none of these: the length rules them out first.
        if !matches!(name.len(), 4 | 6 | 7 | 10 | 14 | 17 | 21) {
            return true;
        }
        if is("transfer-encoding") || is("expect") {
            return false;
        }
        if is("upgrade") {
            if self.websocket || !value.eq_ignore_ascii_case(b"websocket") {
                return false;
            }
            self.websocket = true;
        } else if is("content-length") {
            if self.content_length || value != b"0" {
                return false;
            }
            self.content_length = true;
        } else if is("connection") {
            self.connection_upgrade |= list_has(value, b"upgrade");
            self.close |= list_has(value, b"close");
        } else if let Some(i) = SINGLE.iter().position(|s| is(s)) {
            let bit = 1u8 << i;
            if self.single & bit != 0 {
                return false;
            }
            self.single |= bit;
        }
        true
    }
}
