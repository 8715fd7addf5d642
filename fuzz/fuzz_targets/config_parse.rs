//! `config::parse` on arbitrary text: TOML syntax errors, type errors, unknown
//! keys and every validation rule must come back as `ConfigError` (with
//! positions inside the text), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = wsgate::config::parse(std::path::Path::new("fuzz.toml"), text) {
        // Rendering the error (as `wsgate check` does) must not panic either.
        let _ = e.to_string();
    }
});
