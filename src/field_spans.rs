//! Header maps built from a parsed HTTP/1.1 head without copying its values,
//! as hyper's own parser builds them: the parse notes where each field lies
//! ([`Spans`]), the head is split off its read buffer, and each value becomes
//! a slice of it. A copy per value was an allocation per field, most of a
//! request's allocations on the fast path. Used by the server fast path
//! (`server::h1`) and the upstream client (`upstream::h1`: heads and chunked
//! trailers). A leaf: it imports nothing of the crate.
//!
//! A slice keeps its whole read buffer alive, so a value that outlives its
//! exchange is copied (a cached `auth_request` decision), and the fast
//! path's response writer lets go of a response's fields once its head is
//! written, before the body streams.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// Where a piece of a head lies in it: start and end offsets.
pub type Span = (u32, u32);

/// Where `piece` lies in `bytes`, or `None` if it is not inside it.
pub fn span(bytes: &[u8], piece: &[u8]) -> Option<Span> {
    // An empty piece need not point into the head at all.
    if piece.is_empty() {
        return Some((0, 0));
    }
    let start = (piece.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
    let end = start
        .checked_add(piece.len())
        .filter(|&e| e <= bytes.len())?;
    Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))
}

/// The piece of `head` at `span` (a slice: no copy).
pub fn piece(head: &Bytes, (start, end): Span) -> Bytes {
    head.slice(start as usize..end as usize)
}

/// Where the name and value of each of up to `N` fields lie in their head.
pub struct Spans<const N: usize> {
    fields: [(Span, Span); N],
    count: usize,
}

impl<const N: usize> Spans<N> {
    pub fn new() -> Self {
        Self {
            fields: [((0, 0), (0, 0)); N],
            count: 0,
        }
    }

    /// Notes where `fields`, parsed out of `bytes`, lie in it. False when one
    /// does not, or there are more than `N`.
    pub fn note(&mut self, bytes: &[u8], fields: &[httparse::Header<'_>]) -> bool {
        if fields.len() > N {
            return false;
        }
        for (slot, f) in self.fields.iter_mut().zip(fields) {
            match (span(bytes, f.name.as_bytes()), span(bytes, f.value)) {
                (Some(name), Some(value)) => *slot = (name, value),
                _ => return false,
            }
        }
        self.count = fields.len();
        true
    }

    /// The noted fields as a map over `head` (the bytes they were noted in),
    /// with room for `extra` more; `None` if `http` refuses a name or value.
    pub fn map(&self, head: &Bytes, extra: usize) -> Option<HeaderMap> {
        let mut map = HeaderMap::with_capacity(self.count + extra);
        for &(name, value) in &self.fields[..self.count] {
            let name = head.get(name.0 as usize..name.1 as usize)?;
            let name = HeaderName::from_bytes(name).ok()?;
            let value = HeaderValue::from_maybe_shared(piece(head, value)).ok()?;
            map.append(name, value);
        }
        Some(map)
    }
}

impl<const N: usize> Default for Spans<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &'static [u8]) -> (Bytes, Spans<8>) {
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut slots);
        assert!(req.parse(head).expect("parses").is_complete());
        let mut spans = Spans::new();
        assert!(spans.note(head, req.headers));
        (Bytes::from_static(head), spans)
    }

    #[test]
    fn values_are_slices_of_the_head_in_order() {
        let (head, spans) = parsed(b"GET / HTTP/1.1\r\nHost: a\r\nX-B: \r\nx-b: two words\r\n\r\n");
        let map = spans.map(&head, 3).expect("valid");
        let fields: Vec<_> = map
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(
            fields,
            [("host", &b"a"[..]), ("x-b", b""), ("x-b", b"two words")]
        );
        let host = map.get("host").expect("host");
        let at = host.as_bytes().as_ptr() as usize - head.as_ptr() as usize;
        assert_eq!(&head[at..at + 1], b"a", "a slice of the head, not a copy");
    }

    #[test]
    fn a_piece_outside_the_head_is_refused() {
        let inside = b"abcdef";
        assert_eq!(span(inside, &inside[2..4]), Some((2, 4)));
        assert_eq!(span(&inside[..3], &inside[2..4]), None);
        assert_eq!(span(&inside[2..], &inside[..1]), None);
        assert_eq!(span(&inside[2..], &inside[..0]), Some((0, 0)));
        let mut spans = Spans::<1>::new();
        let two = [httparse::EMPTY_HEADER; 2];
        assert!(!spans.note(inside, &two), "more fields than room");
    }

    #[test]
    fn a_value_http_refuses_gives_no_map() {
        // httparse refuses control bytes itself; `map` must not rely on it.
        let head: &'static [u8] = b"x-a: a\x01b";
        let field = httparse::Header {
            name: std::str::from_utf8(&head[..3]).expect("ascii"),
            value: &head[5..],
        };
        let mut spans = Spans::<1>::new();
        assert!(spans.note(head, &[field]));
        assert!(spans.map(&Bytes::from_static(head), 0).is_none());
    }
}
