//! Sticky-cookie tokens: `decode` on arbitrary strings never panics and never
//! accepts a forgery; tokens we seal always open to what was sealed, and any
//! one-byte change to a sealed token is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::upstream::sticky::{decode, encode, SealKey};
use wsgate::upstream::BackendId;

fuzz_target!(|data: &[u8]| {
    let key = SealKey::from_bytes([7; 32]);
    if let Ok(s) = std::str::from_utf8(data) {
        // A random string is practically never a valid seal under this key.
        assert!(decode(&key, s, 0).is_none() || s.len() == wsgate::upstream::sticky::TOKEN_LEN);
    }
    if data.len() >= 17 {
        let id = u64::from_le_bytes(data[0..8].try_into().unwrap());
        let expires = u64::from_le_bytes(data[8..16].try_into().unwrap()).max(1);
        let tok = encode(&key, BackendId(id), expires);
        let opened = decode(&key, &tok, expires - 1).expect("own token opens");
        assert_eq!((opened.backend, opened.expires), (BackendId(id), expires));
        assert!(decode(&key, &tok, expires).is_none(), "expired");
        assert!(
            decode(&SealKey::from_bytes([8; 32]), &tok, 0).is_none(),
            "other key"
        );
        // Flip one character.
        let mut b = tok.into_bytes();
        let i = usize::from(data[16]) % b.len();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        if let Ok(t) = String::from_utf8(b) {
            assert!(decode(&key, &t, 0).is_none(), "tampered token accepted");
        }
    }
});
