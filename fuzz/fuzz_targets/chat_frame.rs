//! The chat protocol's parsers on arbitrary bytes: client frames (JSON), resume
//! cursors and `rooms=` lists. Never a panic; limits hold for what is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::apps::chat::protocol::{parse_rooms, ClientFrame, Cursor};

const MAX_TEXT: usize = 64;

fuzz_target!(|data: &[u8]| {
    match ClientFrame::parse(data, MAX_TEXT) {
        Ok(ClientFrame::Msg { text, .. }) | Ok(ClientFrame::Dm { text, .. }) => {
            assert!(!text.is_empty() && text.len() <= MAX_TEXT);
        }
        Ok(_) => {}
        Err(e) => {
            let _ = (e.code(), e.frame());
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(c) = Cursor::parse(s) {
            // What we print, we can read back.
            assert_eq!(Cursor::parse(&c.to_string()).ok(), Some(c));
        }
        if let Ok(rooms) = parse_rooms(s, 128) {
            // The cap holds however the list is written.
            assert!(rooms.len() <= 128);
        }
    }
});
