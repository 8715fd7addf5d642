//! The splice's frame-header scanner (`proxy::scan::Scanner`) on arbitrary byte
//! streams: it never panics, never claims more bytes than it was given, always
//! makes progress, and reports exactly the same events whatever the chunking
//! (the first byte picks the chunk size for the second pass).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proxy::scan::{Event, Scanner};

/// Feeds `data` in chunks of `chunk` bytes and returns every event in order.
fn events(data: &[u8], chunk: usize) -> Vec<Event> {
    let mut s = Scanner::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        let mut rest = piece;
        loop {
            let (used, ev) = s.feed(rest);
            assert!(used <= rest.len(), "consumed more than given");
            rest = &rest[used..];
            match ev {
                Some(Event::Error(e)) => {
                    out.push(Event::Error(e));
                    return out;
                }
                Some(e) => out.push(e),
                None => {
                    assert!(rest.is_empty(), "stopped with input left and no event");
                    break;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = events(rest, rest.len().max(1));
    let chunked = events(rest, usize::from(first % 17) + 1);
    assert_eq!(whole, chunked, "events depend on how the bytes were split");
});
