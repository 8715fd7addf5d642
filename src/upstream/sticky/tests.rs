//! Token sealing (round trips, tampering, expiry; a property test against a
//! model), cookie parsing and the hash keys.

use super::*;
use proptest::prelude::*;

fn key() -> SealKey {
    SealKey::derive(&[7u8; 32], "api")
}

#[test]
fn padded_key_is_plain_hmac() {
    let k = [9u8; 32];
    let mut a = new_mac(&k);
    let mut b = HmacSha256::new_from_slice(&k).unwrap();
    a.update(b"x");
    b.update(b"x");
    assert_eq!(a.finalize().into_bytes(), b.finalize().into_bytes());
}

#[test]
fn roundtrip() {
    let t = encode(&key(), BackendId(0xdead_beef_0123_4567), 1_000);
    assert_eq!(t.len(), TOKEN_LEN);
    assert!(
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{t}"
    );
    assert_eq!(
        decode(&key(), &t, 999),
        Some(Token {
            backend: BackendId(0xdead_beef_0123_4567),
            expires: 1_000
        })
    );
}

#[test]
fn expired_is_rejected() {
    let t = encode(&key(), BackendId(1), 1_000);
    assert!(decode(&key(), &t, 1_000).is_none());
    assert!(decode(&key(), &t, u64::MAX).is_none());
}

#[test]
fn every_single_character_change_is_rejected() {
    let t = encode(&key(), BackendId(42), u64::MAX);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for i in 0..t.len() {
        for &c in alphabet {
            let mut b = t.clone().into_bytes();
            if b[i] == c {
                continue;
            }
            b[i] = c;
            let forged = String::from_utf8(b).unwrap();
            assert!(decode(&key(), &forged, 0).is_none(), "accepted {forged}");
        }
    }
}

#[test]
fn other_key_or_pool_is_rejected() {
    let t = encode(&key(), BackendId(42), u64::MAX);
    assert!(decode(&SealKey::derive(&[8u8; 32], "api"), &t, 0).is_none());
    assert!(decode(&SealKey::derive(&[7u8; 32], "web"), &t, 0).is_none());
}

#[test]
fn garbage_is_rejected() {
    let k = key();
    for g in [
        "",
        "x",
        "wsgate",
        "====",
        &"A".repeat(TOKEN_LEN),
        &"é".repeat(TOKEN_LEN),
        &"A".repeat(10_000),
    ] {
        assert!(decode(&k, g, 0).is_none(), "{g:?}");
    }
    // Right length and alphabet, wrong version byte.
    let mut raw = URL_SAFE_NO_PAD
        .decode(encode(&k, BackendId(1), u64::MAX))
        .unwrap();
    raw[0] = 2;
    assert!(decode(&k, &URL_SAFE_NO_PAD.encode(&raw), 0).is_none());
}

#[test]
fn refresh_after_half_life() {
    let t = Token {
        backend: BackendId(1),
        expires: TOKEN_TTL.as_secs(),
    };
    assert!(!t.needs_refresh(0));
    assert!(t.needs_refresh(TOKEN_TTL.as_secs() / 2 + 1));
}

#[test]
fn cookie_parsing() {
    let mut h = HeaderMap::new();
    h.append(
        header::COOKIE,
        HeaderValue::from_static("a=1; wsgate_sticky=one"),
    );
    h.append(
        header::COOKIE,
        HeaderValue::from_static("wsgate_sticky=\"two\";b=2"),
    );
    assert_eq!(
        cookie_values(&h, "wsgate_sticky").collect::<Vec<_>>(),
        vec!["one", "two"]
    );
    let v = set_cookie("s", &key(), BackendId(1), 0, true).unwrap();
    let v = v.to_str().unwrap();
    assert!(
        v.starts_with("s=") && v.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure"),
        "{v}"
    );
    assert!(!set_cookie("s", &key(), BackendId(1), 0, false)
        .unwrap()
        .to_str()
        .unwrap()
        .contains("Secure"));
}

#[test]
fn hash_keys() {
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static(" alice "));
    let ip: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert_eq!(hash_key(&Sticky::Ip, ip, &h, None), Some(vec![10, 0, 0, 1]));
    let hn = http::HeaderName::from_static("x-user");
    assert_eq!(
        hash_key(&Sticky::Header(hn), ip, &h, None),
        Some(b"alice".to_vec())
    );
    assert_eq!(
        hash_key(
            &Sticky::Header(http::HeaderName::from_static("x-none")),
            ip,
            &h,
            None
        ),
        None
    );
    let q = |s| hash_key(&Sticky::Query("user".into()), ip, &h, s);
    assert_eq!(q(Some("a=1&user=bob%20b&user=x")), Some(b"bob b".to_vec()));
    assert_eq!(q(Some("user=bob+b")), Some(b"bob b".to_vec()));
    assert_eq!(q(Some("user=&x=1")), None);
    assert_eq!(q(Some("username=x")), None);
    assert_eq!(q(None), None);
    assert_eq!(hash_key(&Sticky::Cookie, ip, &h, None), None);
}

proptest! {
    #[test]
    fn decode_is_total(s in ".*", now in any::<u64>()) {
        let _ = decode(&key(), &s, now);
    }

    #[test]
    fn decode_of_token_shaped_noise_fails(s in "[A-Za-z0-9_-]{66}") {
        prop_assert!(decode(&key(), &s, 0).is_none());
    }

    #[test]
    fn roundtrip_any(id in any::<u64>(), exp in 1u64.., now in any::<u64>()) {
        let t = encode(&key(), BackendId(id), exp);
        let expect = (exp > now).then_some(Token { backend: BackendId(id), expires: exp });
        prop_assert_eq!(decode(&key(), &t, now), expect);
    }
}
