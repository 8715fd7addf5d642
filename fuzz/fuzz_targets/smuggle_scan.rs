//! The request-smuggling guard's HTTP/1.1 framing scanner
//! (`server::smuggle::Scanner`) on arbitrary byte streams: it never panics, and
//! however the bytes are split into reads it ends in the same state with the
//! same verdict as when it gets them whole. After every read its verdict is
//! the one a byte-at-a-time scan has at that offset, so the connection is
//! marked by the read that completes the offending head. The first byte picks
//! the read size (1-17 bytes) for the chunked pass.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::server::smuggle::Scanner;

/// Feeds `data` in reads of `chunk` bytes; returns the verdict so far after
/// each read (with the offset the read ended at) and the final scanner.
fn scan(data: &[u8], chunk: usize) -> (Vec<(usize, bool)>, Scanner) {
    let mut s = Scanner::default();
    let (mut found, mut end, mut out) = (false, 0, Vec::new());
    for piece in data.chunks(chunk.max(1)) {
        found |= s.feed(piece);
        end += piece.len();
        out.push((end, found));
    }
    (out, s)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let (whole, whole_state) = scan(rest, rest.len());
    let (chunked, chunked_state) = scan(rest, usize::from(first % 17) + 1);
    let (bytes, bytes_state) = scan(rest, 1);
    assert!(
        whole_state == chunked_state,
        "state depends on the chunking"
    );
    assert!(whole_state == bytes_state, "state depends on the chunking");
    let last = |v: &[(usize, bool)]| v.last().is_some_and(|(_, f)| *f);
    assert_eq!(
        last(&whole),
        last(&chunked),
        "verdict depends on the chunking"
    );
    for (end, found) in chunked {
        // `bytes[i]` is the verdict after the first i + 1 bytes.
        assert_eq!(found, bytes[end - 1].1, "verdict after {end} bytes differs");
    }
});
