//! The PROXY protocol reader (`server::proxy_protocol`) on arbitrary first
//! bytes of a connection: it never panics, and fed whole, in 1-17-byte reads
//! (the first input byte picks the size) or byte by byte it reaches the same
//! outcome: the same client and the same bytes kept after the header, the
//! same refusal, or still waiting. A decoded header is exactly what `parse`
//! frames at the start of the input, and never longer than the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::server::proxy_protocol::{parse, Decoded, Decoder, MAX_HEADER};

/// The outcome of feeding `data` in reads of `chunk` bytes: the first answer
/// (a header or an error, as text), or `None` if it is still waiting.
fn decode(data: &[u8], chunk: usize) -> Option<Result<Decoded, String>> {
    let mut d = Decoder::default();
    for piece in data.chunks(chunk.max(1)) {
        match d.feed(piece) {
            Ok(None) => {}
            Ok(Some(done)) => {
                // Reads after the header's end arrive later: rejoin them.
                let fed = piece.as_ptr() as usize - data.as_ptr() as usize + piece.len();
                let mut rest = done.rest;
                rest.extend_from_slice(&data[fed..]);
                return Some(Ok(Decoded {
                    proxied: done.proxied,
                    rest,
                }));
            }
            Err(e) => return Some(Err(e.to_string())),
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = decode(rest, rest.len());
    let chunked = decode(rest, usize::from(first % 17) + 1);
    let bytes = decode(rest, 1);
    assert_eq!(whole, chunked, "outcome depends on the read size");
    assert_eq!(whole, bytes, "outcome differs byte by byte");
    if let Some(Ok(d)) = &whole {
        let h = parse(rest).expect("parse agrees").expect("a whole header");
        assert!(h.len <= MAX_HEADER, "header over the cap");
        assert_eq!(h.proxied, d.proxied);
        assert_eq!(&rest[h.len..], d.rest.as_slice(), "kept bytes differ");
    }
});
