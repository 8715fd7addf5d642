//! Unit tests of the shared HTTP helpers and the push token check.

use super::api::token_matches;
use super::*;

#[test]
fn subpaths() {
    assert_eq!(subpath("/chat", "/chat"), Some(""));
    assert_eq!(subpath("/chat/sse", "/chat"), Some("/sse"));
    assert_eq!(subpath("/chat/sse", "/chat/"), Some("/sse"));
    assert_eq!(subpath("/chatty", "/chat"), None);
}

#[test]
fn query() {
    let uri: Uri = "/x?a=1&user=al%69ce&rooms=a,b&e".parse().unwrap();
    assert_eq!(query_param(&uri, "user").as_deref(), Some("alice"));
    assert_eq!(query_param(&uri, "e").as_deref(), Some(""));
    assert_eq!(query_param(&uri, "zz"), None);
    assert!(user_or_guest(&"/x?user=a%20b".parse().unwrap()).is_err());
    assert!(user_or_guest(&"/x".parse().unwrap())
        .unwrap()
        .as_str()
        .starts_with("guest-"));
}

#[test]
fn tokens() {
    assert!(token_matches("s3cret", "s3cret"));
    assert!(!token_matches("s3cret", "s3cre"));
    assert!(!token_matches("", "x"));
}

#[test]
fn whole_numbers_too_large_are_the_largest() {
    assert_eq!(whole_number("42"), Some(42));
    assert_eq!(whole_number("99999999999999999999"), Some(u64::MAX));
    for bad in ["", "-1", "1.5", " 1", "+1", "x"] {
        assert_eq!(whole_number(bad), None, "{bad:?}");
    }
}
